"""Per-Gaussian geometry and SH of the reference renderer against gsplat's pure-PyTorch reference functions.

gsplat's `_torch_impl` functions run on CPU and are the published yardstick: 3D covariance, EWA projection
(means2d, conics, depths, radii, Mip-Splatting compensation with eps2d = 0.3) and real SH up to degree 3.
Forward values are compared with `torch.testing.assert_close`; backward passes send the same random
cotangents through both implementations and compare the gradients w.r.t. the inputs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.spatial import cKDTree

from splatkit.render.projection import covariance_3d, project, quat_to_rotmat
from splatkit.render.sh import eval_sh, sh_basis

gs = pytest.importorskip("gsplat.cuda._torch_impl")

GARDEN = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "gsplat_test_garden" / "test_garden.npz"

WIDTH, HEIGHT = 64, 48


def _rotation(generator: torch.Generator, dtype) -> torch.Tensor:
    q = torch.randn(4, generator=generator, dtype=torch.float64)
    return gs._quat_to_rotmat(q[None])[0].to(dtype)


def _camera(dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    viewmat = torch.eye(4, dtype=dtype)
    viewmat[:3, :3] = _rotation(g, dtype)
    viewmat[:3, 3] = torch.randn(3, generator=g, dtype=torch.float64).to(dtype)
    K = torch.tensor([[52.0, 0.0, 31.7], [0.0, 47.5, 24.3], [0.0, 0.0, 1.0]], dtype=dtype)
    return viewmat, K


def _scene(dtype, seed=0):
    """Gaussians in world space whose camera-space positions are a mix of: in view, outside the image
    (beside the frustum), behind the camera, and straddling the near plane (large ones at |z| ~ near)."""
    g = torch.Generator().manual_seed(seed)
    viewmat, K = _camera(dtype, seed)

    def rnd(*shape):
        return torch.rand(*shape, generator=g, dtype=torch.float64)

    def rndn(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    groups = []
    n = 120  # in front, inside or near the image
    z = 0.5 + 5 * rnd(n)
    groups.append(torch.stack([(rnd(n) - 0.5) * 1.6 * z, (rnd(n) - 0.5) * 1.4 * z, z], -1))
    n = 30  # in front but far outside the image
    z = 0.5 + 5 * rnd(n)
    side = torch.where(rnd(n) > 0.5, 1.0, -1.0)
    groups.append(torch.stack([side * (2.0 + 3 * rnd(n)) * z, (rnd(n) - 0.5) * z, z], -1))
    n = 30  # behind the camera
    z = -3 * rnd(n) - 0.05
    groups.append(torch.stack([(rnd(n) - 0.5) * 2, (rnd(n) - 0.5) * 2, z], -1))
    n = 20  # straddling the near plane (0.01): centre just in front of or just behind it
    z = torch.cat([0.012 + 0.2 * rnd(10), -0.2 * rnd(10) + 0.009])
    groups.append(torch.stack([(rnd(n) - 0.5) * 0.2, (rnd(n) - 0.5) * 0.2, z], -1))
    means_cam = torch.cat(groups)
    N = len(means_cam)
    R, t = viewmat[:3, :3].double(), viewmat[:3, 3].double()
    means = (means_cam - t) @ R  # world = R^T (cam - t)
    scales = torch.exp(rndn(N, 3) * 0.6 - 2.2)
    scales[-20:] *= 5.0  # straddling ones are large
    quats = rndn(N, 4) * (0.5 + 2 * rnd(N, 1))  # unnormalised
    return means.to(dtype), quats.to(dtype), scales.to(dtype), viewmat, K


def _ours(means, quats, scales, viewmat, K, width=WIDTH, height=HEIGHT):
    covars = covariance_3d(quats, scales)
    p = project(means, covars, viewmat, K, width, height, eps2d=0.3)
    return p.radii, p.means2d, p.depths, p.conics, p.compensation


def _gsplat(means, quats, scales, viewmat, K, width=WIDTH, height=HEIGHT):
    covars, _ = gs._quat_scale_to_covar_preci(quats, scales, compute_covar=True, compute_preci=False)
    radii, means2d, depths, conics, comp = gs._fully_fused_projection(
        means, covars, viewmat[None], K[None], width, height, eps2d=0.3, calc_compensations=True)
    return radii[0], means2d[0], depths[0], conics[0], comp[0]


def _tols(dtype):
    return dict(rtol=1e-10, atol=1e-10) if dtype == torch.float64 else dict(rtol=2e-5, atol=2e-4)


# ---------------------------------------------------------------- rotation and covariance


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_quat_to_rotmat_matches_gsplat_and_is_a_rotation(dtype):
    g = torch.Generator().manual_seed(1)
    quats = (torch.randn(200, 4, generator=g, dtype=torch.float64) * 3).to(dtype)
    R = quat_to_rotmat(quats)
    torch.testing.assert_close(R, gs._quat_to_rotmat(quats), **_tols(dtype))
    eye = torch.eye(3, dtype=dtype).expand(200, 3, 3)
    torch.testing.assert_close(R @ R.transpose(-1, -2), eye, **_tols(dtype))
    torch.testing.assert_close(torch.linalg.det(R), torch.ones(200, dtype=dtype), **_tols(dtype))
    # Scale invariance: unnormalised quaternions give the same rotation, and q and -q agree.
    torch.testing.assert_close(quat_to_rotmat(quats * 7.5), R, **_tols(dtype))
    torch.testing.assert_close(quat_to_rotmat(-quats), R, **_tols(dtype))
    # Known values: identity, and 90 degrees about z maps x to y.
    torch.testing.assert_close(quat_to_rotmat(torch.tensor([[2.0, 0, 0, 0]], dtype=dtype))[0], torch.eye(3, dtype=dtype))
    h = 0.5**0.5
    Rz = quat_to_rotmat(torch.tensor([[h, 0, 0, h]], dtype=dtype))[0]
    torch.testing.assert_close(Rz @ torch.tensor([1.0, 0, 0], dtype=dtype), torch.tensor([0.0, 1, 0], dtype=dtype),
                               **_tols(dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_covariance_3d_forward_and_backward_match_gsplat(dtype):
    g = torch.Generator().manual_seed(2)
    quats = (torch.randn(300, 4, generator=g, dtype=torch.float64) * 2).to(dtype).requires_grad_()
    scales = torch.exp(torch.randn(300, 3, generator=g, dtype=torch.float64)).to(dtype).requires_grad_()
    ours = covariance_3d(quats, scales)
    ref, _ = gs._quat_scale_to_covar_preci(quats, scales, compute_covar=True, compute_preci=False)
    torch.testing.assert_close(ours, ref, **_tols(dtype))
    # Symmetric positive semi-definite with eigenvalues = scales^2.
    torch.testing.assert_close(ours, ours.transpose(-1, -2))
    eig = torch.linalg.eigvalsh(ours.detach().double())
    torch.testing.assert_close(eig, torch.sort(scales.detach().double() ** 2, dim=-1).values, rtol=1e-4, atol=1e-6)

    cot = torch.randn(300, 3, 3, generator=g, dtype=torch.float64).to(dtype)
    g_ours = torch.autograd.grad((ours * cot).sum(), [quats, scales])
    g_ref = torch.autograd.grad((ref * cot).sum(), [quats, scales])
    for a, b in zip(g_ours, g_ref):
        torch.testing.assert_close(a, b, **_tols(dtype))


# ---------------------------------------------------------------- projection


def _check_projection(means, quats, scales, viewmat, K, width, height, dtype, seed=0):
    means = means.clone().requires_grad_()
    quats = quats.clone().requires_grad_()
    scales = scales.clone().requires_grad_()
    viewmat = viewmat.clone().requires_grad_()
    radii, m2d, depths, conics, comp = _ours(means, quats, scales, viewmat, K, width, height)
    r_radii, r_m2d, r_depths, r_conics, r_comp = _gsplat(means, quats, scales, viewmat, K, width, height)

    visible = (r_radii > 0).all(-1)
    assert radii.dtype == torch.int32 and radii.shape == r_radii.shape
    # Radii agree everywhere: identical where visible, and both zero where gsplat culls.
    torch.testing.assert_close(radii, r_radii, rtol=0, atol=0)
    tol = _tols(dtype)
    torch.testing.assert_close(depths, r_depths, **tol)
    torch.testing.assert_close(m2d[visible], r_m2d[visible], **tol)
    torch.testing.assert_close(conics[visible], r_conics[visible], **tol)
    torch.testing.assert_close(comp[visible], r_comp[visible], **tol)
    assert torch.isfinite(m2d).all() and torch.isfinite(conics).all() and torch.isfinite(comp).all()

    # Backward: identical random cotangents on the visible Gaussians' outputs (culled ones get none).
    g = torch.Generator().manual_seed(seed + 100)
    mask = visible[:, None].to(dtype)
    cots = [torch.randn(t.shape, generator=g, dtype=torch.float64).to(dtype) for t in (m2d, depths, conics, comp)]
    cots = [cots[0] * mask, cots[1] * mask[:, 0], cots[2] * mask, cots[3] * mask[:, 0]]

    def loss(out):
        return sum((o * c).sum() for o, c in zip(out, cots))

    inputs = [means, quats, scales, viewmat]
    g_ours = torch.autograd.grad(loss([m2d, depths, conics, comp]), inputs)
    g_ref = torch.autograd.grad(loss([r_m2d, r_depths, r_conics, r_comp]), inputs)
    grad_tol = dict(rtol=1e-8, atol=1e-8) if dtype == torch.float64 else dict(rtol=1e-3, atol=1e-3)
    for name, a, b in zip(["means", "quats", "scales", "viewmat"], g_ours, g_ref):
        assert torch.isfinite(a).all(), name
        if name == "viewmat" and dtype == torch.float32:
            # a sum over all Gaussians: compare relative to its magnitude
            torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4 * float(b.abs().max()), msg=lambda m, name=name: f"{name}: {m}")
        else:
            torch.testing.assert_close(a, b, **grad_tol, msg=lambda m, name=name: f"{name}: {m}")
    # Culled Gaussians receive no gradient.
    assert (g_ours[0][~visible] == 0).all()
    return visible


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_projection_matches_gsplat_random_scene(dtype, seed):
    means, quats, scales, viewmat, K = _scene(dtype, seed)
    visible = _check_projection(means, quats, scales, viewmat, K, WIDTH, HEIGHT, dtype, seed)
    # The scene really exercises culling: some visible, the behind/outside ones culled.
    assert 50 < int(visible.sum()) < len(means)
    assert not visible[150:180].any()  # behind the camera


def test_projection_culls_behind_and_near_plane():
    means, quats, scales, viewmat, K = _scene(torch.float64, 0)
    radii, m2d, depths, conics, comp = _ours(means, quats, scales, viewmat, K)
    assert (radii[depths <= 0.01] == 0).all()
    assert torch.isfinite(m2d).all() and torch.isfinite(conics).all()
    # a Gaussian exactly at the camera centre (z = 0) must not produce NaN/inf
    campos = -viewmat[:3, :3].T @ viewmat[:3, 3]
    out = _ours(campos[None], quats[:1], scales[:1], viewmat, K)
    assert (out[0] == 0).all()
    for t in out[1:]:
        assert torch.isfinite(t).all()


def test_projection_eps2d_and_compensation_values():
    """Head-on isotropic Gaussian: cov2d = (f s / z)^2 I, conic = 1/(sigma^2+eps), comp = sigma^2/(sigma^2+eps)."""
    f, s, z, eps = 40.0, 0.05, 2.0, 0.3
    K = torch.tensor([[f, 0, 16.0], [0, f, 12.0], [0, 0, 1]], dtype=torch.float64)
    viewmat = torch.eye(4, dtype=torch.float64)
    means = torch.tensor([[0.0, 0.0, z]], dtype=torch.float64)
    covars = covariance_3d(torch.tensor([[1.0, 0, 0, 0]], dtype=torch.float64), torch.full((1, 3), s, dtype=torch.float64))
    p = project(means, covars, viewmat, K, 32, 24, eps2d=eps)
    var = (f * s / z) ** 2
    torch.testing.assert_close(p.means2d, torch.tensor([[16.0, 12.0]], dtype=torch.float64))
    torch.testing.assert_close(p.conics, torch.tensor([[1 / (var + eps), 0.0, 1 / (var + eps)]], dtype=torch.float64))
    torch.testing.assert_close(p.compensation, torch.tensor([var / (var + eps)], dtype=torch.float64))
    r = int(np.ceil(3.33 * np.sqrt(var + eps)))
    assert p.radii.tolist() == [[r, r]]
    torch.testing.assert_close(p.depths, torch.tensor([z], dtype=torch.float64))


# ---------------------------------------------------------------- spherical harmonics


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_sh_matches_gsplat_forward_and_backward(degree, dtype):
    g = torch.Generator().manual_seed(10 + degree)
    n = 500
    dirs = (torch.randn(n, 3, generator=g, dtype=torch.float64) * (0.1 + 5 * torch.rand(n, 1, generator=g,
                                                                                            dtype=torch.float64)))
    dirs = dirs.to(dtype).requires_grad_()  # deliberately not unit length
    coeffs = torch.randn(n, 16, 3, generator=g, dtype=torch.float64).to(dtype).requires_grad_()  # always 16 bases
    ours = eval_sh(degree, dirs, coeffs)
    ref = gs._spherical_harmonics(degree, dirs, coeffs)
    tol = _tols(dtype)
    torch.testing.assert_close(ours, ref, **tol)
    cot = torch.randn(n, 3, generator=g, dtype=torch.float64).to(dtype)
    g_ours = torch.autograd.grad((ours * cot).sum(), [dirs, coeffs], materialize_grads=True)
    g_ref = torch.autograd.grad((ref * cot).sum(), [dirs, coeffs], materialize_grads=True)
    grad_tol = dict(rtol=1e-9, atol=1e-9) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(g_ours[0], g_ref[0], **grad_tol)
    torch.testing.assert_close(g_ours[1], g_ref[1], **grad_tol)
    # Coefficients beyond the degree get exactly zero gradient.
    assert (g_ours[1][:, (degree + 1) ** 2:] == 0).all()
    # Exactly the right number of bases is used: sh_basis has (degree+1)^2 columns equal to gsplat's.
    unit = torch.nn.functional.normalize(dirs.detach(), dim=-1)
    torch.testing.assert_close(sh_basis(degree, unit), gs._eval_sh_bases_fast((degree + 1) ** 2, unit), **tol)


def test_sh_degree0_is_constant_and_scale_invariant():
    dirs = torch.randn(50, 3, dtype=torch.float64)
    coeffs = torch.randn(50, 16, 3, dtype=torch.float64)
    torch.testing.assert_close(eval_sh(0, dirs, coeffs), 0.28209479177387814 * coeffs[:, 0])
    for d in (1, 2, 3):
        torch.testing.assert_close(eval_sh(d, dirs * 3.3, coeffs), eval_sh(d, dirs, coeffs))


# ---------------------------------------------------------------- real data: gsplat's garden test asset


def _garden():
    if not GARDEN.is_file():
        pytest.skip(f"{GARDEN} is not available")
    data = np.load(GARDEN)
    means = data["means3d"].astype(np.float32)
    keep = (np.abs(means) < 2).all(axis=1)  # gsplat's load_test_data crop
    means = means[keep]
    rng = np.random.default_rng(0)
    means = means[rng.choice(len(means), 3000, replace=False)]
    dist, _ = cKDTree(means).query(means, k=4)
    scales = np.repeat(dist[:, 1:].mean(axis=1, keepdims=True), 3, axis=1).astype(np.float32)
    scales *= np.exp(rng.normal(0, 0.3, scales.shape)).astype(np.float32)  # make them anisotropic
    quats = rng.normal(size=(len(means), 4)).astype(np.float32)
    return (torch.from_numpy(means), torch.from_numpy(quats), torch.from_numpy(scales),
            torch.from_numpy(data["viewmats"]), torch.from_numpy(data["Ks"]), int(data["width"]),
            int(data["height"]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_projection_matches_gsplat_on_garden(dtype):
    means, quats, scales, viewmats, Ks, width, height = _garden()
    for cam in range(len(viewmats)):
        visible = _check_projection(means.to(dtype), quats.to(dtype), scales.to(dtype), viewmats[cam].to(dtype),
                                    Ks[cam].to(dtype), width, height, dtype, seed=cam)
        assert int(visible.sum()) > 500


def test_sh_matches_gsplat_on_garden_directions():
    means, *_rest, viewmats, Ks, width, height = _garden()
    g = torch.Generator().manual_seed(5)
    coeffs = torch.randn(len(means), 16, 3, generator=g)
    for cam in range(len(viewmats)):
        campos = torch.linalg.inv(viewmats[cam])[:3, 3]
        dirs = means - campos
        for degree in range(4):
            torch.testing.assert_close(eval_sh(degree, dirs, coeffs), gs._spherical_harmonics(degree, dirs, coeffs),
                                       rtol=2e-5, atol=2e-5)
