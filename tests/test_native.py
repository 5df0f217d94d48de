"""The native rasterizer (cuda/, CPU/OpenMP build) against the PyTorch reference: every output, every gradient.

Both backends get the same raw parameters and the same random cotangents on rgb, alpha and depth; forward
outputs and the gradients w.r.t. all six parameter tensors and means2d must agree to float32 precision.

Discrete decisions (a pair's alpha against 1/255, the 0.99 clamp, a pixel's transmittance against 1e-4) can go
either way when a value sits within rounding of the threshold, and then a whole pixel legitimately differs (a
1/255 pair dims everything behind it by 0.4%). `_ambiguous` finds those pixels from the reference's own pairs;
they are left out of the image comparison and get a zero cotangent, so the tolerances can stay tight elsewhere.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from splatkit.data.cameras import Camera
from splatkit.model.gaussians import Gaussians, init_from_points
from splatkit.render import composite as composite_module
from splatkit.render import projection as projection_module
from splatkit.render import rasterize
from splatkit.render.composite import ALPHA_MAX, ALPHA_MIN, T_MIN, _pixel_pairs
from splatkit.render.native_build import cache_root, compiler_available, load_extension, source_hash
from splatkit.render.projection import covariance_3d, project
from splatkit.render.torch_backend import camera_tensors

pytestmark = [
    pytest.mark.xdist_group("native"),
    pytest.mark.skipif(not compiler_available(), reason="no C++ compiler for the native rasterizer"),
]

GRAD_NAMES = ("means", "quats", "scales", "opacities", "sh0", "shN", "means2d")
# Largest errors seen, by (case, quantity): printed at the end of the module (pytest -s) for the record.
MEASURED: dict[tuple[str, str], float] = {}


@pytest.fixture(scope="module", autouse=True)
def _report_measured():
    yield
    if MEASURED:
        print("\nnative vs torch, largest errors (images absolute, gradients / weight sums relative to max):")
        for (case, quantity), value in sorted(MEASURED.items()):
            print(f"  {case:32s} {quantity:12s} {value:.2e}")


@pytest.fixture(scope="module")
def ext():
    return load_extension()


def _note(case: str, quantity: str, value: float) -> float:
    MEASURED[(case, quantity)] = max(MEASURED.get((case, quantity), 0.0), float(value))
    return float(value)


# ---------------------------------------------------------------- helpers


def _leaves(gaussians: Gaussians) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().requires_grad_() for k, v in gaussians.as_dict().items()}


def _loss(out, cot) -> torch.Tensor:
    rgb_c, alpha_c, depth_c = cot
    depth = torch.where(depth_c != 0, out.depth, torch.zeros_like(out.depth))
    return (out.rgb.double() * rgb_c).sum() + (out.alpha.double() * alpha_c).sum() + (depth.double() * depth_c).sum()


def _backward(params, out, cot) -> dict[str, torch.Tensor]:
    out.means2d.retain_grad()
    loss = _loss(out, cot)
    if loss.requires_grad:
        loss.backward()
    grads = {k: (v.grad if v.grad is not None else torch.zeros_like(v)) for k, v in params.items()}
    grads["means2d"] = out.means2d.grad if out.means2d.grad is not None else torch.zeros_like(out.means2d)
    return grads


def _render(gaussians: Gaussians, camera: Camera, backend: str, cot=None, **kw):
    params = _leaves(gaussians)
    out = rasterize(Gaussians.from_dict(params), camera, backend=backend, **kw)
    grads = _backward(params, out, cot) if cot is not None else None
    return out, grads


def _pairs(gaussians: Gaussians, camera: Camera, antialiased: bool = False, widen: float = 1.0):
    """The reference's (gaussian, pixel) candidate pairs in depth order, with raw o*exp(power), alpha, power."""
    W, H = camera.width, camera.height
    viewmat, K = camera_tensors(camera, torch.device("cpu"))
    proj = project(gaussians.means, covariance_3d(gaussians.quats, gaussians.activated_scales), viewmat, K, W, H)
    opac = gaussians.activated_opacities * (proj.compensation if antialiased else 1.0)
    order = torch.argsort(proj.depths, stable=True)
    # A slightly larger opacity only widens the candidate box, so pairs just outside it are seen too.
    gauss, pixels = _pixel_pairs(proj.means2d, proj.conics, opac * widen, proj.radii, order, W, H)
    mx, my = proj.means2d[gauss].unbind(-1)
    a, b, c = proj.conics[gauss].unbind(-1)
    dx = (pixels % W).float() + 0.5 - mx
    dy = torch.div(pixels, W, rounding_mode="floor").float() + 0.5 - my
    power = -0.5 * (a * dx * dx + c * dy * dy) - b * dx * dy
    raw = opac[gauss] * torch.exp(power.clamp(max=0.0))
    alpha = torch.where(power > 0, torch.zeros_like(raw), raw.clamp(max=ALPHA_MAX))
    terms = 0.5 * (a * dx * dx).abs() + 0.5 * (c * dy * dy).abs() + (b * dx * dy).abs()
    return gauss, pixels, raw, alpha, power, terms


