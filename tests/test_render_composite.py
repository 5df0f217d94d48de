"""Alpha compositing of the reference renderer against a brute-force renderer written here.

The brute force visits every pixel x every Gaussian in float64, nearest first (stable by index on ties),
with the 3DGS rules: pixel centres at (j + 0.5, i + 0.5), alpha = min(0.99, o * exp(-power)), pairs with
alpha < 1/255 (or power > 0) skipped, and a pixel stops before the Gaussian that would bring its
transmittance below 1e-4. The background is added as (1 - alpha) * bg. It is differentiable, so gradients
of the code under test are compared with autograd through it (and it is itself checked by gradcheck).
For end-to-end checks the brute force gets its geometry and colours from gsplat's reference functions.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from splatkit.data.cameras import Camera
from splatkit.model.gaussians import Gaussians
from splatkit.model.sh import SH_C0
from splatkit.render import rasterize
from splatkit.render.composite import composite

gs = pytest.importorskip("gsplat.cuda._torch_impl")

W, H = 23, 17  # deliberately not multiples of 16


# ---------------------------------------------------------------- the brute-force renderer


def brute_force(means2d, conics, opacities, colors, depths, include, width, height):
    """Returns (color (H,W,C), alpha (H,W), weight_sums (N,), active (N, H*W) bool)."""
    dt = torch.float64
    means2d, conics, opacities, colors, depths = (t.to(dt) for t in (means2d, conics, opacities, colors, depths))
    n, channels = colors.shape
    ys, xs = torch.meshgrid(torch.arange(height, dtype=dt) + 0.5, torch.arange(width, dtype=dt) + 0.5,
                            indexing="ij")
    px, py = xs.reshape(-1), ys.reshape(-1)
    P = px.numel()
    T = torch.ones(P, dtype=dt)
    color = torch.zeros(P, channels, dtype=dt)
    acc = torch.zeros(P, dtype=dt)
    done = torch.zeros(P, dtype=torch.bool)
    weight_sums = [torch.zeros((), dtype=dt)] * n
    active = torch.zeros(n, P, dtype=torch.bool)
    order = sorted((i for i in range(n) if bool(include[i])), key=lambda i: (float(depths[i].detach()), i))
    for i in order:
        dx, dy = px - means2d[i, 0], py - means2d[i, 1]
        a, b, c = conics[i]
        power = -0.5 * (a * dx * dx + c * dy * dy) - b * dx * dy
        alpha = torch.clamp(opacities[i] * torch.exp(power), max=0.99)
        use = (power <= 0) & (alpha >= 1.0 / 255.0) & ~done
        next_T = T * (1 - alpha)
        stop = use & (next_T < 1e-4)
        done = done | stop
        use = use & ~stop
        w = torch.where(use, alpha * T, torch.zeros_like(alpha))
        color = color + w[:, None] * colors[i]
        acc = acc + w
        T = torch.where(use, next_T, T)
        weight_sums[i] = w.sum()
        active[i] = use
    return (color.reshape(height, width, channels), acc.reshape(height, width), torch.stack(weight_sums)
            if n else torch.zeros(0, dtype=dt), active)


def _random_2d(n, width, height, seed, dtype=torch.float64):
    """Synthetic projected Gaussians: covariances with the 0.3 px low-pass, radii from them (3.33 sigma)."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.rand(*s, generator=g, dtype=torch.float64)  # noqa: E731
    means2d = torch.stack([r(n) * (width + 8) - 4, r(n) * (height + 8) - 4], -1)
    L = torch.randn(n, 2, 2, generator=g, dtype=torch.float64) * (0.5 + 3 * r(n, 1, 1))
    cov = L @ L.transpose(-1, -2) + 0.3 * torch.eye(2, dtype=torch.float64)
    inv = torch.linalg.inv(cov)
    conics = torch.stack([inv[:, 0, 0], inv[:, 0, 1], inv[:, 1, 1]], -1)
    radii = torch.ceil(3.33 * torch.sqrt(torch.stack([cov[:, 0, 0], cov[:, 1, 1]], -1))).int()
    opacities = 0.05 + 0.95 * r(n)
    opacities[:3] = 1.0  # some saturate at 0.99
    colors = r(n, 4)
    depths = 0.5 + 5 * r(n)
    return [t.to(dtype) if t.is_floating_point() else t for t in (means2d, conics, opacities, colors, depths, radii)]


