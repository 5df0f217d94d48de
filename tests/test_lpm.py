"""LPM as a strategy: zones found on the demo scene hold the object whose Gaussians were recoloured and none of
the others; densification and opacity reset touch only Gaussians in or in front of zones; LPM runs over ADC and
MCMC from the command line and resumes bitwise."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from splatkit.cli import main
from splatkit.train.coarse_to_fine import downsampled
from splatkit.data import ImageStore, load_scene
from splatkit.data.demo_scene import _build_world, _dot, demo_scene_path, pixel_rays, trace
from splatkit.data.matches import neighbour_pairs, neighbour_views, track_matches
from splatkit.model.gaussians import Gaussians
from splatkit.train.gaussian_model import GaussianModel
from splatkit.train.learning_rates import LearningRates
from splatkit.train.parameterisations import Plain3DGS
from splatkit.train.plugin import SetupContext, StepInfo, View
from splatkit.train.run_record import read_run
from splatkit.train.strategies import ADCStrategy, LPMStrategy
from splatkit.train.strategies.zones import Zone


def _box_distance(zone: Zone, point: np.ndarray) -> float:
    return float(np.linalg.norm(np.maximum(np.maximum(zone.lo - point, 0.0), point - zone.hi)))


@pytest.mark.parametrize("size", [1.0, 0.5])
def test_zones_find_the_recoloured_object_on_the_demo_scene(size):
    """The demo's exact geometry says which pixels of a view show each sphere. A render that matches the photo up
    to noise, except that one sphere's colours are rotated (its Gaussians recoloured), must give zones that reach
    that sphere, hold no other object's centre, and lie nearer to it than to any other object. At half size (a
    coarse-to-fine step: smaller camera, photo and render, patches of the same footprint) the same holds."""
    scene = load_scene(demo_scene_path(), test_every=0)
    world = _build_world(np.random.default_rng(0))  # generate_demo_scene's world for seed 0
    to_scene, back = scene.to_normalized, scene.to_normalized.inverse()
    centers = np.stack([to_scene.apply_points(o.center[None])[0] for o in world.objects])
    store = ImageStore(scene.cameras)
    neighbours = neighbour_views(scene.cameras, scene.train_ids, 45.0, 3, seed=0)
    matches = track_matches(scene.observations, neighbour_pairs(neighbours))
    lpm, rng = LPMStrategy(patch=round(16 * size)), np.random.default_rng(0)
    for k, sphere in enumerate(world.objects[:3]):
        best = None
        for i, camera in enumerate(scene.cameras):  # the view that shows the sphere largest
            v, u = np.mgrid[0:camera.height, 0:camera.width]
            o, d = pixel_rays(camera.K, back.apply_camera(camera.world_to_cam),
                              np.stack([u.ravel() + 0.5, v.ravel() + 0.5], 1))
            seen = np.abs(sphere.intersect(o, d, _dot(o, d), _dot(o, o)) - trace(world, o, d)[0]) < 1e-6
            if best is None or seen.sum() > best[1].sum():
                best = (i, seen.reshape(camera.height, camera.width))
        i, seen = best
        photo = torch.from_numpy(store[i])
        render = (photo + torch.from_numpy(rng.normal(0.0, 0.02, photo.shape)).float()).clamp(0, 1)
        render[torch.from_numpy(seen)] = render[torch.from_numpy(seen)][:, [2, 0, 1]]
        camera, photo, _ = downsampled(scene.cameras[i], photo, None, size)
        render = downsampled(scene.cameras[i], render, None, size)[1]
        found = []
        for j in neighbours[i]:
            state = {"_neighbours": {i: [j]}, "_matches": matches, "_cameras": scene.cameras,
                     "generator": torch.Generator().manual_seed(0)}
            view = View(camera, i, 0, photo, SimpleNamespace(rgb=render))
            info = SimpleNamespace(views=[view], batch=[i], gather=lambda mine: [mine])
            found += [zone for center, zones in lpm.find_zones(state, info) for zone in zones]
        assert len(found) >= 2, (k, i)
        radius = sphere.radius * to_scene.scale
        for zone in found:
            assert _box_distance(zone, centers[k]) < radius, (k, zone)
            others = [q for q in range(len(centers)) if q != k]
            assert all(_box_distance(zone, centers[q]) > 0 for q in others), (k, zone)
            nearest = np.argmin(np.linalg.norm(centers - zone.center, axis=1))
            assert nearest == k, (k, zone, nearest)


def _model(means: np.ndarray, opacities: np.ndarray, scale: float = 0.01) -> GaussianModel:
    n = len(means)
    init = Gaussians(torch.tensor(means, dtype=torch.float32), torch.full((n, 3), float(np.log(scale))),
                     torch.tensor([[1.0, 0, 0, 0]] * n), torch.logit(torch.tensor(opacities, dtype=torch.float32)),
                     torch.zeros(n, 1, 3), torch.zeros(n, 0, 3))
    model = GaussianModel(Plain3DGS(), "cpu")
    Plain3DGS().create(model, init, LearningRates(), 1.0)
    return model


def test_localized_densification_grows_only_in_zones_and_prunes_as_many():
    """ADC under LPM's focus: Gaussians whose gradient is between half and the full threshold grow only inside a
    zone, and as many of the least opaque Gaussians go as the focus added; without a focus nothing happens."""
    rng = np.random.default_rng(0)
    means = rng.uniform(-1, 1, (200, 3))
    means[:10] = rng.uniform(0.1, 0.9, (10, 3))  # exactly these ten lie in the zone
    means[10:] = means[10:] * [1, 1, 0.05] - [0, 0, 0.5]  # the rest at z near -0.5, outside it
    opacities = rng.uniform(0.2, 0.9, 200)
    low = np.zeros(200, bool)
    low[50:60] = True
    opacities[low] = 0.01  # the ten least opaque: pruned to pay for the ten extra clones
    zone = Zone(np.zeros(3), np.ones(3))
    inside = torch.from_numpy(np.all((means > zone.lo) & (means < zone.hi), axis=1))
    assert inside.tolist() == [True] * 10 + [False] * 190
    for focus in (None, torch.where(inside, 2.0, 1.0)):
        model = _model(means, opacities)
        adc = ADCStrategy(refine_start=0, refine_every=1)
        state = adc.setup(SetupContext(None, None, model, None, steps=10, scene_extent=1.0, seed=0, resumed=False))
        model.buffers["grad2d"][:] = 0.75 * adc.grow_grad2d  # above half the threshold, below the threshold
        model.buffers["grad2d_count"][:] = 1
        before = model.params["means"].detach().clone()
        adc.after_step(model, state, StepInfo(1, 10, [], [], None, 1.0, focus=focus))
        after = model.params["means"].detach()
        if focus is None:
            torch.testing.assert_close(after, before)
            continue
        assert len(after) == 200
        torch.testing.assert_close(after[:190], before[torch.from_numpy(~low)])  # nobody else moved
        torch.testing.assert_close(after[190:], before[inside])  # the clones (small Gaussians are cloned)
        assert float(model.buffers["grad2d"].abs().sum()) == 0.0  # the buffers followed and restarted


def test_localized_reset_touches_only_opaque_gaussians_in_front_of_the_zone():
    """Camera at the origin looking along +z at a zone around z = 10: only Gaussians in the cone, in front, at
    least as opaque as the 70% rank of the zone's inside ones, drop to 0.01."""
    inside = [[0.0, 0, 10], [0.3, 0, 10], [0, 0.3, 10], [0, 0, 10.3], [0.2, 0.2, 9.8]]
    inside_opacity = [0.9, 0.8, 0.7, 0.6, 0.5]  # 70% rank of five (k = 3): 0.7
    front = [[0.0, 0, 5], [0.1, 0, 6], [0.0, 0.2, 7]]
    front_opacity = [0.95, 0.65, 0.75]  # 0.65 is below the rank: kept
    outside = [[3.0, 0, 5], [0.0, 0, -2]]
    outside_opacity = [0.99, 0.99]
    model = _model(np.array(inside + front + outside), np.array(inside_opacity + front_opacity + outside_opacity))
    zone = Zone(np.array([-0.5, -0.5, 9.5]), np.array([0.5, 0.5, 10.5]))
    reset = LPMStrategy().reset_in_front(model, np.zeros(3), [zone])
    opacities = model.activated().opacities.detach().numpy()
    expected = np.array(inside_opacity + [0.01, 0.65, 0.01] + outside_opacity)
    assert reset == 2
    np.testing.assert_allclose(opacities, expected, rtol=1e-5)