@torch.no_grad()
def _ambiguous(gaussians: Gaussians, camera: Camera, antialiased: bool = False, rel: float = 3e-5,
               log_t_margin: float = 1e-4) -> tuple[torch.Tensor, torch.Tensor]:
    """(H, W) pixels where rounding may flip a discrete decision, and the (N,) Gaussians blended into them."""
    W, H = camera.width, camera.height
    n = len(gaussians)
    if n == 0:
        return torch.zeros(H, W, dtype=torch.bool), torch.zeros(0, dtype=torch.bool)
    gauss, pixels, raw, alpha, power, terms = _pairs(gaussians, camera, antialiased, widen=1.001)
    # power <= 0 mathematically; it can round to > 0 only where its terms cancel.
    flag = ((raw - ALPHA_MIN).abs() <= rel * ALPHA_MIN) | ((raw - ALPHA_MAX).abs() <= rel) | (power > -1e-5 * terms)
    keep = alpha >= ALPHA_MIN
    g_k, p_k, a_k = gauss[keep], pixels[keep], alpha[keep]
    order = torch.sort(p_k, stable=True).indices
    g_k, p_k, a_k = g_k[order], p_k[order], a_k[order]
    bad = torch.zeros(H * W, dtype=torch.bool)
    bad[pixels[flag]] = True
    if len(p_k):
        _, counts = torch.unique_consecutive(p_k, return_counts=True)
        start = torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
        log_t = torch.log1p(-a_k.double())
        inclusive = torch.cumsum(log_t, 0)
        log_after = inclusive - torch.cat([inclusive.new_zeros(1), inclusive])[start]
        bad[p_k[(log_after - math.log(T_MIN)).abs() <= log_t_margin]] = True
    touched = torch.zeros(n, dtype=torch.bool)
    touched[gauss[bad[pixels]]] = True
    return bad.reshape(H, W), touched


def _rel(ref: torch.Tensor, got: torch.Tensor) -> float:
    scale = float(ref.abs().max()) if ref.numel() else 0.0
    err = float((ref.double() - got.double()).abs().max()) if ref.numel() else 0.0
    return err / scale if scale > 0 else err


@dataclasses.dataclass
class Compared:
    ref: object
    nat: object
    ref_grads: dict
    nat_grads: dict
    bad_pixels: torch.Tensor
    cot: tuple