def _camera(width=W, height=H, seed=0, f=20.0):
    g = np.random.default_rng(seed)
    angle = g.normal(size=3) * 0.1
    Rm = gs._quat_to_rotmat(torch.tensor([1.0, *angle], dtype=torch.float64)[None])[0].numpy()
    w2c = np.eye(4)
    w2c[:3, :3] = Rm
    w2c[:3, 3] = g.normal(size=3) * 0.1
    K = np.array([[f, 0, width / 2 + 0.3], [0, f * 1.1, height / 2 - 0.2], [0, 0, 1]])
    return Camera("cam", width, height, K, w2c)


def _gaussians(n, seed=0, degree=3, behind=0, camera=None):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.rand(*s, generator=g)  # noqa: E731
    z = 1.0 + 4 * r(n)
    cam_pts = torch.stack([(r(n) - 0.5) * 1.6 * z, (r(n) - 0.5) * 1.4 * z, z], -1)
    if behind:
        cam_pts[-behind:, 2] = -cam_pts[-behind:, 2]
    camera = camera or _camera()
    R, t = torch.tensor(camera.world_to_cam[:3, :3], dtype=torch.float32), torch.tensor(camera.world_to_cam[:3, 3],
                                                                                        dtype=torch.float32)
    means = (cam_pts - t) @ R
    return Gaussians(
        means=means,
        scales=torch.log(0.03 + 0.25 * r(n, 3)),
        quats=torch.randn(n, 4, generator=g) * 2,
        opacities=torch.randn(n, generator=g) * 1.5,
        sh0=torch.randn(n, 1, 3, generator=g) * 0.8,
        shN=torch.randn(n, (degree + 1) ** 2 - 1, 3, generator=g) * 0.3,
    )


def _params(gaussians):
    return {k: v.detach().clone().requires_grad_() for k, v in gaussians.as_dict().items()}


def reference_render(params, camera, *, sh_degree, background, antialiased):
    """gsplat geometry + SH, brute-force blending, all in float64 (differentiable w.r.t. `params`)."""
    p = {k: v.double() for k, v in params.items()}
    viewmat = torch.tensor(camera.world_to_cam, dtype=torch.float64)
    K = torch.tensor(camera.K, dtype=torch.float64)
    covars, _ = gs._quat_scale_to_covar_preci(p["quats"], torch.exp(p["scales"]), compute_preci=False)
    radii, means2d, depths, conics, comp = gs._fully_fused_projection(
        p["means"], covars, viewmat[None], K[None], camera.width, camera.height, eps2d=0.3, calc_compensations=True)
    radii, means2d, depths, conics, comp = radii[0], means2d[0], depths[0], conics[0], comp[0]
    opac = torch.sigmoid(p["opacities"])
    if antialiased:
        opac = opac * comp
    campos = torch.linalg.inv(viewmat)[:3, 3]
    sh = torch.cat([p["sh0"], p["shN"]], 1)
    rgb = torch.clamp_min(gs._spherical_harmonics(sh_degree, p["means"] - campos, sh) + 0.5, 0.0)
    feats = torch.cat([rgb, depths[:, None]], -1)
    color, alpha, wsum, _ = brute_force(means2d, conics, opac, feats, depths, (radii > 0).all(-1),
                                        camera.width, camera.height)
    bg = torch.tensor(background, dtype=torch.float64)
    image = color[..., :3] + (1 - alpha[..., None]) * bg
    depth = torch.where(alpha > 0, color[..., 3] / alpha.clamp(min=1e-300), torch.zeros_like(alpha))
    return image, alpha, depth, wsum


def _render(params, camera, **kw):
    return rasterize(Gaussians.from_dict(params), camera, backend="torch", **kw)


# ---------------------------------------------------------------- the brute force itself


