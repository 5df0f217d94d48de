"""The render boundary: raw and activated Gaussians render alike, the background is composited once for every
backend, and `auto` decides once per device and says why when it falls back to the torch reference."""

from __future__ import annotations

import pytest
import torch

from splatkit.data import load_scene
from splatkit.errors import SplatkitError
from splatkit.model.gaussians import Gaussians, init_from_points
from splatkit.render import api, rasterize, resolve_backend

pytestmark = pytest.mark.xdist_group("tiny_scene")


@pytest.fixture
def model_and_camera(tiny_scene):
    scene = load_scene(tiny_scene)
    return init_from_points(scene.points, scene.colors, sh_degree=1, init_opacity=0.5), scene.cameras[3]


def test_raw_and_activated_gaussians_render_alike(model_and_camera):
    gaussians, camera = model_and_camera
    raw = rasterize(gaussians, camera, backend="torch")
    activated = rasterize(gaussians.activated(), camera, backend="torch")
    assert torch.equal(raw.rgb, activated.rgb) and torch.equal(raw.depth, activated.depth)


def test_from_activated_inverts_the_activations(model_and_camera):
    gaussians, _ = model_and_camera
    back = Gaussians.from_activated(gaussians.activated())
    torch.testing.assert_close(back.scales, gaussians.scales)
    torch.testing.assert_close(back.opacities, gaussians.opacities)
    assert torch.equal(back.quats, gaussians.quats)  # passed through: every consumer normalises them


@pytest.mark.parametrize("backend", ["torch", "native"])
def test_background_is_composited_over_what_the_backend_blends(model_and_camera, backend):
    gaussians, camera = model_and_camera
    black = rasterize(gaussians, camera, backend=backend)
    bg = (0.2, 0.5, 0.9)
    coloured = rasterize(gaussians, camera, background=bg, backend=backend)
    expected = black.rgb + (1 - black.alpha[..., None]) * torch.tensor(bg)
    torch.testing.assert_close(coloured.rgb, expected, rtol=0, atol=1e-6)
    hit = black.alpha > 0.5
    assert hit.any() and (black.depth[hit] > 0).all() and (black.depth[black.alpha == 0] == 0).all()


def test_auto_picks_a_backend_that_fills_what_the_run_needs(monkeypatch):
    """gsplat reports no per-Gaussian weight sums: auto passes over it for a run that reads them (EAGLES'
    influence pruning), and naming it for such a run is refused before anything renders."""
    registered = dict(api._BACKENDS)
    fake_gsplat = api._Registered(registered["torch"].render, lambda device: None, frozenset())
    monkeypatch.setattr(api, "_BACKENDS", {**registered, "gsplat": fake_gsplat})
    api._resolve.cache_clear()
    try:
        assert resolve_backend("auto", "cpu") == "gsplat"
        assert resolve_backend("auto", "cpu", frozenset({"weight_sums"})) == "native"
        assert resolve_backend("auto", "cpu", frozenset({"absgrad"})) == "native"
        with pytest.raises(SplatkitError, match="gsplat.*does not report weight_sums"):
            resolve_backend("gsplat", "cpu", frozenset({"weight_sums"}))
    finally:
        api._resolve.cache_clear()


def test_auto_says_once_why_it_falls_back_and_checks_availability_once(model_and_camera, monkeypatch, capsys):
    calls = {"native": 0}

    def native_missing(device):
        calls["native"] += 1
        return "no C++ compiler (c++ is not on PATH)"

    registered = dict(api._BACKENDS)
    monkeypatch.setattr(api, "_BACKENDS", {**registered, "native": api._Registered(
        registered["native"].render, native_missing, registered["native"].provides)})
    api._resolve.cache_clear()
    try:
        gaussians, camera = model_and_camera
        for _ in range(3):
            rasterize(gaussians, camera)
        assert resolve_backend("auto", "cpu") == "torch"
        err = capsys.readouterr().err
        assert err.count("slow torch reference") == 1 and "native: no C++ compiler" in err
        assert calls["native"] == 1
    finally:
        api._resolve.cache_clear()