def compare(gaussians: Gaussians, camera: Camera, case: str, *, seed: int = 0, img_atol: float = 1e-5,
            depth_rtol: float = 2e-6, wsum_rtol: float = 2e-5, grad_rtol: float = 5e-5, **kw) -> Compared:
    """Render with both backends, send the same cotangents back, assert everything agrees; return both."""
    H, W = camera.height, camera.width
    bad_px, bad_g = _ambiguous(gaussians, camera, antialiased=kw.get("antialiased", False))
    ok = ~bad_px
    gen = torch.Generator().manual_seed(seed)
    rgb_c = torch.randn(H, W, 3, generator=gen, dtype=torch.float64) * ok[..., None]
    alpha_c = torch.randn(H, W, generator=gen, dtype=torch.float64) * ok
    depth_noise = torch.randn(H, W, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        hit = rasterize(gaussians, camera, backend="torch", **kw).alpha > 0.5
    cot = (rgb_c, alpha_c, depth_noise * (hit & ok))
    ref, ref_g = _render(gaussians, camera, "torch", cot, **kw)
    nat, nat_g = _render(gaussians, camera, "native", cot, **kw)

    assert nat.rgb.shape == (H, W, 3) and nat.alpha.shape == (H, W) and nat.depth.shape == (H, W)
    for name, t in [("rgb", nat.rgb), ("alpha", nat.alpha), ("depth", nat.depth), ("means2d", nat.means2d),
                    ("weight_sums", nat.weight_sums), *nat_g.items()]:
        assert torch.isfinite(t).all(), f"{case}: non-finite native {name}"
    assert torch.equal(nat.radii, ref.radii), f"{case}: radii differ"
    assert nat.radii.dtype == torch.int32
    assert ok.float().mean() > 0.995, f"{case}: too many ambiguous pixels ({int(bad_px.sum())})"

    e_rgb = _note(case, "rgb", (nat.rgb - ref.rgb).detach().abs()[ok].max() if ok.any() else 0.0)
    e_alpha = _note(case, "alpha", (nat.alpha - ref.alpha).detach().abs()[ok].max() if ok.any() else 0.0)
    assert e_rgb <= img_atol, f"{case}: rgb differs by {e_rgb:.3g}"
    assert e_alpha <= img_atol, f"{case}: alpha differs by {e_alpha:.3g}"
    sel = hit & ok
    if sel.any():
        d_ref, d_nat = ref.depth.detach()[sel], nat.depth.detach()[sel]
        e_depth = _note(case, "depth", float((d_ref - d_nat).abs().max() / d_ref.abs().max()))
        assert e_depth <= depth_rtol, f"{case}: depth differs by {e_depth:.3g} (relative)"
    e_ws = _note(case, "weight_sums", _rel(ref.weight_sums[~bad_g], nat.weight_sums[~bad_g]))
    assert e_ws <= wsum_rtol, f"{case}: weight_sums differ by {e_ws:.3g} (relative)"
    for name in GRAD_NAMES:
        assert nat_g[name].shape == ref_g[name].shape, name
        e = _note(case, "d_" + name, _rel(ref_g[name], nat_g[name]))
        assert e <= grad_rtol, f"{case}: gradient w.r.t. {name} differs by {e:.3g} of its max"
    return Compared(ref, nat, ref_g, nat_g, bad_px, cot)


def _camera(width: int, height: int, f: float, seed: int = 0) -> Camera:
    """A slightly rotated and shifted camera with an off-centre principal point."""
    g = np.random.default_rng(seed)
    angle = g.normal(size=3) * 0.1
    w2c = np.eye(4)
    w2c[:3, :3] = _rotation(angle)
    w2c[:3, 3] = g.normal(size=3) * 0.1
    K = np.array([[f, 0, width / 2 + 0.3], [0, f * 1.1, height / 2 - 0.2], [0, 0, 1]])
    return Camera("cam", width, height, K, w2c)


def _rotation(axis_angle: np.ndarray) -> np.ndarray:
    theta = float(np.linalg.norm(axis_angle))
    if theta == 0:
        return np.eye(3)
    k = axis_angle / theta
    Kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + math.sin(theta) * Kx + (1 - math.cos(theta)) * Kx @ Kx


def _synthetic(n: int, camera: Camera, *, seed: int = 0, degree: int = 3, z_range=(1.0, 5.0),
               scale_range=(0.03, 0.28)) -> Gaussians:
    """Random anisotropic Gaussians inside (mostly) the view of `camera`; camera-space points mapped to world."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.rand(*s, generator=g)  # noqa: E731
    z = z_range[0] + (z_range[1] - z_range[0]) * r(n)
    fx, fy = camera.K[0, 0], camera.K[1, 1]
    half_x, half_y = camera.width / (2 * fx), camera.height / (2 * fy)
    cam_pts = torch.stack([(r(n) - 0.5) * 2.4 * half_x * z, (r(n) - 0.5) * 2.4 * half_y * z, z], -1)
    means = _to_world(cam_pts, camera)
    lo, hi = scale_range
    return Gaussians(
        means=means,
        scales=torch.log(lo + (hi - lo) * r(n, 3)),
        quats=torch.randn(n, 4, generator=g) * 2,
        opacities=torch.randn(n, generator=g) * 1.5,
        sh0=torch.randn(n, 1, 3, generator=g) * 0.8,
        shN=torch.randn(n, (degree + 1) ** 2 - 1, 3, generator=g) * 0.3,
    )


def _to_world(cam_pts: torch.Tensor, camera: Camera) -> torch.Tensor:
    R = torch.tensor(camera.world_to_cam[:3, :3], dtype=torch.float32)
    t = torch.tensor(camera.world_to_cam[:3, 3], dtype=torch.float32)
    return ((cam_pts - t) @ R).contiguous()


def _look_at(means: torch.Tensor, *, width: int = 160, height: int = 120, f: float = 150.0,
             direction=(0.35, -0.45, 0.8), distance: float = 2.5) -> Camera:
    """OpenCV camera (x right, y down, z forward) at `distance` x the 90th-percentile radius from the median."""
    pts = means.double().numpy()
    centre = np.median(pts, axis=0)
    r90 = float(np.quantile(np.linalg.norm(pts - centre, axis=1), 0.9))
    d = np.asarray(direction, np.float64)
    eye = centre + distance * r90 * d / np.linalg.norm(d)
    forward = (centre - eye) / np.linalg.norm(centre - eye)
    up = np.array([0.0, 0.0, 1.0])
    right = np.cross(forward, up)
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    w2c = np.eye(4)
    w2c[:3, :3] = np.stack([right, down, forward])
    w2c[:3, 3] = -w2c[:3, :3] @ eye
    K = np.array([[f, 0, width / 2], [0, f, height / 2], [0, 0, 1]])
    return Camera("look_at", width, height, K, w2c)


def _subsample(gaussians: Gaussians, count: int, seed: int = 0) -> Gaussians:
    if len(gaussians) <= count:
        return gaussians
    idx = torch.randperm(len(gaussians), generator=torch.Generator().manual_seed(seed))[:count]
    return gaussians.subset(torch.sort(idx).values)


# ---------------------------------------------------------------- 1. the real garden cloud


@pytest.fixture(scope="module")
def garden(shared_datasets):
    path = shared_datasets / "gsplat_test_garden" / "test_garden.npz"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    data = np.load(path)
    points, colors = data["means3d"], data["colors"]
    inside = (np.abs(points) <= 2.0).all(axis=1)
    points, colors = points[inside], colors[inside]
    idx = np.sort(np.random.default_rng(0).choice(len(points), 3000, replace=False))
    gauss = init_from_points(points[idx], colors[idx] / 255.0, sh_degree=3)
    g = torch.Generator().manual_seed(1)
    n = len(gauss)
    gauss.scales = gauss.scales + torch.log(0.3 + 1.7 * torch.rand(n, 3, generator=g))  # anisotropic
    gauss.quats = torch.randn(n, 4, generator=g)
    gauss.opacities = torch.logit(0.05 + 0.9 * torch.rand(n, generator=g))
    gauss.shN = 0.2 * torch.randn(gauss.shN.shape, generator=g)
    width, height = int(data["width"]) // 2, int(data["height"]) // 2  # 324 x 210
    cameras = []
    for i in range(len(data["Ks"])):
        K = data["Ks"][i].astype(np.float64).copy()
        K[:2] /= 2
        cameras.append(Camera(f"garden{i}", width, height, K, data["viewmats"][i].astype(np.float64)))
    return gauss, cameras


@pytest.mark.parametrize("index,antialiased,background", [(0, False, (0.0, 0.0, 0.0)), (1, True, (0.0, 0.0, 0.0)),
                                                           (2, False, (0.1, 0.6, 0.3))])
def test_garden_cloud_matches_reference(garden, index, antialiased, background):
    gauss, cameras = garden
    result = compare(gauss, cameras[index], f"garden cam{index}{' aa' if antialiased else ''}", seed=index,
                     antialiased=antialiased, background=background)
    assert int((result.nat.radii > 0).all(-1).sum()) > 1000
    assert float(result.nat.alpha.detach().mean()) > 0.5
    # absgrad sums |per-pixel dL/dmeans2d|, so it bounds the summed gradient's magnitude.
    absgrad, grad = result.nat.absgrad, result.nat_grads["means2d"].abs()
    assert absgrad is not None and absgrad.shape == grad.shape
    assert bool((absgrad >= grad - 1e-6 * float(grad.max())).all())
    assert bool((absgrad[(result.nat.radii == 0).any(-1)] == 0).all())


# ---------------------------------------------------------------- 2. trained splats


# The INRIA model has needle-like Gaussians (scales 108 x 2.4 x 13 at depth 1000): their float32 covariance is
# ill-conditioned, so its scale and rotation gradients only agree to about 1e-4 of the largest one.
@pytest.mark.parametrize("folder,filename,count,grad_rtol", [("mipsplat_donut_sh0", "fused.ply", 6000, 1e-4),
                                                             ("inria_ply_sh3_9k", "point_cloud_iter7000.ply", 4000,
                                                              3e-4)])
def test_trained_splats_match_reference(shared_datasets, folder, filename, count, grad_rtol):
    from splatkit.io.ply import load_ply

    path = shared_datasets / folder / filename
    if not path.is_file():
        pytest.skip(f"{path} not found")
    gauss = _subsample(load_ply(path), count)
    camera = _look_at(gauss.means)
    result = compare(gauss, camera, folder, grad_rtol=grad_rtol)
    assert int((result.nat.radii > 0).all(-1).sum()) > 0.5 * len(gauss)
    assert float(result.nat.alpha.detach().max()) > 0.5


# ---------------------------------------------------------------- 3. edge cases


def test_zero_gaussians():
    camera = _camera(20, 12, 15.0)
    empty = Gaussians(torch.zeros(0, 3), torch.zeros(0, 3), torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, 1, 3),
                      torch.zeros(0, 15, 3))
    result = compare(empty, camera, "zero gaussians", background=(0.2, 0.3, 0.4))
    assert torch.equal(result.nat.rgb, torch.tensor([0.2, 0.3, 0.4]).expand(12, 20, 3))
    assert torch.equal(result.nat.alpha, torch.zeros(12, 20)) and torch.equal(result.nat.depth, torch.zeros(12, 20))
    assert result.nat.radii.shape == (0, 2) and result.nat.weight_sums.shape == (0,)


def test_one_by_one_image():
    camera = _camera(1, 1, 2.0, seed=1)
    gauss = _synthetic(12, camera, seed=1)
    result = compare(gauss, camera, "1x1")
    assert int((result.nat.radii > 0).all(-1).sum()) > 3 and float(result.nat.alpha.detach()) > 0.1


@pytest.mark.parametrize("width,height", [(37, 23), (16, 16), (17, 33)])
def test_sizes_not_multiple_of_tile(width, height):
    camera = _camera(width, height, 0.9 * width, seed=width)
    gauss = _synthetic(60, camera, seed=width)
    compare(gauss, camera, f"{width}x{height}", seed=height)


def test_behind_camera_and_near_plane_straddlers():
    camera = _camera(37, 23, 30.0, seed=3)
    base = _synthetic(20, camera, seed=3)
    # Camera-space centres: behind, at the camera, between the camera and the near plane, just past it
    # (straddling it with a large scale), and far outside the field of view yet overlapping the image.
    special = torch.tensor([[0.1, 0.0, -2.0], [0.0, 0.1, -0.3], [0.0, 0.0, 0.0], [0.01, 0.0, 0.005],
                            [0.0, 0.01, 0.0099], [0.001, 0.0, 0.011], [0.02, -0.01, 0.05], [0.0, 0.0, 0.2],
                            [-1.5, 0.3, 1.0], [0.0, 2.0, 1.5]])
    k = len(special)
    extra = Gaussians(
        means=_to_world(special, camera),
        scales=torch.log(torch.tensor([[0.5, 0.5, 0.5]] * 8 + [[0.6, 0.6, 0.6], [0.9, 0.5, 0.7]])),
        quats=torch.randn(k, 4, generator=torch.Generator().manual_seed(5)),
        opacities=torch.full((k,), 1.0),
        sh0=torch.randn(k, 1, 3, generator=torch.Generator().manual_seed(6)),
        shN=0.3 * torch.randn(k, 15, 3, generator=torch.Generator().manual_seed(7)),
    )
    gauss = Gaussians.from_dict({name: torch.cat([getattr(base, name), getattr(extra, name)])
                                 for name in base.as_dict()})
    for antialiased in (False, True):
        result = compare(gauss, camera, f"behind/near{' aa' if antialiased else ''}", antialiased=antialiased)
        radii = result.nat.radii
        assert (radii[20:25] == 0).all(), "centres at or behind the near plane must be culled"
        assert (radii[25:] > 0).all(), "in front of the near plane, overlapping the image: visible"
        culled = (radii == 0).any(-1)
        for name in GRAD_NAMES:
            grad = result.nat_grads[name]
            assert torch.isfinite(grad).all(), name
            assert (grad[culled] == 0).all(), f"culled Gaussians must get zero gradient w.r.t. {name}"
        assert (result.nat.weight_sums[culled] == 0).all()
        assert (result.nat.absgrad[culled] == 0).all()


def test_huge_gaussian_covering_the_image():
    camera = _camera(37, 23, 30.0, seed=4)
    small = _synthetic(30, camera, seed=4, z_range=(1.0, 2.0))
    huge = Gaussians(_to_world(torch.tensor([[0.1, -0.05, 3.0]]), camera), torch.log(torch.tensor([[8.0, 6.0, 5.0]])),
                     torch.tensor([[0.9, 0.1, 0.2, -0.3]]), torch.tensor([0.5]), torch.full((1, 1, 3), 0.4),
                     torch.zeros(1, 15, 3))
    gauss = Gaussians.from_dict({k: torch.cat([getattr(small, k), getattr(huge, k)]) for k in small.as_dict()})
    result = compare(gauss, camera, "huge gaussian")
    assert int(result.nat.radii[-1].min()) > 37
    assert float(result.nat.alpha.detach().min()) > 0.5  # the huge one alone covers every pixel


@pytest.mark.parametrize("antialiased", [False, True])
def test_degenerate_zero_scales(antialiased):
    camera = _camera(37, 23, 30.0, seed=5)
    gauss = _synthetic(30, camera, seed=5)
    scales = gauss.scales.clone()
    scales[:6] = -30.0  # points
    scales[6:12, 0] = -30.0  # flat discs
    scales[12:16, :2] = -30.0  # needles
    gauss.scales = scales
    result = compare(gauss, camera, f"zero scales{' aa' if antialiased else ''}", antialiased=antialiased)
    assert (result.nat.radii[:6] > 0).all(-1).sum() >= 3


def test_unnormalised_quaternions_render_like_normalised():
    camera = _camera(37, 23, 30.0, seed=6)
    gauss = _synthetic(40, camera, seed=6)
    unit = Gaussians.from_dict({**gauss.as_dict(), "quats": torch.nn.functional.normalize(gauss.quats, dim=-1)})
    factors = torch.exp(torch.empty(40, 1).uniform_(-4, 4, generator=torch.Generator().manual_seed(0)))
    scaled = Gaussians.from_dict({**unit.as_dict(), "quats": unit.quats * factors})
    result = compare(scaled, camera, "unnormalised quats")
    cot = result.cot
    base, base_g = _render(unit, camera, "native", cot)
    torch.testing.assert_close(result.nat.rgb, base.rgb, atol=1e-6, rtol=0)
    torch.testing.assert_close(result.nat.alpha, base.alpha, atol=1e-6, rtol=0)
    # d/dq of f(q/|q|) is (tangential part of the unit-quaternion gradient) / |q|.
    expected = base_g["quats"] / factors
    assert _rel(expected, result.nat_grads["quats"]) < 1e-4
    for name in ("means", "scales", "opacities", "sh0", "shN"):
        assert _rel(base_g[name], result.nat_grads[name]) < 1e-4, name


@pytest.mark.parametrize("sh_degree", [0, 1, 2])
def test_lower_sh_degree_ignores_higher_bands(sh_degree):
    camera = _camera(37, 23, 30.0, seed=7)
    gauss = _synthetic(40, camera, seed=7, degree=3)
    result = compare(gauss, camera, f"sh degree {sh_degree} of 3", sh_degree=sh_degree)
    used = (sh_degree + 1) ** 2 - 1
    assert (result.nat_grads["shN"][:, used:] == 0).all()
    assert used == 0 or float(result.nat_grads["shN"][:, :used].abs().max()) > 0
    # The colours do not depend on the ignored bands.
    noisy = Gaussians.from_dict({**gauss.as_dict(), "shN": torch.cat([gauss.shN[:, :used],
                                                                      5 * torch.randn_like(gauss.shN[:, used:])], 1)})
    with torch.no_grad():
        assert torch.equal(rasterize(noisy, camera, sh_degree=sh_degree, backend="native").rgb, result.nat.rgb.detach())


def test_background_colour():
    camera = _camera(37, 23, 30.0, seed=8)
    gauss = _synthetic(40, camera, seed=8)
    bg = (0.9, 0.2, 0.5)
    result = compare(gauss, camera, "background", background=bg)
    with torch.no_grad():
        black = rasterize(gauss, camera, backend="native")
    expected = black.rgb + (1 - black.alpha[..., None]) * torch.tensor(bg)
    torch.testing.assert_close(result.nat.rgb.detach(), expected, atol=1e-6, rtol=0)
    assert float((1 - result.nat.alpha.detach()).max()) > 0.1  # the background shows somewhere


def test_many_overlapping_gaussians_hit_the_transmittance_cutoff():
    camera = _camera(37, 23, 30.0, seed=9)
    gauss = _synthetic(300, camera, seed=9, scale_range=(0.2, 0.6))
    gauss.opacities = gauss.opacities.abs() + 1.0
    result = compare(gauss, camera, "saturated (T cutoff)")
    assert float(result.nat.alpha.detach().min()) > 0.99


# ---------------------------------------------------------------- 4. absgrad


def test_absgrad_is_sum_of_per_pixel_gradient_magnitudes():
    W, H = 7, 5
    camera = _camera(W, H, 6.0, seed=10)
    gauss = _synthetic(6, camera, seed=10, scale_range=(0.1, 0.4))
    result = compare(gauss, camera, "absgrad 7x5")
    assert int((result.nat.radii > 0).all(-1).sum()) >= 4
    rgb_c, alpha_c, depth_c = result.cot
    expected = torch.zeros(len(gauss), 2, dtype=torch.float64)
    for y in range(H):
        for x in range(W):
            only = torch.zeros(H, W, dtype=torch.float64)
            only[y, x] = 1
            _, grads = _render(gauss, camera, "torch", (rgb_c * only[..., None], alpha_c * only, depth_c * only))
            expected += grads["means2d"].double().abs()
    absgrad = result.nat.absgrad
    err = _note("absgrad 7x5", "absgrad", _rel(expected, absgrad))
    assert err < 1e-4
    # Per-pixel terms with different signs cancel in means2d.grad but not in absgrad.
    assert float((absgrad.double() - result.nat_grads["means2d"].double().abs()).max()) > 1e-3 * float(absgrad.max())


def test_absgrad_is_per_render_and_zero_before_backward():
    camera = _camera(20, 14, 15.0, seed=11)
    gauss = _synthetic(20, camera, seed=11)
    params = _leaves(gauss)
    out = rasterize(Gaussians.from_dict(params), camera, backend="native")
    assert out.absgrad is not None and (out.absgrad == 0).all()
    out.rgb.sum().backward()
    first = out.absgrad.clone()
    assert float(first.max()) > 0
    again = rasterize(Gaussians.from_dict(params), camera, backend="native")
    again.rgb.sum().backward()
    torch.testing.assert_close(again.absgrad, first, rtol=0, atol=0)


def test_native_backward_is_reproducible():
    """Bitwise: resumed training must match an uninterrupted run (tiles go to threads in a fixed order)."""
    camera = _camera(160, 96, 120.0, seed=13)
    gauss = _synthetic(600, camera, seed=13)
    gen = torch.Generator().manual_seed(0)
    cot = (torch.randn(96, 160, 3, generator=gen, dtype=torch.float64),
           torch.randn(96, 160, generator=gen, dtype=torch.float64), torch.zeros(96, 160, dtype=torch.float64))
    first, first_g = _render(gauss, camera, "native", cot)
    for _ in range(3):
        out, grads = _render(gauss, camera, "native", cot)
        assert torch.equal(out.rgb, first.rgb) and torch.equal(out.alpha, first.alpha)
        assert torch.equal(out.weight_sums, first.weight_sums)
        for name in GRAD_NAMES:
            assert torch.equal(grads[name], first_g[name]), name


# ---------------------------------------------------------------- 5. constants


def test_cpp_constants_match_python(ext):
    consts = ext.constants()
    f32 = lambda v: float(np.float32(v))  # noqa: E731  the C++ side holds float32
    assert consts["alpha_min"] == f32(composite_module.ALPHA_MIN)
    assert consts["alpha_max"] == f32(composite_module.ALPHA_MAX)
    assert consts["transmittance_min"] == f32(composite_module.T_MIN)
    assert consts["eps2d"] == f32(projection_module.EPS2D)
    assert consts["radius_sigmas"] == f32(projection_module.RADIUS_SIGMAS)
    assert consts["near_plane"] == f32(projection_module.NEAR_PLANE)
    assert consts["tile_size"] == 16


# ---------------------------------------------------------------- 6. finite differences


def _pair_signature(gaussians: Gaussians, camera: Camera) -> tuple:
    """Which pairs are blended (alpha >= 1/255, before the cutoff) and which are clamped at 0.99."""
    with torch.no_grad():
        gauss, pixels, raw, alpha, _, _ = _pairs(gaussians, camera)
        keep = alpha >= ALPHA_MIN
        order = torch.sort(pixels[keep], stable=True).indices
        g_k, p_k, a_k = gauss[keep][order], pixels[keep][order], alpha[keep][order]
        log_t = torch.log1p(-a_k.double())
        _, counts = torch.unique_consecutive(p_k, return_counts=True)
        start = torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
        inclusive = torch.cumsum(log_t, 0)
        alive = inclusive - torch.cat([inclusive.new_zeros(1), inclusive])[start] >= math.log(T_MIN)
        clamped = gauss[raw > ALPHA_MAX], pixels[raw > ALPHA_MAX]
    return (g_k[alive].tolist(), p_k[alive].tolist(), clamped[0].tolist(), clamped[1].tolist())


def test_gradients_match_finite_differences():
    W, H = 12, 9
    camera = _camera(W, H, 10.0, seed=12)
    gauss = _synthetic(5, camera, seed=12, scale_range=(0.15, 0.5), z_range=(2.0, 4.0))
    gauss.opacities = gauss.opacities.clamp(-1.5, 1.5)
    gen = torch.Generator().manual_seed(3)
    cot = (torch.randn(H, W, 3, generator=gen, dtype=torch.float64),
           torch.randn(H, W, generator=gen, dtype=torch.float64), torch.zeros(H, W, dtype=torch.float64))
    out, grads = _render(gauss, camera, "native", cot)
    assert (out.radii > 0).all()

    def loss_at(name, index, delta):
        raw = {k: v.clone() for k, v in gauss.as_dict().items()}
        raw[name][index] += delta
        moved = Gaussians.from_dict(raw)
        with torch.no_grad():
            value = float(_loss(rasterize(moved, camera, backend="native"), cot))
        return value, _pair_signature(moved, camera)

    base_signature = _pair_signature(gauss, camera)
    steps = {"means": 2e-3, "scales": 2e-3, "opacities": 2e-3, "quats": 2e-3, "sh0": 1e-2, "shN": 1e-2}
    checked, worst = 0, 0.0
    for name, step in steps.items():
        shape = getattr(gauss, name).shape
        scale = float(grads[name].abs().max())
        for flat in range(0, int(np.prod(shape)), 1 if name in ("opacities", "sh0") else 2):
            index = np.unravel_index(flat, shape)
            plus, sig_p = loss_at(name, index, step)
            minus, sig_m = loss_at(name, index, -step)
            if sig_p != base_signature or sig_m != base_signature:
                continue  # a pair switched on or off inside the step: the loss is not smooth there
            fd = (plus - minus) / (2 * step)
            analytic = float(grads[name][index])
            err = abs(fd - analytic) / (abs(analytic) + 0.02 * scale)
            worst = max(worst, err)
            assert err < 0.03, f"d loss / d {name}{list(index)}: finite difference {fd:.6g}, analytic {analytic:.6g}"
            checked += 1
    _note("finite differences", "rel err", worst)
    _note("finite differences", "entries", checked)
    assert checked >= 40


# ---------------------------------------------------------------- 7. training through the native backend


def test_training_with_native_backend_improves_and_reuses_the_build(tmp_path):
    from splatkit.data.demo_scene import generate_demo_scene
    from splatkit.train.config import TrainConfig
    from splatkit.train.strategies import ADCStrategy
    from splatkit.train.trainer import train

    scene = generate_demo_scene(tmp_path / "scene", n_cameras=10, width=48, height=36)
    strategy = ADCStrategy(refine_start=5, refine_every=10, grow_grad2d=2e-5)
    cfg = TrainConfig(scene=str(scene), out=tmp_path / "run", steps=30, checkpoint_every=30, eval_steps=(),
                      backend="native", strategy=strategy, log_every=1, sh_degree_interval=10)
    metrics = train(cfg, show_progress=False)
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [line for line in lines if "loss" in line]
    assert [line["step"] for line in steps] == list(range(1, 31))
    assert all(math.isfinite(line["loss"]) for line in steps)
    first = np.mean([line["loss"] for line in steps[:5]])
    last = np.mean([line["loss"] for line in steps[-5:]])
    assert last < 0.9 * first, (first, last)
    assert np.mean([line["psnr"] for line in steps[-5:]]) > np.mean([line["psnr"] for line in steps[:5]]) + 0.5
    counts = [line["num_gaussians"] for line in steps]
    assert len(set(counts)) > 1, "densification never changed the number of Gaussians"
    assert math.isfinite(metrics["psnr"])
    # One build for this source hash, reused: exactly one shared object in its folder.
    assert load_extension() is load_extension()
    build_dir = cache_root() / source_hash()
    assert len(list(build_dir.glob("*.so"))) == 1, sorted(p.name for p in build_dir.iterdir())
    assert Path(load_extension().__file__).parent == build_dir