def test_brute_force_gradients_pass_gradcheck():
    means2d, conics, opac, colors, depths, radii = _random_2d(4, 6, 5, seed=3)
    opac = opac.clamp(max=0.9)  # away from the 0.99 kink
    include = torch.ones(4, dtype=torch.bool)

    def f(m, c, o, col):
        color, alpha, _, _ = brute_force(m, c, o, col, depths, include, 6, 5)
        return color, alpha

    inputs = [t.clone().requires_grad_() for t in (means2d, conics, opac, colors)]
    assert torch.autograd.gradcheck(f, inputs, eps=1e-7, atol=1e-6)


# ---------------------------------------------------------------- composite() directly


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_composite_matches_brute_force_float64(seed):
    means2d, conics, opac, colors, depths, radii = _random_2d(30, W, H, seed)
    inputs = [t.clone().requires_grad_() for t in (means2d, conics, opac, colors)]
    out = composite(*inputs, depths, radii, W, H)
    ref_color, ref_alpha, ref_wsum, active = brute_force(*inputs, depths, (radii > 0).all(-1), W, H)
    assert active.any(1).sum() > 20  # most Gaussians touch the image
    tol = dict(rtol=1e-5, atol=1e-6)  # composite keeps transmittance in float32
    torch.testing.assert_close(out.color, ref_color, **tol)
    torch.testing.assert_close(out.alpha, ref_alpha, **tol)
    torch.testing.assert_close(out.weight_sums, ref_wsum.detach(), **tol)
    assert not out.weight_sums.requires_grad

    g = torch.Generator().manual_seed(seed + 50)
    cot_c = torch.randn(H, W, 4, generator=g, dtype=torch.float64)
    cot_a = torch.randn(H, W, generator=g, dtype=torch.float64)
    grads = torch.autograd.grad((out.color * cot_c).sum() + (out.alpha * cot_a).sum(), inputs)
    ref_grads = torch.autograd.grad((ref_color * cot_c).sum() + (ref_alpha * cot_a).sum(), inputs)
    for name, a, b in zip(["means2d", "conics", "opacities", "colors"], grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=lambda m, name=name: f"{name}: {m}")


def test_composite_float32_matches_brute_force():
    means2d, conics, opac, colors, depths, radii = _random_2d(30, W, H, seed=7, dtype=torch.float32)
    out = composite(means2d, conics, opac, colors, depths, radii, W, H)
    ref_color, ref_alpha, ref_wsum, _ = brute_force(means2d, conics, opac, colors, depths, (radii > 0).all(-1), W, H)
    assert out.color.dtype == torch.float32
    torch.testing.assert_close(out.color.double(), ref_color, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out.alpha.double(), ref_alpha, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out.weight_sums.double(), ref_wsum, rtol=1e-4, atol=1e-4)


def test_composite_gradients_match_finite_differences():
    """Central differences on a few parameters, skipping any step that changes which pairs are blended."""
    means2d, conics, opac, colors, depths, radii = _random_2d(12, 11, 9, seed=11)
    opac = opac.clamp(max=0.95)
    include = (radii > 0).all(-1)
    g = torch.Generator().manual_seed(0)
    cot_c = torch.randn(9, 11, 4, generator=g, dtype=torch.float64)
    cot_a = torch.randn(9, 11, generator=g, dtype=torch.float64)

    def loss(m, c, o):
        out = composite(m, c, o, colors, depths, radii, 11, 9)
        return (out.color * cot_c).sum() + (out.alpha * cot_a).sum()

    inputs = [t.clone().requires_grad_() for t in (means2d, conics, opac)]
    grads = torch.autograd.grad(loss(*inputs), inputs)
    checked = 0
    h = 1e-3
    for which, idx in [(0, (i, j)) for i in range(12) for j in range(2)] + [(2, (i,)) for i in range(12)] + \
            [(1, (i, 0)) for i in range(12)]:
        plus = [t.clone() for t in (means2d, conics, opac)]
        minus = [t.clone() for t in (means2d, conics, opac)]
        plus[which][idx] += h
        minus[which][idx] -= h
        act = [brute_force(*v, colors, depths, include, 11, 9)[3] for v in (plus, minus)]
        if not torch.equal(act[0], act[1]):
            continue
        with torch.no_grad():
            fd = (loss(*plus) - loss(*minus)) / (2 * h)
        assert abs(float(fd) - float(grads[which][idx])) <= 2e-3 + 2e-3 * abs(float(fd)), (which, idx)
        checked += 1
    assert checked >= 25