@pytest.mark.parametrize("base", ["adc", "mcmc"])
def test_lpm_over_each_base_from_the_command_line_and_resume(tiny_scene, tmp_path, base):
    run = tmp_path / "run"
    common = ["--out", str(run), "--backend", "native", "--eval-steps", "--log-every", "10", "--checkpoint-every",
              "20", "strategy:lpm", "--strategy.reset-start", "5", "--strategy.reset-every", "10",
              f"strategy.base:{base}", "--strategy.base.refine-start", "5", "--strategy.base.refine-every", "10"]
    assert main(["train", str(tiny_scene), "--steps", "40", *common]) == 0
    config = read_run(run).config.strategy
    assert isinstance(config, LPMStrategy) and config.base.name == base and config.reset_every == 10
    matches = run / "lpm_matches.npz"
    written = matches.stat().st_mtime_ns
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert all('"lpm_zones"' in line for line in lines)
    assert main(["train", str(tiny_scene), "--out", str(run), "--resume", "--steps", "50"]) == 0
    assert matches.stat().st_mtime_ns == written  # the cached matches were reused, not recomputed


def test_mcmc_under_focus_draws_new_gaussians_from_zones():
    """With a focus of 0 outside the zone, every Gaussian MCMC adds copies one inside it (the cap still holds)."""
    from splatkit.train.strategies import ops

    rng = np.random.default_rng(0)
    means = rng.uniform(-1, 1, (100, 3))
    model = _model(means, rng.uniform(0.3, 0.9, 100))
    inside = torch.from_numpy(np.all(means > 0, axis=1))
    added = ops.add_by_opacity(model, 40, torch.Generator().manual_seed(0), weights=inside.float())
    assert added == 40 and len(model) == 140
    new = model.params["means"].detach()[100:]
    assert bool((new > 0).all())