def test_weight_sums_equal_brute_force_alpha_times_T():
    means2d, conics, opac, colors, depths, radii = _random_2d(40, W, H, seed=21)
    out = composite(means2d, conics, opac, colors, depths, radii, W, H)
    _, _, ref_wsum, active = brute_force(means2d, conics, opac, colors, depths, (radii > 0).all(-1), W, H)
    torch.testing.assert_close(out.weight_sums, ref_wsum, rtol=1e-5, atol=1e-6)
    assert (out.weight_sums[~active.any(1)] == 0).all()
    assert (out.weight_sums[active.any(1)] > 0).all()


def test_transmittance_cutoff_stops_before_T_below_1e_4():
    # Three tiny Gaussians stacked on pixel (2, 2) with alpha 0.98 each: T goes 1 -> 0.02 -> 4e-4 -> (8e-6),
    # so the third (blue, farthest) must not be blended at all at that pixel.
    means2d = torch.tensor([[2.5, 2.5]] * 3, dtype=torch.float64)
    conics = torch.tensor([[20.0, 0.0, 20.0]] * 3, dtype=torch.float64)  # only the centre pixel has alpha >= 1/255
    opac = torch.full((3,), 0.98, dtype=torch.float64)
    colors = torch.eye(3, dtype=torch.float64)
    depths = torch.tensor([3.0, 1.0, 2.0], dtype=torch.float64)  # order: green, blue, red... by depth
    radii = torch.full((3, 2), 2, dtype=torch.int32)
    out = composite(means2d, conics, opac, colors, depths, radii, 5, 5)
    # depth order: index1 (green-ish: colors[1]) at 1.0, index2 at 2.0, index0 at 3.0
    expected = 0.98 * colors[1] + 0.02 * 0.98 * colors[2]
    torch.testing.assert_close(out.color[2, 2], expected, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(out.alpha[2, 2], torch.tensor(0.98 + 0.02 * 0.98, dtype=torch.float64))
    assert float(out.weight_sums[0]) == 0.0
    mask = torch.ones(5, 5, dtype=torch.bool)
    mask[2, 2] = False
    assert (out.alpha[mask] == 0).all()


def test_composite_is_invariant_to_gaussian_order():
    means2d, conics, opac, colors, depths, radii = _random_2d(30, W, H, seed=4)
    perm = torch.randperm(30, generator=torch.Generator().manual_seed(0))
    a = composite(means2d, conics, opac, colors, depths, radii, W, H)
    b = composite(means2d[perm], conics[perm], opac[perm], colors[perm], depths[perm], radii[perm], W, H)
    torch.testing.assert_close(a.color, b.color)
    torch.testing.assert_close(a.alpha, b.alpha)
    torch.testing.assert_close(a.weight_sums[perm], b.weight_sums)


# ---------------------------------------------------------------- rasterize() end to end


@pytest.mark.parametrize("antialiased", [False, True])
@pytest.mark.parametrize("seed,sh_degree", [(0, 3), (1, 1), (2, 0)])
def test_rasterize_matches_brute_force(seed, sh_degree, antialiased):
    camera = _camera(seed=seed)
    gauss = _gaussians(30, seed=seed, degree=3, behind=3, camera=camera)
    params = _params(gauss)
    bg = (0.2, 0.4, 0.7)
    out = _render(params, camera, sh_degree=sh_degree, background=bg, antialiased=antialiased)
    ref_rgb, ref_alpha, ref_depth, ref_wsum = reference_render(params, camera, sh_degree=sh_degree, background=bg,
                                                              antialiased=antialiased)
    assert out.rgb.shape == (H, W, 3) and out.alpha.shape == (H, W) and out.depth.shape == (H, W)
    assert float(ref_alpha.detach().max()) > 0.5
    tol = dict(rtol=1e-4, atol=2e-5)
    torch.testing.assert_close(out.rgb.double(), ref_rgb, **tol)
    torch.testing.assert_close(out.alpha.double(), ref_alpha, **tol)
    hit = ref_alpha > 1e-3
    torch.testing.assert_close(out.depth.double()[hit], ref_depth[hit], rtol=1e-4, atol=1e-4)
    assert (out.depth[ref_alpha == 0] == 0).all()
    torch.testing.assert_close(out.weight_sums.double(), ref_wsum.detach(), rtol=1e-4, atol=1e-4)

    g = torch.Generator().manual_seed(seed + 9)
    cot_rgb = torch.randn(H, W, 3, generator=g, dtype=torch.float64)
    cot_a = torch.randn(H, W, generator=g, dtype=torch.float64)
    cot_d = torch.randn(H, W, generator=g, dtype=torch.float64) * (ref_alpha.detach() > 0.05)
    names = list(params)
    loss = (out.rgb * cot_rgb).sum() + (out.alpha * cot_a).sum() + (out.depth * cot_d).sum()
    ref_loss = (ref_rgb * cot_rgb).sum() + (ref_alpha * cot_a).sum() + (ref_depth * cot_d).sum()
    grads = torch.autograd.grad(loss, [params[k] for k in names], materialize_grads=True)
    ref_grads = torch.autograd.grad(ref_loss, [params[k] for k in names], materialize_grads=True)
    for name, a, b in zip(names, grads, ref_grads):
        assert torch.isfinite(a).all(), name
        scale = float(b.abs().max()) + 1e-6
        torch.testing.assert_close(a.double(), b.double(), rtol=2e-3, atol=2e-3 * scale,
                                   msg=lambda m, name=name: f"{name}: {m}")
    if sh_degree < 3:  # the unused SH bands get exactly no gradient
        assert (grads[names.index("shN")][:, (sh_degree + 1) ** 2 - 1:] == 0).all()


def _head_on(width, height, f, z, sigma_world, logit, rgb, cx=None, cy=None):
    K = np.array([[f, 0, width / 2 if cx is None else cx], [0, f, height / 2 if cy is None else cy], [0, 0, 1]])
    camera = Camera("c", width, height, K, np.eye(4))
    rgb_t = torch.tensor([rgb], dtype=torch.float32)
    gauss = Gaussians(
        means=torch.tensor([[0.0, 0.0, z]]),
        scales=torch.full((1, 3), math.log(sigma_world)),
        quats=torch.tensor([[1.0, 0.0, 0.0, 0.0]]),
        opacities=torch.tensor([logit]),
        sh0=((rgb_t - 0.5) / SH_C0)[:, None, :],
        shN=torch.zeros(1, 0, 3),
    )
    return gauss, camera


@pytest.mark.parametrize("antialiased", [False, True])
@pytest.mark.parametrize("logit", [0.8472978603872037, 8.0])  # o = 0.7 and o = 0.99966 (clamped to 0.99)
def test_single_isotropic_gaussian_head_on_is_exact(logit, antialiased):
    width, height, f, z, s = 21, 15, 30.0, 2.0, 0.1
    rgb, bg = (0.2, 0.5, 0.9), (0.1, 0.2, 0.3)
    gauss, camera = _head_on(width, height, f, z, s, logit, rgb)
    out = rasterize(gauss, camera, background=bg, antialiased=antialiased, backend="torch")
    o = 1 / (1 + math.exp(-logit))
    var = (f * s / z) ** 2  # 2.25 px^2
    if antialiased:
        o *= var / (var + 0.3)  # sqrt(det / det_blurred) of an isotropic 2x2 covariance
    j, i = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    r2 = (j - width / 2) ** 2 + (i - height / 2) ** 2
    alpha = np.minimum(0.99, o * np.exp(-0.5 * r2 / (var + 0.3)))
    alpha[alpha < 1 / 255] = 0
    expected = alpha[..., None] * np.array(rgb) + (1 - alpha[..., None]) * np.array(bg)
    np.testing.assert_allclose(out.alpha.detach().numpy(), alpha, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out.rgb.detach().numpy(), expected, rtol=1e-5, atol=1e-6)
    # centre pixel (7, 10) sits exactly on the mean: alpha = min(0.99, o)
    assert abs(float(out.alpha[7, 10]) - min(0.99, o)) < 1e-6
    np.testing.assert_allclose(out.depth.detach().numpy()[alpha > 0], z, rtol=1e-6)
    assert (out.depth.detach().numpy()[alpha == 0] == 0).all()
    assert (alpha > 0).sum() > 20 and (alpha == 0).sum() > 20  # the 1/255 cut-off is exercised
    assert tuple(out.radii[0].tolist()) == (math.ceil(3.33 * math.sqrt(var + 0.3)),) * 2
    torch.testing.assert_close(out.means2d, torch.tensor([[width / 2, height / 2]]))


def test_zero_gaussians_give_the_background():
    camera = _camera()
    empty = Gaussians(torch.zeros(0, 3), torch.zeros(0, 3), torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, 1, 3),
                      torch.zeros(0, 15, 3))
    out = rasterize(empty, camera, background=(0.25, 0.5, 0.75), backend="torch")
    torch.testing.assert_close(out.rgb, torch.tensor([0.25, 0.5, 0.75]).expand(H, W, 3))
    assert (out.alpha == 0).all() and (out.depth == 0).all()
    assert out.weight_sums.shape == (0,) and out.radii.shape == (0, 2)


def test_one_by_one_image():
    camera = _camera(width=1, height=1, f=2.0)
    gauss = _gaussians(8, seed=5, degree=1, camera=camera)
    params = _params(gauss)
    out = _render(params, camera, background=(0.3, 0.3, 0.3))
    ref_rgb, ref_alpha, ref_depth, ref_wsum = reference_render(params, camera, sh_degree=1, background=(0.3, 0.3, 0.3),
                                                              antialiased=False)
    assert out.rgb.shape == (1, 1, 3)
    assert float(ref_alpha.detach()) > 0.05
    torch.testing.assert_close(out.rgb.double(), ref_rgb, rtol=1e-4, atol=2e-5)
    torch.testing.assert_close(out.alpha.double(), ref_alpha, rtol=1e-4, atol=2e-5)
    torch.testing.assert_close(out.depth.double(), ref_depth, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out.weight_sums.double(), ref_wsum.detach(), rtol=1e-4, atol=2e-5)


@pytest.mark.parametrize("antialiased", [False, True])
def test_all_gaussians_behind_the_camera(antialiased):
    camera = _camera()
    gauss = _gaussians(20, seed=6, camera=camera, behind=20)
    params = _params(gauss)
    out = _render(params, camera, background=(0.1, 0.6, 0.2), antialiased=antialiased)
    torch.testing.assert_close(out.rgb, torch.tensor([0.1, 0.6, 0.2]).expand(H, W, 3))
    assert (out.alpha == 0).all() and (out.depth == 0).all() and (out.radii == 0).all()
    assert (out.weight_sums == 0).all()
    loss = out.rgb.sum() + out.alpha.sum() + out.depth.sum()
    grads = torch.autograd.grad(loss, list(params.values()), materialize_grads=True)
    for name, g_ in zip(params, grads):
        assert torch.isfinite(g_).all(), name
        assert (g_ == 0).all(), name


def test_huge_gaussian_covering_the_whole_image():
    camera = _camera()
    gauss = _gaussians(3, seed=8, degree=0, camera=camera)
    gauss.scales[0] = math.log(50.0)  # thousands of pixels wide at z ~ 1-5
    gauss.opacities[0] = -0.5
    params = _params(gauss)
    out = _render(params, camera, background=(0.0, 0.0, 1.0))
    ref_rgb, ref_alpha, ref_depth, _ = reference_render(params, camera, sh_degree=0, background=(0.0, 0.0, 1.0),
                                                        antialiased=False)
    assert int(out.radii[0].min()) > 10 * max(W, H)
    assert float(ref_alpha.detach().min()) > 0.3  # every pixel is covered
    torch.testing.assert_close(out.rgb.double(), ref_rgb, rtol=1e-4, atol=2e-5)
    torch.testing.assert_close(out.alpha.double(), ref_alpha, rtol=1e-4, atol=2e-5)
    torch.testing.assert_close(out.depth.double(), ref_depth, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("antialiased", [False, True])
@pytest.mark.parametrize("raw", [-float("inf"), -30.0])  # exactly zero, and a (finite) log-scale of -30
def test_degenerate_zero_scales(antialiased, raw):
    camera = _camera()
    gauss = _gaussians(10, seed=9, degree=1, camera=camera)
    # put the degenerate ones well inside the view
    cam_pts = torch.tensor([[0.1 * i - 0.4, 0.05 * i - 0.2, 2.0 + 0.1 * i] for i in range(8)])
    R = torch.tensor(camera.world_to_cam[:3, :3], dtype=torch.float32)
    t = torch.tensor(camera.world_to_cam[:3, 3], dtype=torch.float32)
    gauss.means[:8] = (cam_pts - t) @ R
    gauss.scales[:3] = raw  # points, drawn as the 0.3 px low-pass blob
    gauss.scales[3:6, 0] = raw  # flat discs
    gauss.scales[6:8, :2] = raw  # needles
    params = _params(gauss)
    out = _render(params, camera, background=(0.5, 0.5, 0.5), antialiased=antialiased)
    ref_rgb, ref_alpha, ref_depth, _ = reference_render(params, camera, sh_degree=1, background=(0.5, 0.5, 0.5),
                                                        antialiased=antialiased)
    assert (out.radii[:8] > 0).all()
    for t_ in (out.rgb, out.alpha, out.depth):
        assert torch.isfinite(t_).all()
    torch.testing.assert_close(out.rgb.double(), ref_rgb, rtol=1e-4, atol=2e-5)
    torch.testing.assert_close(out.alpha.double(), ref_alpha, rtol=1e-4, atol=2e-5)
    if not antialiased:
        assert (out.weight_sums[:3] > 0).all()  # point Gaussians still draw
    else:
        assert (out.weight_sums[:3] == 0).all()  # compensation 0: a zero-area Gaussian vanishes
    loss = out.rgb.sum() + out.alpha.sum()
    grads = torch.autograd.grad(loss, list(params.values()), materialize_grads=True)
    for name, g_ in zip(params, grads):
        assert torch.isfinite(g_).all(), f"{name}: non-finite gradient rows {torch.nonzero(~torch.isfinite(g_).all(-1) if g_.dim() > 1 else ~torch.isfinite(g_)).flatten().tolist()}"


def test_unnormalised_quaternions_render_like_normalised_ones():
    camera = _camera()
    gauss = _gaussians(30, seed=10, camera=camera)
    normalised = Gaussians.from_dict({**gauss.as_dict(), "quats": torch.nn.functional.normalize(gauss.quats, dim=-1)})
    scaled = Gaussians.from_dict({**gauss.as_dict(), "quats": gauss.quats * torch.linspace(0.1, 9.0, 30)[:, None]})
    a = rasterize(normalised, camera, backend="torch", background=(0.3, 0.2, 0.1))
    for other in (gauss, scaled):
        b = rasterize(other, camera, backend="torch", background=(0.3, 0.2, 0.1))
        torch.testing.assert_close(b.rgb, a.rgb, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(b.alpha, a.alpha, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(b.depth, a.depth, rtol=1e-5, atol=1e-4)
    assert float(a.alpha.max()) > 0.5


def test_background_tensor_and_sh_degree_clamp():
    camera = _camera()
    gauss = _gaussians(30, seed=12, degree=1, camera=camera)
    a = rasterize(gauss, camera, backend="torch", background=torch.tensor([0.3, 0.2, 0.1]), sh_degree=3)
    b = rasterize(gauss, camera, backend="torch", background=(0.3, 0.2, 0.1), sh_degree=1)
    torch.testing.assert_close(a.rgb, b.rgb)
