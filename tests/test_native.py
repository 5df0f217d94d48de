"""The native rasterizer (cuda/: the CPU/OpenMP build, and the CUDA kernels where torch sees a GPU) against the
PyTorch reference: every output, every gradient.

Both backends get the same raw parameters and the same random cotangents on rgb, alpha and depth. Each output
pixel and each gradient entry must agree within a first-order bound on float32 rounding (`_Bounds`), computed
from the reference's own Gaussians and pairs: counts of roundings times U times the magnitudes they apply to. No
number is tuned to one machine, so the same test holds for -march=native on AVX2 or AVX-512 (where FMA
contraction and vector widths change the rounding), for the x86-64-v2 baseline and for CUDA.

Discrete decisions (a pair's alpha against 1/255, the 0.99 clamp, a pixel's transmittance against 1e-4, the depth
order of two Gaussians) can go either way when a value sits within rounding of the threshold, and then a whole
pixel legitimately differs (a 1/255 pair dims everything behind it by 0.4%). `_Bounds` finds those pixels with
the same error bounds; they are left out of the image comparison and get a zero cotangent.
"""

from __future__ import annotations

import dataclasses
import json
import math
import platform
from pathlib import Path

import numpy as np
import pytest
import torch

from splatkit.data.cameras import Camera
from splatkit.model.gaussians import ActivatedGaussians, Gaussians, init_from_points
from splatkit.model.sh import sh_basis
from splatkit.render import composite as composite_module
from splatkit.render import projection as projection_module
from splatkit.render import rasterize
from splatkit.render.composite import ALPHA_MAX, ALPHA_MIN, T_MIN, _pixel_pairs
from splatkit.render.native_build import (ARCH_ENV, cache_root, compiler_available, load_extension, native_arch,
                                          source_hash)
from splatkit.render.projection import EPS2D, NEAR_PLANE, RADIUS_SIGMAS, covariance_3d, project, quat_to_rotmat
from splatkit.render.sh import eval_sh
from splatkit.render.torch_backend import camera_tensors

pytestmark = [
    pytest.mark.xdist_group("native"),
    pytest.mark.skipif(not compiler_available(), reason="no C++ compiler for the native rasterizer"),
]

GRAD_NAMES = ("means", "quats", "scales", "opacities", "sh0", "shN", "means2d")
U = 2.0**-24  # float32 unit roundoff: one float32 operation is exact up to a relative error of U
# Largest error as a fraction of its bound, by (case, quantity): printed at the end of the module (pytest -s).
MEASURED: dict[tuple[str, str], float] = {}


@pytest.fixture(scope="module", autouse=True)
def _report_measured():
    yield
    if MEASURED:
        print("\nnative vs torch, largest error as a fraction of its bound (other quantities as named):")
        for (case, quantity), value in sorted(MEASURED.items()):
            print(f"  {case:36s} {quantity:12s} {value:.3f}")


def _target(device: str, arch: str | None = None):
    """A place the native kernels run: the CPU build (for -march=`arch` when given, else the default) or CUDA."""
    marks = []
    if device == "cuda":
        marks.append(pytest.mark.skipif(not torch.cuda.is_available(),
                                        reason="torch sees no CUDA device: the CUDA kernels are compared only there"))
    if arch is not None:
        marks.append(pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason=f"{arch} is x86"))
    return pytest.param((device, arch), id=device if arch is None else f"{device}-{arch}", marks=marks)


TARGETS = [_target("cpu"), _target("cuda")]
# The x86-64-v2 build (SSE4.2: no AVX, no FMA) rounds differently from a native one. Building it costs about a
# minute, so only a representative subset of cases runs against it, including the trained splats.
PORTABLE_TARGETS = [*TARGETS, _target("cpu", "x86-64-v2")]


@pytest.fixture(params=TARGETS)
def device(request, monkeypatch) -> torch.device:
    """Where the native backend runs (the reference always runs on the CPU)."""
    name, arch = request.param
    if arch is not None:
        monkeypatch.setenv(ARCH_ENV, arch)
        assert source_hash() != source_hash("native")
        assert Path(load_extension().__file__).parent == cache_root() / source_hash()  # its own build
    return torch.device(name)


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
    return {k: v.cpu() for k, v in grads.items()}


def _render(gaussians: Gaussians, camera: Camera, backend: str, cot=None, device=torch.device("cpu"), **kw):
    """Render (and send `cot` back) on `device`; outputs and gradients come back on the CPU."""
    params = _leaves(gaussians.to(device))
    out = rasterize(Gaussians.from_dict(params), camera, backend=backend, **kw)
    grads = _backward(params, out, tuple(c.to(device) for c in cot)) if cot is not None else None
    cpu = {f.name: getattr(out, f.name) for f in dataclasses.fields(out)}
    return dataclasses.replace(out, **{k: v.cpu() for k, v in cpu.items() if v is not None}), grads


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


def _by_pixel(pixels: torch.Tensor) -> torch.Tensor:
    """A stable order grouping pairs by pixel: each pixel's pairs keep their order (nearest first)."""
    return torch.sort(pixels, stable=True).indices


def _starts(pixels: torch.Tensor) -> torch.Tensor:
    """For pairs grouped by pixel, the index of each pair's pixel's first pair."""
    _, counts = torch.unique_consecutive(pixels, return_counts=True)
    return torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)


def _segment_cumsum(values: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
    """Inclusive prefix sums restarting at each pixel's first pair (in float64: they run over the whole image)."""
    inclusive = torch.cumsum(values.double(), 0)
    return inclusive - torch.cat([torch.zeros_like(inclusive[:1]), inclusive])[start]


# ---------------------------------------------------------------- error bounds
#
# Both sides evaluate the same formulas in float32 from the same inputs, but in different orders: the native side
# with or without FMA contraction, in SIMD lanes of any width (or CUDA threads), summing in any order; the
# reference through torch's kernels. Each bound is first order: per formula, its roundings (a count, per side)
# times U times the magnitudes they apply to, plus its inputs' errors times its derivatives. A sum of n terms, in
# any order, is within (n - 1) U of the sum of their magnitudes. Everything is evaluated in float64 from the
# reference's own Gaussians and pairs.
#
# A pixel blends K pairs, sum_i w_i f_i with w_i = alpha_i T_i, T_i = prod_{j<i} (1 - alpha_j): rounding costs
# (2i + 2K + 14) U of w_i |f_i| (the native product of i factors and running sum; the reference's
# exp(sum log1p(-alpha)) and index_add), and a relative error rho_i of alpha_i (from the Gaussian's screen-space
# errors: centre, covariance, opacity) moves the pixel by |d pixel / d alpha_i| alpha_i rho_i. Gradients add the
# backward recurrences (~6K roundings), the sum over the Gaussian's P pixels (2 P U) and the chain rule back to
# the parameters.


def _mat(abc: torch.Tensor) -> torch.Tensor:
    """(..., 3) a, b, c -> (..., 2, 2) [[a, b], [b, c]]."""
    a, b, c = abc.unbind(-1)
    return torch.stack([a, b, b, c], -1).reshape(abc.shape[:-1] + (2, 2))


def _vec(m: torch.Tensor) -> torch.Tensor:
    """(..., 2, 2) gradient with respect to a symmetric matrix -> with respect to its a, b, c."""
    return torch.stack([m[..., 0, 0], m[..., 0, 1] + m[..., 1, 0], m[..., 1, 1]], -1)


@dataclasses.dataclass
class _Screen:
    """Per Gaussian (float64): the reference's screen-space values and bounds on |native - reference| for each."""

    means2d: torch.Tensor  # (N, 2)
    conics: torch.Tensor  # (N, 3) a, b, c of the inverse 2D covariance
    opacities: torch.Tensor  # (N,) as blended (times the compensation when antialiased)
    features: torch.Tensor  # (N, 4) colour and camera-space depth, as blended
    d_means2d: torch.Tensor  # (N, 2)
    d_cov2d: torch.Tensor  # (N, 3) a, b, c of the 2D covariance (low-pass included)
    kappa: torch.Tensor  # (N,) (ac + b^2) / (ac - b^2) of the 2D covariance: inverting it costs ~2 kappa U
    d_opacities: torch.Tensor  # (N,)
    d_features: torch.Tensor  # (N, 4)
    # For the magnitudes of the chain rule back to the parameters:
    cov2d: torch.Tensor  # (N, 3) a, b, c
    jac2d: torch.Tensor  # (N, 2, 3) |d means2d / d camera-space centre|
    cov_mag: torch.Tensor  # (N, 3, 3) magnitude of the camera-space covariance's products
    colour_slope: torch.Tensor  # (N, 3, 3) magnitude of d colour / d direction
    d_basis: torch.Tensor  # (N, bases) of the SH basis values (the coefficients' gradients are basis * dL/dcolour)
    radius_ambiguous: torch.Tensor  # (N,) the radii may differ (no pair does: beyond 3.33 sigma alpha < 1/255)
    near_ambiguous: torch.Tensor  # (N,) culled by the near plane on one side only
    clamp_ambiguous: torch.Tensor  # (N, 3) colour within its error of the clamp at 0: its gradient may be cut
    activated: ActivatedGaussians  # float64
    compensation: torch.Tensor  # (N,)


def _screen(gaussians: Gaussians, camera: Camera, sh_degree: int, antialiased: bool) -> _Screen:
    a = gaussians.activated().detach()
    a = dataclasses.replace(a, **{k: v.double() for k, v in a.as_dict().items()})
    means, quats, scales, opac, sh = a.means, a.quats, a.scales, a.opacities, a.sh
    viewmat, K = (t.double() for t in camera_tensors(camera, torch.device("cpu")))
    R, t = viewmat[:3, :3], viewmat[:3, 3]
    f = K.diagonal()[:2]
    proj = project(means, covariance_3d(quats, scales), viewmat, K, camera.width, camera.height)
    # Camera-space centre R p + t: a length-3 dot product (3U of |R||p| per side), then + t (U of the result).
    pc = means @ R.T + t
    d_pc = 2 * U * (3 * means.abs() @ R.abs().T + pc.abs())
    xy, z, d_xy, d_z = pc[:, :2], pc[:, 2:], d_pc[:, :2], d_pc[:, 2:]
    # f x / z + c: 2U of f x / z and U of the result per side, and the centre's error through d/dx and d/dz.
    d_means2d = f * (d_xy + (xy / z).abs() * d_z) / z + 2 * U * (2 * (f * xy / z).abs() + proj.means2d.abs())
    # Camera-space covariance (W R_q S)(W R_q S)^T: up to three 3x3 products per side, 12U of their magnitudes.
    m = R.abs() @ (quat_to_rotmat(quats).abs() * scales[:, None, :])
    cov = m @ m.transpose(-1, -2)
    # 2D covariance J cov J^T, J = [[fx/z, 0, -fx x/z^2], [0, fy/z, -fy y/z^2]] (x/z clamped to the field of view,
    # which only lowers |J|): 6U per side of its magnitude, and J inherits the centre's error.
    rows, e_z = torch.eye(2, 3, dtype=cov.dtype), torch.tensor([0.0, 0.0, 1.0], dtype=cov.dtype)
    J = (f / z)[..., None] * rows + (f * xy.abs() / z**2)[..., None] * e_z
    dJ = ((f * d_z / z**2)[..., None] * rows + (f * (d_xy / z**2 + 2 * xy.abs() * d_z / z**3))[..., None] * e_z
          + 6 * U * J)
    spread = dJ @ cov @ J.transpose(-1, -2)
    ca, cb, cc = proj.conics.unbind(-1)
    cov2d = torch.stack([cc, -cb, ca], -1) / (ca * cc - cb * cb)[:, None]
    d_cov2d = (_vec(J @ (24 * U * cov) @ J.transpose(-1, -2) + 12 * U * (J @ cov @ J.transpose(-1, -2)) + 2 * spread)
               * torch.tensor([1.0, 0.5, 1.0], dtype=cov.dtype) + 2 * U * cov2d.abs())
    A_a, A_b, A_c = cov2d.unbind(-1)
    kappa = (A_a * A_c + A_b**2) / (A_a * A_c - A_b**2)
    if antialiased:
        # compensation = sqrt(det(cov2d - eps I) / det(cov2d)), each det 3 roundings of ac and b^2 per side.
        da, db, dc = d_cov2d.unbind(-1)
        a0, c0 = A_a - EPS2D, A_c - EPS2D
        det0, det = a0 * c0 - A_b**2, A_a * A_c - A_b**2
        d_det0 = c0.abs() * da + a0.abs() * dc + 2 * A_b.abs() * db + 4 * U * ((a0 * c0).abs() + A_b**2)
        d_det = A_c.abs() * da + A_a.abs() * dc + 2 * A_b.abs() * db + 4 * U * ((A_a * A_c).abs() + A_b**2)
        ratio = det0 / det
        d_ratio = (d_det0 + ratio.abs() * d_det) / det + 4 * U * ratio.abs()
        comp = proj.compensation
        # sqrt is concave: within min(d / (2 sqrt), sqrt(d)) for an error d of its argument.
        d_comp = torch.minimum(d_ratio / (2 * comp), d_ratio.sqrt()) + 4 * U * comp
        d_opac, opac = opac * d_comp + 4 * U * opac * comp, opac * comp
    else:
        d_opac = torch.zeros_like(opac)  # rasterize() activates the opacities once, for both
    # Colour sum_k basis_k(dir) coeff_k + 0.5. Evaluating a basis polynomial rounds like moving dir by 4U per
    # component and scaling the value by 1 + 4U (a few products per monomial); dir = p - campos carries campos'
    # error (-R^T t natively, an inverse of viewmat in the reference) and the normalisation's.
    bases = (sh_degree + 1) ** 2
    campos = torch.linalg.inv(viewmat)[:3, 3]
    with torch.enable_grad():
        dirs = (means - campos).requires_grad_()
        basis = sh_basis(sh_degree, torch.nn.functional.normalize(dirs, dim=-1))
        slope = torch.zeros(len(means), bases, 3, dtype=means.dtype)  # |d basis_k / d dir|
        for k in range(1, bases if basis.requires_grad else 0):
            slope[:, k] = torch.autograd.grad(basis[:, k].sum(), dirs, retain_graph=True)[0].abs()
    basis, dirs = basis.detach(), dirs.detach()
    d_dirs = (8 * U * (R.abs().T @ t.abs()) + 2 * U * (means.abs() + campos.abs())
              + 8 * U * dirs.norm(dim=-1, keepdim=True))
    d_basis = 2 * ((slope * (d_dirs + 4 * U * dirs.abs())[:, None]).sum(-1) + 4 * U * basis.abs())
    coeffs = sh[:, :bases]
    raw = (basis[..., None] * coeffs).sum(1) + 0.5
    # ... then a product and a sum per coefficient: 2 (bases + 1) U of the magnitudes, per side.
    d_colour = ((d_basis[..., None] * coeffs.abs()).sum(1)
                + 4 * (bases + 1) * U * (0.5 + (basis.abs()[..., None] * coeffs.abs()).sum(1)))
    # Radii ceil(3.33 sqrt(a)) flip where 3.33 sqrt(a) lies within its error of an integer; culling where the
    # centre +- radius lies within its error of the image's edge, or the depth of the near plane.
    r = RADIUS_SIGMAS * cov2d[:, ::2].clamp(min=0).sqrt()
    d_r = RADIUS_SIGMAS**2 * d_cov2d[:, ::2] / (2 * r) + 4 * U * r
    size = torch.tensor([camera.width, camera.height], dtype=r.dtype)
    near_ambiguous = (z[:, 0] - NEAR_PLANE).abs() <= d_z[:, 0]
    edges = torch.cat([proj.means2d + r.ceil(), proj.means2d - r.ceil() - size], -1).abs()
    radius_ambiguous = (near_ambiguous | ((r - r.round()).abs() <= d_r).any(-1)
                        | (edges <= d_means2d.repeat(1, 2)).any(-1))
    visible = (proj.radii > 0).all(-1)

    def clean(x: torch.Tensor) -> torch.Tensor:  # culled Gaussians are never blended
        return torch.where(visible.reshape((-1,) + (1,) * (x.dim() - 1)), x, 0.0).nan_to_num(0.0, 0.0, 0.0)

    return _Screen(proj.means2d, proj.conics, opac, torch.cat([raw.clamp(min=0), z], -1), clean(d_means2d),
                   clean(d_cov2d), clean(kappa), clean(d_opac), clean(torch.cat([d_colour, d_z], -1)), clean(cov2d),
                   clean(J), clean(cov), coeffs.abs().transpose(1, 2) @ slope, d_basis, radius_ambiguous,
                   near_ambiguous, raw.abs() <= d_colour, a, proj.compensation)


class _Bounds:
    """Bounds on |native - reference| for every pixel, weight sum and gradient entry of one render; and the
    ambiguous pixels (`bad_pixels`) with the Gaussians blended into them (`bad_gaussians`)."""

    def __init__(self, gaussians: Gaussians, camera: Camera, *, sh_degree: int | None = None,
                 antialiased: bool = False, background=(0.0, 0.0, 0.0)):
        self.gaussians, self.camera, self.antialiased = gaussians, camera, antialiased
        self.degree = gaussians.sh_degree if sh_degree is None else min(sh_degree, gaussians.sh_degree)
        self.background = torch.tensor(background, dtype=torch.float64)
        H, W = camera.height, camera.width
        s = self.screen = _screen(gaussians, camera, self.degree, antialiased)
        # The reference's candidate pairs, in a box widened a little: the native side may blend pairs at its edge.
        gauss, pixels, raw, alpha32, power32, _ = _pairs(gaussians, camera, antialiased, widen=1.001)
        # Per pair, bounds need only a few digits: float32 (float64 where sums run over the whole image).
        mx, my, a, b, c, dmx, dmy, da, db, dc, kappa, o, do, vx, vy = torch.cat([
            s.means2d, s.conics, s.d_means2d, s.d_cov2d, s.kappa[:, None], s.opacities[:, None],
            s.d_opacities[:, None], s.cov2d[:, ::2]], -1).float()[gauss].unbind(-1)
        dx = (pixels % W).float() + 0.5 - mx
        dy = torch.div(pixels, W, rounding_mode="floor").float() + 0.5 - my
        power = -0.5 * (a * dx * dx + c * dy * dy) - b * dx * dy
        terms = 0.5 * (a * dx * dx).abs() + 0.5 * (c * dy * dy).abs() + (b * dx * dy).abs()
        # d power / d means2d = C (pixel - mean) =: (gx, gy). An error dA of the 2D covariance moves power by at
        # most |g|^T dA |g| / 2; inverting it scales the conic by (1 + ~2 kappa U) per side; evaluating power
        # (and dx, dy) costs 7U of its terms per side.
        gx, gy = a * dx + b * dy, b * dx + c * dy
        ax, ay = gx.abs(), gy.abs()
        d_power = (ax * dmx + ay * dmy + 0.5 * (ax * ax * da + 2 * ax * ay * db + ay * ay * dc)
                   + (4 * kappa + 4) * U * power.abs() + 14 * U * terms)
        # Error of ln(o exp(power)): its power's and opacity's, and exp and the product (< 2 ulp natively). As a
        # factor on alpha it is exact, so the relative error of alpha is expm1 of it.
        eps = d_power + do / o + 8 * U
        clamped = raw > ALPHA_MAX  # 0.99 exactly on both sides: no error, no gradient
        alpha = torch.where(clamped, ALPHA_MAX, o * torch.exp(power))
        rho = torch.where(clamped, 0.0, torch.expm1(eps))

        # Ambiguous pixels. A pair's alpha within its error of 1/255 or 0.99, or its power of 0 (alpha jumps to
        # 0 above). The reference's box edge, placed within ~4U of (|mean| + radius) per side, is where alpha =
        # 1/255: pairs that near it may be blended on one side only.
        edge = 8 * U * (ax * (mx.abs() + RADIUS_SIGMAS * vx.sqrt()) + ay * (my.abs() + RADIUS_SIGMAS * vy.sqrt()))
        log_raw = raw.log()
        flag = (((log_raw - math.log(ALPHA_MIN)).abs() <= eps + edge) | ((log_raw - math.log(ALPHA_MAX)).abs() <= eps)
                | (power32 > -d_power))
        bad = torch.zeros(H * W, dtype=torch.bool)
        bad[pixels[flag | s.near_ambiguous[gauss]]] = True
        kept = (alpha32 >= ALPHA_MIN).nonzero()[:, 0]
        kept = kept[_by_pixel(pixels[kept])]  # by pixel, nearest first (pairs come grouped by Gaussian by depth)
        p_k = pixels[kept]
        start = _starts(p_k)
        log_after = _segment_cumsum(torch.log1p(-alpha32[kept]).double(), start)
        alive = log_after >= math.log(T_MIN)
        # The transmittance cut-off: log T after the pair within its error (the alphas' errors so far, 2U per
        # native factor, ~12U for the reference's sum of log1p) of log T_MIN.
        t_err = alpha[kept] * rho[kept] / (1 - alpha[kept])
        rank = (torch.arange(len(kept)) - start + 1).float()
        bad[p_k[(log_after - math.log(T_MIN)).abs() <= _segment_cumsum(t_err, start) + (2 * rank + 14) * U]] = True
        # Two Gaussians whose depths lie within one side's rounding (half of d_depth) may come in either order.
        z, dz = s.features[gauss[kept], 3], s.d_features[gauss[kept], 3]
        tie = (p_k[1:] == p_k[:-1]) & (z[1:] - z[:-1] <= (dz[1:] + dz[:-1]) / 2)
        bad[p_k[1:][tie]] = True
        self.bad_gaussians = torch.zeros(len(gaussians), dtype=torch.bool)
        self.bad_gaussians[gauss[bad[pixels]]] = True
        self.bad_pixels = bad.reshape(H, W)

        # The blended pairs, by pixel, nearest first.
        blended = kept[alive]
        self.gauss, self.pixels = gauss[blended], pixels[blended]
        self.start = _starts(self.pixels)
        self.rank = (torch.arange(len(blended)) - self.start + 1).float()
        self.count = self._pixel_sum(torch.ones(len(blended)))  # K, per pixel
        self.dx, self.dy, self.gx, self.gy = dx[blended], dy[blended], gx[blended], gy[blended]
        self.alpha, self.rho, self.clamped = alpha[blended], rho[blended], clamped[blended]
        log_t = torch.log1p(-self.alpha)
        self.T = torch.exp(_segment_cumsum(log_t, self.start) - log_t).float()
        self.w = self.alpha * self.T
        self.F, self.dF = s.features.float()[self.gauss], s.d_features.float()[self.gauss]
        wF = self.w[:, None] * self.F
        self.total = self._pixel_sum(wF)  # (H W, 4)
        self.A = self._pixel_sum(self.w)
        self.wF_after = self._after(wF)
        # Relative error of the factor 1 - alpha_j: summed, it bounds that of a T or a partial sum.
        self.t_err = self.alpha * self.rho / (1 - self.alpha)
        self.t_err_before = (_segment_cumsum(self.t_err, self.start) - self.t_err).float()
        self.t_err_pixel = self._pixel_sum(self.t_err)

    def _pixel_sum(self, values: torch.Tensor) -> torch.Tensor:
        n = self.camera.width * self.camera.height
        return torch.zeros((n,) + values.shape[1:], dtype=torch.float64).index_add_(0, self.pixels, values.double())

    def _gauss_sum(self, values: torch.Tensor) -> torch.Tensor:
        n = len(self.gaussians)
        return torch.zeros((n,) + values.shape[1:], dtype=torch.float64).index_add_(0, self.gauss, values.double())

    def _after(self, values: torch.Tensor) -> torch.Tensor:
        """Per pair, the sum of `values` over the pairs behind it in its pixel."""
        return (self._pixel_sum(values)[self.pixels] - _segment_cumsum(values, self.start)).float()

    def images(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Bounds for rgb (H, W, 3), alpha (H, W) and depth (H, W)."""
        H, W = self.camera.height, self.camera.width
        d_alpha = self.T[:, None] * self.F - self.wF_after / (1 - self.alpha)[:, None]  # d pixel / d alpha_i
        K = self.count.float()[self.pixels]
        per = (U * (2 * self.rank + 2 * K + 14)[:, None] * (self.w[:, None] * self.F.abs())
               + d_alpha.abs() * (self.alpha * self.rho)[:, None] + self.w[:, None] * self.dF)
        b_F = self._pixel_sum(per)
        A, T = self.A, 1 - self.A
        # alpha: 1 - (a product of K factors) natively, a sum of K weights in the reference; d alpha / d alpha_i =
        # T / (1 - alpha_i).
        b_A = U * ((2 * self.count + 1) * T + (self.count + 14) * A) + T * self.t_err_pixel
        bg = self.background.abs()
        b_rgb = b_F[:, :3] + bg * b_A[:, None] + 4 * U * (self.total[:, :3].abs() + T[:, None] * bg)
        depth = self.total[:, 3] / A.clamp(min=1e-10)
        b_depth = (b_F[:, 3] + depth.abs() * b_A) / A.clamp(min=1e-10) + 4 * U * depth.abs()
        return b_rgb.reshape(H, W, 3), b_A.reshape(H, W), b_depth.reshape(H, W)

    def weight_sums(self) -> torch.Tensor:
        """(N,) bounds for the weight sums: w_i as in `images`, summed over the Gaussian's P pixels in any order."""
        per = U * (2 * self.rank + 13) * self.w + self.alpha * self.rho * self.T + self.w * self.t_err_before
        P = self._gauss_sum(torch.ones_like(self.w))
        return self._gauss_sum(per) + 2 * P * U * self._gauss_sum(self.w)

    def gradients(self, cot) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Bounds for the gradients (GRAD_NAMES and absgrad) of sum(cot * (rgb, alpha, depth)), and which
        Gaussians no compared pixel blends (their gradients are exactly 0 natively; the reference's are residue
        of its float64 prefix sums over all pairs)."""
        H, W = self.camera.height, self.camera.width
        s, g = self.screen, self.gauss
        rgb_c, alpha_c, depth_c = (c.reshape(H * W, -1).double() for c in cot)
        A = self.A.clamp(min=1e-10)
        depth = self.total[:, 3] / A
        # Cotangents of each pixel's sums of w f and of w (the background and depth = D / A folded in).
        c_F = torch.cat([rgb_c, depth_c / A[:, None]], -1).float()[self.pixels]
        c_A = (alpha_c[:, 0] - rgb_c @ self.background - depth_c[:, 0] * depth / A).float()[self.pixels]
        keep, K = 1 - self.alpha, self.count.float()[self.pixels]
        # dL / d alpha_i = u_i + v_i (colour/depth part, alpha part): magnitude (each part's absolute value) and
        # error. Rounding: the native backward rebuilds T_i by dividing the final T back and sums the K terms
        # behind, ~6K roundings over both sides. The other alphas' errors, to first order: u_i scales by
        # 1 / (1 - alpha_j) for j < i and moves by u_j for j > i; v_i scales by 1 / (1 - alpha_j) for all j != i.
        after = self._after(self.w[:, None] * torch.cat([self.F.abs(), self.dF], -1))
        u = (c_F * (self.T[:, None] * self.F - self.wF_after / keep[:, None])).sum(-1)
        v = c_A * (1 - self.A).float()[self.pixels] / keep
        mag_va = (c_F.abs() * (self.T[:, None] * self.F.abs() + after[:, :4] / keep[:, None])).sum(-1) + v.abs()
        err_va = (mag_va * (6 * K + 24) * U + u.abs() * self.t_err_before
                  + self._after(u.abs() * self.alpha * self.rho) / keep
                  + v.abs() * (self.t_err_pixel.float()[self.pixels] - self.t_err)
                  + (c_F.abs() * (self.T[:, None] * self.dF + after[:, 4:] / keep[:, None])).sum(-1))
        # dL / d power = alpha dL / d alpha (nothing where alpha is clamped).
        free = (~self.clamped).double()
        mag_vp = free * self.alpha * mag_va
        err_vp = free * self.alpha * (err_va + self.rho * mag_va) + U * mag_vp
        # Per pair, magnitude and error of its share of dL / d(means2d, conic, opacity, features). g = C d moves
        # by |C| dm, |C| dA |g|, the conic's relative error, and 4U of its terms per side.
        a, b, c, dmx, dmy, da, db, dc, kappa, o = torch.cat([
            s.conics.abs(), s.d_means2d, s.d_cov2d, s.kappa[:, None], s.opacities[:, None]], -1).float()[g].unbind(-1)
        ax, ay, x, y = self.gx.abs(), self.gy.abs(), self.dx.abs(), self.dy.abs()
        ex, ey = dmx + 4 * U * x + da * ax + db * ay, dmy + 4 * U * y + db * ax + dc * ay  # d(pixel - mean) + dA g
        ga = torch.stack([ax, ay], -1)
        d_grad = torch.stack([a * ex + b * ey, b * ex + c * ey], -1) + ((4 * kappa + 4) * U)[:, None] * ga
        quad = torch.stack([0.5 * x * x, x * y, 0.5 * y * y], -1)
        d_quad = torch.stack([x * dmx, x * dmy + y * dmx, y * dmy], -1)
        # w_i in the backward: T rebuilt from the final T (4K U over both sides) and the alphas' errors.
        d_w = self.w * ((4 * K + 16) * U + self.rho + self.t_err_before)
        shares = {
            "means2d": (mag_vp[:, None] * ga, err_vp[:, None] * ga + mag_vp[:, None] * d_grad),
            "conic": (mag_vp[:, None] * quad, err_vp[:, None] * quad + mag_vp[:, None] * (d_quad + 2 * U * quad)),
            "opacity": ((mag_vp / o)[:, None], (err_vp / o)[:, None]),
            "features": (c_F.abs() * self.w[:, None], c_F.abs() * (d_w + U * self.w)[:, None]),
        }
        P = self._gauss_sum(torch.ones_like(self.w))[:, None]
        mag = {k: self._gauss_sum(m) for k, (m, _) in shares.items()}
        err = {k: self._gauss_sum(e) + 2 * P * U * mag[k] for k, (_, e) in shares.items()}
        err["features"][:, :3] += s.clamp_ambiguous * mag["features"][:, :3]  # the clamp may cut it on one side
        # To the 2D covariance: dL/dA = -C (dL/dC) C, with the conic's own error dC = C dA C + (2 kappa + 2) U C.
        Cg = _mat(s.conics).abs()
        dC = Cg @ _mat(s.d_cov2d) @ Cg + ((4 * s.kappa + 4) * U)[:, None, None] * Cg
        half = torch.tensor([1.0, 0.5, 1.0], dtype=torch.float64)  # dL/dC as a symmetric matrix
        mag_C, err_C = _mat(mag["conic"] * half), _mat(err["conic"] * half)
        mag_A = _vec(Cg @ mag_C @ Cg)
        err_A = _vec(Cg @ err_C @ Cg + 2 * dC @ mag_C @ Cg) + 4 * U * mag_A
        screen_mag = torch.cat([mag["means2d"], mag_A, mag["opacity"], mag["features"]], -1)
        screen_err = torch.cat([err["means2d"], err_A, err["opacity"], err["features"]], -1)
        # To the parameters: the screen-space errors through the reference's Jacobian, plus the chain rule's own
        # rounding (~32 roundings deep per side) of the magnitudes it multiplies.
        chain = self._chain_magnitudes(mag["means2d"], mag_A, mag["opacity"][:, 0], mag["features"])
        bounds = {}
        for name, jac in self._jacobian().items():
            flat = jac.reshape(*jac.shape[:2], math.prod(jac.shape[2:]))
            magnitude = torch.einsum("qnk,nq->nk", flat, screen_mag).reshape(jac.shape[1:])
            magnitude = torch.maximum(magnitude, chain[name]) if name in chain else magnitude
            bounds[name] = torch.einsum("qnk,nq->nk", flat, screen_err).reshape(jac.shape[1:]) + 64 * U * magnitude
        # The SH coefficients' gradients are basis_k(dir) dL/dcolour: the basis values' own errors count too.
        d_sh = s.d_basis[:, :, None] * mag["features"][:, None, :3]
        bounds["sh0"] = bounds["sh0"] + d_sh[:, :1]
        bounds["shN"][:, : d_sh.shape[1] - 1] += d_sh[:, 1:]
        # absgrad sums |per-pixel means2d gradient|: | sum |x_i| - sum |y_i| | <= sum |x_i - y_i|.
        bounds["means2d"] = bounds["absgrad"] = err["means2d"]
        return bounds, screen_mag.sum(-1) == 0

    def _chain_magnitudes(self, m_means2d, m_cov2d, m_opacity, m_features) -> dict[str, torch.Tensor]:
        """The chain rule from screen space back to means, quats and scales with every term's absolute value: what
        its roundings apply to. (|J|^T m alone misses terms that cancel, as for the rotation of an isotropic
        Gaussian, whose float32 gradient is rounding noise of such terms.)"""
        s, a = self.screen, self.screen.activated
        viewmat, K = (t.double() for t in camera_tensors(self.camera, torch.device("cpu")))
        W_abs, f = viewmat[:3, :3].abs(), K.diagonal()[:2]
        v_cov2d = _mat(m_cov2d * torch.tensor([1.0, 0.5, 1.0], dtype=torch.float64))
        if self.antialiased:  # the compensation's gradient joins the 2D covariance's
            A_a, A_b, A_c = s.cov2d.unbind(-1)
            det = A_a * A_c - A_b**2
            det0 = (A_a - EPS2D) * (A_c - EPS2D) - A_b**2
            v_comp = (m_opacity * a.opacities / (2 * s.compensation) / det**2).nan_to_num(0.0, 0.0, 0.0)  # culled: 0/0
            v_cov2d = v_cov2d + _mat(v_comp[:, None] * torch.stack([
                (A_c - EPS2D).abs() * det + det0.abs() * A_c.abs(), A_b.abs() * (det + det0.abs()),
                (A_a - EPS2D).abs() * det + det0.abs() * A_a.abs()], -1))
        J = s.jac2d
        v_cov_c = J.transpose(-1, -2) @ v_cov2d @ J
        v_sigma = W_abs.T @ v_cov_c @ W_abs
        R_q = quat_to_rotmat(a.quats).abs()
        v_M = 2 * v_sigma @ (R_q * a.scales[:, None, :])
        v_R = v_M * a.scales[:, None, :]
        # Each entry of R(q) moves by at most 4 per unit of q; the raw quaternion's normalisation by 2 / |q|.
        quats = (8 * v_R.sum((-1, -2)) / self.gaussians.quats.detach().double().norm(dim=-1))[:, None].expand(-1, 4)
        scales = a.scales * (v_M * R_q).sum(-2)  # log-scales: d scale / d log = scale
        # Camera-space centre: through means2d, depth and the Jacobian J (d J / d(x, z) ~ f / z^2, 2 f |x| / z^3).
        v_J = 2 * v_cov2d @ J @ s.cov_mag
        pc = a.means @ viewmat[:3, :3].T + viewmat[:3, 3]
        xy, z = pc[:, :2].abs(), pc[:, 2:]
        v_xy = m_means2d * f / z + v_J[:, :, 2] * f / z**2
        v_z = ((m_means2d * f * xy).sum(-1, keepdim=True) / z**2 + m_features[:, 3:]
               + (v_J[:, 0, :1] * f[0] + v_J[:, 1, 1:2] * f[1]) / z**2
               + 2 * (v_J[:, :, 2] * f * xy).sum(-1, keepdim=True) / z**3)
        # ... and the colour, through the direction from the camera.
        v_dir = (s.colour_slope.transpose(-1, -2) @ m_features[:, :3, None])[..., 0]
        means = torch.cat([v_xy, v_z], -1) @ W_abs + v_dir
        return {"means": means, "quats": quats, "scales": scales}

    def _jacobian(self) -> dict[str, torch.Tensor]:
        """|d q / d parameter| (10, N, ...) per raw parameter tensor, q = (means2d, 2D covariance a b c, opacity,
        colour, depth) as the reference computes them, in float64."""
        leaves = {k: v.detach().double().requires_grad_() for k, v in self.gaussians.as_dict().items()}
        a = Gaussians.from_dict(leaves).activated()
        viewmat, K = (t.double() for t in camera_tensors(self.camera, torch.device("cpu")))
        proj = project(a.means, covariance_3d(a.quats, a.scales), viewmat, K, self.camera.width, self.camera.height)
        ca, cb, cc = proj.conics.unbind(-1)
        opac = a.opacities * proj.compensation if self.antialiased else a.opacities
        # Unclamped: where one side clamps a colour at 0 and the other does not, the clamp is ambiguous.
        colour = eval_sh(self.degree, a.means - torch.linalg.inv(viewmat)[:3, 3], a.sh) + 0.5
        q = torch.cat([proj.means2d, torch.stack([cc, -cb, ca], -1) / (ca * cc - cb * cb)[:, None], opac[:, None],
                       colour, proj.depths[:, None]], -1)
        rows = [torch.autograd.grad(q[:, j].sum(), list(leaves.values()), retain_graph=True, allow_unused=True)
                for j in range(q.shape[1])]
        return {name: torch.stack([(r[i] if r[i] is not None else torch.zeros_like(leaf)).abs() for r in rows])
                .nan_to_num(0.0, 0.0, 0.0) for i, (name, leaf) in enumerate(leaves.items())}


def _max(t: torch.Tensor) -> float:
    return float(t.max()) if t.numel() else 0.0


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
    bounds: dict  # output name -> bound on |native - reference|, shaped like it; NaN where not compared


def compare(gaussians: Gaussians, camera: Camera, case: str, *, seed: int = 0, device=torch.device("cpu"),
            **kw) -> Compared:
    """Render with both backends (native on `device`), send the same cotangents back, assert every output and
    gradient entry is within its bound; return both."""
    H, W = camera.height, camera.width
    if device.type != "cpu" or native_arch() != "native":
        case = f"{case} ({device.type if device.type != 'cpu' else native_arch()})"
    model = _Bounds(gaussians, camera, **kw)
    ok = ~model.bad_pixels
    gen = torch.Generator().manual_seed(seed)
    rgb_c = torch.randn(H, W, 3, generator=gen, dtype=torch.float64) * ok[..., None]
    alpha_c = torch.randn(H, W, generator=gen, dtype=torch.float64) * ok
    depth_noise = torch.randn(H, W, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        hit = rasterize(gaussians, camera, backend="torch", **kw).alpha > 0.5
    cot = (rgb_c, alpha_c, depth_noise * (hit & ok))
    ref, ref_g = _render(gaussians, camera, "torch", cot, **kw)
    nat, nat_g = _render(gaussians, camera, "native", cot, device, **kw)

    assert nat.rgb.shape == (H, W, 3) and nat.alpha.shape == (H, W) and nat.depth.shape == (H, W)
    for name, t in [("rgb", nat.rgb), ("alpha", nat.alpha), ("depth", nat.depth), ("means2d", nat.means2d),
                    ("weight_sums", nat.weight_sums), *nat_g.items()]:
        assert torch.isfinite(t).all(), f"{case}: non-finite native {name}"
    same = ~model.screen.radius_ambiguous
    assert torch.equal(nat.radii[same], ref.radii[same]), f"{case}: radii differ"
    assert nat.radii.dtype == torch.int32
    # Far, dense backgrounds tie in depth within float32 rounding; the comparison must still cover the image.
    assert ok.float().mean() > 0.95, f"{case}: too many ambiguous pixels ({int(model.bad_pixels.sum())})"
    nan = torch.tensor(float("nan"), dtype=torch.float64)
    rgb, alpha, depth = model.images()
    grads, untouched = model.gradients(cot)
    for name, bound in grads.items():
        assert not bound.isnan().any(), f"{case}: NaN in the bound for {name}"
        got = nat.absgrad if name == "absgrad" else nat_g[name]
        assert (got[untouched] == 0).all(), f"{case}: a Gaussian no compared pixel blends has a gradient ({name})"
        grads[name] = torch.where(untouched.reshape((-1,) + (1,) * (bound.dim() - 1)), nan, bound)
    bounds = {"rgb": torch.where(ok[..., None], rgb, nan), "alpha": torch.where(ok, alpha, nan),
              "depth": torch.where(ok, depth, nan),
              "weight_sums": torch.where(model.bad_gaussians, nan, model.weight_sums()), **grads}
    result = Compared(ref, nat, ref_g, nat_g, model.bad_pixels, cot, bounds)
    _check(case, result)
    return result


def _check(case: str, result: Compared, note: bool = True) -> None:
    """Every compared entry within its bound; notes the largest error as a fraction of its bound."""
    ref, nat = result.ref, result.nat
    pairs = {name: (getattr(ref, name), getattr(nat, name)) for name in ("rgb", "alpha", "depth", "weight_sums")}
    pairs.update({name: (result.ref_grads[name], result.nat_grads[name]) for name in GRAD_NAMES})
    for name, (expected, got) in pairs.items():
        used = _within(case, name, expected, got, result.bounds[name])
        if note:
            _note(case, name, used)


def _within(case: str, name: str, expected: torch.Tensor, got: torch.Tensor, bound: torch.Tensor) -> float:
    """The largest error as a fraction of its bound; raises where it is over 1. NaN bounds: not compared."""
    assert got.shape == expected.shape, f"{case}: {name} has shape {tuple(got.shape)}"
    err = (got.detach().double() - expected.detach().double()).abs()
    used = torch.where(err > 0, err / bound, 0.0).nan_to_num(0.0, posinf=math.inf)
    if _max(used) > 1:
        at = np.unravel_index(int(used.argmax()), used.shape)
        raise AssertionError(f"{case}: {name}{list(map(int, at))} differs by {float(err[at]):.3g}, beyond its bound "
                             f"{float(bound[at]):.3g}")
    return _max(used)


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
def test_garden_cloud_matches_reference(garden, index, antialiased, background, device):
    gauss, cameras = garden
    result = compare(gauss, cameras[index], f"garden cam{index}{' aa' if antialiased else ''}", seed=index,
                     device=device, antialiased=antialiased, background=background)
    assert int((result.nat.radii > 0).all(-1).sum()) > 1000
    assert float(result.nat.alpha.detach().mean()) > 0.5
    # absgrad sums |per-pixel dL/dmeans2d|, so it bounds the summed gradient's magnitude.
    absgrad, grad = result.nat.absgrad, result.nat_grads["means2d"].abs()
    assert absgrad is not None and absgrad.shape == grad.shape
    assert bool((absgrad >= grad - 1e-6 * float(grad.max())).all())
    assert bool((absgrad[(result.nat.radii == 0).any(-1)] == 0).all())


# ---------------------------------------------------------------- 2. trained splats


# The INRIA model has needle-like Gaussians (scales 108 x 2.4 x 13 at depth 1000): float32 represents their 2D
# covariance only to ~U of its large eigenvalue, so their alphas and gradients get the widest bounds.
TRAINED = [("mipsplat_donut_sh0", "fused.ply", 6000), ("inria_ply_sh3_9k", "point_cloud_iter7000.ply", 4000)]


def _trained(shared_datasets: Path, folder: str, filename: str, count: int) -> tuple[Gaussians, Camera]:
    from splatkit.io.ply import load_ply

    path = shared_datasets / folder / filename
    if not path.is_file():
        pytest.skip(f"{path} not found")
    gauss = _subsample(load_ply(path), count)
    return gauss, _look_at(gauss.means)


@pytest.mark.parametrize("device", PORTABLE_TARGETS, indirect=True)
@pytest.mark.parametrize("folder,filename,count", TRAINED)
def test_trained_splats_match_reference(shared_datasets, folder, filename, count, device):
    gauss, camera = _trained(shared_datasets, folder, filename, count)
    result = compare(gauss, camera, folder, device=device)
    assert int((result.nat.radii > 0).all(-1).sum()) > 0.5 * len(gauss)
    assert float(result.nat.alpha.detach().max()) > 0.5


# ---------------------------------------------------------------- 3. edge cases


def test_zero_gaussians(device):
    camera = _camera(20, 12, 15.0)
    empty = Gaussians(torch.zeros(0, 3), torch.zeros(0, 3), torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, 1, 3),
                      torch.zeros(0, 15, 3))
    result = compare(empty, camera, "zero gaussians", device=device, background=(0.2, 0.3, 0.4))
    assert torch.equal(result.nat.rgb, torch.tensor([0.2, 0.3, 0.4]).expand(12, 20, 3))
    assert torch.equal(result.nat.alpha, torch.zeros(12, 20)) and torch.equal(result.nat.depth, torch.zeros(12, 20))
    assert result.nat.radii.shape == (0, 2) and result.nat.weight_sums.shape == (0,)


def test_one_by_one_image(device):
    camera = _camera(1, 1, 2.0, seed=1)
    gauss = _synthetic(12, camera, seed=1)
    result = compare(gauss, camera, "1x1", device=device)
    assert int((result.nat.radii > 0).all(-1).sum()) > 3 and float(result.nat.alpha.detach()) > 0.1


@pytest.mark.parametrize("width,height", [(37, 23), (16, 16), (17, 33)])
def test_sizes_not_multiple_of_tile(width, height, device):
    camera = _camera(width, height, 0.9 * width, seed=width)
    gauss = _synthetic(60, camera, seed=width)
    compare(gauss, camera, f"{width}x{height}", seed=height, device=device)


@pytest.mark.parametrize("device", PORTABLE_TARGETS, indirect=True)
def test_behind_camera_and_near_plane_straddlers(device):
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
        result = compare(gauss, camera, f"behind/near{' aa' if antialiased else ''}", device=device,
                         antialiased=antialiased)
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


def test_huge_gaussian_covering_the_image(device):
    camera = _camera(37, 23, 30.0, seed=4)
    small = _synthetic(30, camera, seed=4, z_range=(1.0, 2.0))
    huge = Gaussians(_to_world(torch.tensor([[0.1, -0.05, 3.0]]), camera), torch.log(torch.tensor([[8.0, 6.0, 5.0]])),
                     torch.tensor([[0.9, 0.1, 0.2, -0.3]]), torch.tensor([0.5]), torch.full((1, 1, 3), 0.4),
                     torch.zeros(1, 15, 3))
    gauss = Gaussians.from_dict({k: torch.cat([getattr(small, k), getattr(huge, k)]) for k in small.as_dict()})
    result = compare(gauss, camera, "huge gaussian", device=device)
    assert int(result.nat.radii[-1].min()) > 37
    assert float(result.nat.alpha.detach().min()) > 0.5  # the huge one alone covers every pixel


@pytest.mark.parametrize("antialiased", [False, True])
def test_degenerate_zero_scales(antialiased, device):
    camera = _camera(37, 23, 30.0, seed=5)
    gauss = _synthetic(30, camera, seed=5)
    scales = gauss.scales.clone()
    scales[:6] = -30.0  # points
    scales[6:12, 0] = -30.0  # flat discs
    scales[12:16, :2] = -30.0  # needles
    gauss.scales = scales
    result = compare(gauss, camera, f"zero scales{' aa' if antialiased else ''}", device=device,
                     antialiased=antialiased)
    assert (result.nat.radii[:6] > 0).all(-1).sum() >= 3


def test_unnormalised_quaternions_render_like_normalised(device):
    camera = _camera(37, 23, 30.0, seed=6)
    gauss = _synthetic(40, camera, seed=6)
    unit = Gaussians.from_dict({**gauss.as_dict(), "quats": torch.nn.functional.normalize(gauss.quats, dim=-1)})
    factors = torch.exp(torch.empty(40, 1).uniform_(-4, 4, generator=torch.Generator().manual_seed(0)))
    scaled = Gaussians.from_dict({**unit.as_dict(), "quats": unit.quats * factors})
    result = compare(scaled, camera, "unnormalised quats", device=device)
    cot = result.cot
    base, base_g = _render(unit, camera, "native", cot, device)
    torch.testing.assert_close(result.nat.rgb, base.rgb, atol=1e-6, rtol=0)
    torch.testing.assert_close(result.nat.alpha, base.alpha, atol=1e-6, rtol=0)
    # d/dq of f(q/|q|) is (tangential part of the unit-quaternion gradient) / |q|.
    expected = base_g["quats"] / factors
    assert _rel(expected, result.nat_grads["quats"]) < 1e-4
    for name in ("means", "scales", "opacities", "sh0", "shN"):
        assert _rel(base_g[name], result.nat_grads[name]) < 1e-4, name


@pytest.mark.parametrize("sh_degree", [0, 1, 2])
def test_lower_sh_degree_ignores_higher_bands(sh_degree, device):
    camera = _camera(37, 23, 30.0, seed=7)
    gauss = _synthetic(40, camera, seed=7, degree=3)
    result = compare(gauss, camera, f"sh degree {sh_degree} of 3", device=device, sh_degree=sh_degree)
    used = (sh_degree + 1) ** 2 - 1
    assert (result.nat_grads["shN"][:, used:] == 0).all()
    assert used == 0 or float(result.nat_grads["shN"][:, :used].abs().max()) > 0
    # The colours do not depend on the ignored bands.
    noisy = Gaussians.from_dict({**gauss.as_dict(), "shN": torch.cat([gauss.shN[:, :used],
                                                                      5 * torch.randn_like(gauss.shN[:, used:])], 1)})
    assert torch.equal(_render(noisy, camera, "native", None, device, sh_degree=sh_degree)[0].rgb, result.nat.rgb)


def test_background_colour(device):
    camera = _camera(37, 23, 30.0, seed=8)
    gauss = _synthetic(40, camera, seed=8)
    bg = (0.9, 0.2, 0.5)
    result = compare(gauss, camera, "background", device=device, background=bg)
    black, _ = _render(gauss, camera, "native", None, device)
    expected = black.rgb + (1 - black.alpha[..., None]) * torch.tensor(bg)
    torch.testing.assert_close(result.nat.rgb.detach(), expected, atol=1e-6, rtol=0)
    assert float((1 - result.nat.alpha.detach()).max()) > 0.1  # the background shows somewhere


def test_bounds_catch_small_errors():
    """The bounds have teeth: a 1e-3 error in any one pixel, or of 1e-2 of a gradient's largest entry in that
    entry, fails the comparison. Worst-case bounds on gradients are looser than on pixels: random cotangents make
    each gradient a sum of terms of both signs, smaller than the magnitudes its rounding scales with."""
    camera = _camera(17, 33, 0.9 * 17, seed=17)
    result = compare(_synthetic(60, camera, seed=17), camera, "17x33", seed=33)
    for name in ("rgb", "alpha"):
        bound = result.bounds[name].nan_to_num(-1.0)
        at = np.unravel_index(int(bound.argmax()), bound.shape)  # the loosest pixel
        got = getattr(result.nat, name).clone()
        got[at] += 1e-3
        with pytest.raises(AssertionError, match=f"{name}.* beyond its bound"):
            _check("perturbed", dataclasses.replace(result, nat=dataclasses.replace(result.nat, **{name: got})), False)
    for name in GRAD_NAMES:
        ref = result.ref_grads[name]
        at = np.unravel_index(int(ref.abs().argmax()), ref.shape)
        got = result.nat_grads[name].clone()
        got[at] += 1e-2 * float(ref.abs().max())
        with pytest.raises(AssertionError, match=f"{name}.* beyond its bound"):
            _check("perturbed", dataclasses.replace(result, nat_grads={**result.nat_grads, name: got}), False)


@pytest.mark.parametrize("device", PORTABLE_TARGETS, indirect=True)
def test_many_overlapping_gaussians_hit_the_transmittance_cutoff(device):
    camera = _camera(37, 23, 30.0, seed=9)
    gauss = _synthetic(300, camera, seed=9, scale_range=(0.2, 0.6))
    gauss.opacities = gauss.opacities.abs() + 1.0
    result = compare(gauss, camera, "saturated (T cutoff)", device=device)
    assert float(result.nat.alpha.detach().min()) > 0.99


# ---------------------------------------------------------------- 4. absgrad


def test_absgrad_is_sum_of_per_pixel_gradient_magnitudes(device):
    W, H = 7, 5
    camera = _camera(W, H, 6.0, seed=10)
    gauss = _synthetic(6, camera, seed=10, scale_range=(0.1, 0.4))
    result = compare(gauss, camera, "absgrad 7x5", device=device)
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
    _note("absgrad 7x5", "absgrad", _within("absgrad 7x5", "absgrad", expected, absgrad, result.bounds["absgrad"]))
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


@pytest.fixture
def two_threads():
    """Two OpenMP threads for one test (the suite's workers run one each; conftest.py). The extension shares
    torch's OpenMP runtime in-process, so torch.set_num_threads sets the kernels' threads too."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_two_threads_match_the_reference_and_repeat_bitwise(garden, two_threads):
    """Tiles split over threads and per-thread gradient sums: still within the bounds, and reproducible."""
    gauss, cameras = garden
    result = compare(gauss, cameras[1], "garden cam1 aa, 2 threads", seed=1, antialiased=True)
    again, again_g = _render(gauss, cameras[1], "native", result.cot, antialiased=True)
    assert torch.equal(again.rgb, result.nat.rgb) and torch.equal(again.weight_sums, result.nat.weight_sums)
    for name in GRAD_NAMES:
        assert torch.equal(again_g[name], result.nat_grads[name]), name


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
        order = _by_pixel(pixels[keep])
        g_k, p_k, a_k = gauss[keep][order], pixels[keep][order], alpha[keep][order]
        alive = _segment_cumsum(torch.log1p(-a_k.double()), _starts(p_k)) >= math.log(T_MIN)
        clamped = gauss[raw > ALPHA_MAX], pixels[raw > ALPHA_MAX]
    return (g_k[alive].tolist(), p_k[alive].tolist(), clamped[0].tolist(), clamped[1].tolist())


def _smooth_scene() -> tuple[Camera, Gaussians, tuple]:
    """A 12x9 camera, 5 large, half-transparent Gaussians and random cotangents: a loss smooth enough for
    finite differences."""
    W, H = 12, 9
    camera = _camera(W, H, 10.0, seed=12)
    gauss = _synthetic(5, camera, seed=12, scale_range=(0.15, 0.5), z_range=(2.0, 4.0))
    gauss.opacities = gauss.opacities.clamp(-1.5, 1.5)
    gen = torch.Generator().manual_seed(3)
    cot = (torch.randn(H, W, 3, generator=gen, dtype=torch.float64),
           torch.randn(H, W, generator=gen, dtype=torch.float64), torch.zeros(H, W, dtype=torch.float64))
    return camera, gauss, cot


def test_gradients_match_finite_differences():
    camera, gauss, cot = _smooth_scene()
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


# ---------------------------------------------------------------- 6b. the camera's gradient (pose refinement)


def _twist(xi: torch.Tensor) -> torch.Tensor:
    """exp of the se(3) twist xi = (rotation, translation) as a 4x4 matrix: a small rigid motion of the camera
    frame (cam_from_world' = exp(xi) @ cam_from_world), differentiable at xi = 0."""
    w, v = xi[:3], xi[3:]
    twist = torch.zeros(4, 4, dtype=xi.dtype)
    twist[0, 1], twist[0, 2], twist[1, 2] = -w[2], w[1], -w[0]
    twist[1, 0], twist[2, 0], twist[2, 1] = w[2], -w[1], w[0]
    twist[:3, 3] = v
    return torch.linalg.matrix_exp(twist)


def _camera_grad(gauss: Gaussians, camera: Camera, backend: str, dtype: torch.dtype, cot) -> torch.Tensor:
    """dL/dxi at xi = 0 (float64) for the loss of `_loss`, rendering with cam_from_world = exp(xi) W."""
    xi = torch.zeros(6, dtype=torch.float64, requires_grad=True)
    viewmat = (_twist(xi) @ torch.as_tensor(camera.world_to_cam)).to(dtype)
    raw = {k: v.to(dtype) for k, v in gauss.as_dict().items()}
    _loss(rasterize(Gaussians.from_dict(raw), camera, backend=backend, viewmat=viewmat), cot).backward()
    return xi.grad


def test_camera_gradient_matches_the_reference():
    """The native kernels sum each Gaussian's share of dL/d(cam_from_world) (through its camera-space mean and
    covariance, and its SH view direction through the camera centre). Against the float64 reference, its error
    must be of the order of the float32 reference's own (an independent float32 evaluation of the same math,
    measured on the same scene): at most 8 times it, plus 2^-20 of the largest entry for a component where
    both happen to be exact."""
    camera = _camera(40, 30, 35.0, seed=4)
    gauss = _synthetic(300, camera, seed=4)
    gen = torch.Generator().manual_seed(5)
    cot = (torch.randn(30, 40, 3, generator=gen, dtype=torch.float64),
           torch.randn(30, 40, generator=gen, dtype=torch.float64), torch.zeros(30, 40, dtype=torch.float64))
    exact = _camera_grad(gauss, camera, "torch", torch.float64, cot)
    reference32 = _camera_grad(gauss, camera, "torch", torch.float32, cot)
    native = _camera_grad(gauss, camera, "native", torch.float32, cot)
    bound = 8 * (reference32 - exact).abs() + 2.0**-20 * float(exact.abs().max())
    _note("camera gradient", "vs bound", float(((native - exact).abs() / bound).max()))
    assert ((native - exact).abs() <= bound).all(), (native, exact, bound)


def test_camera_gradient_matches_finite_differences():
    """dL/dxi of the native backend against central differences of its own renders, as for the Gaussians'
    parameters (section 6): steps whose render switches a pair on or off are skipped."""
    camera, gauss, cot = _smooth_scene()
    analytic = _camera_grad(gauss, camera, "native", torch.float32, cot)
    scale = float(analytic.abs().max())

    def moved(delta: torch.Tensor) -> Camera:
        return dataclasses.replace(camera, world_to_cam=(_twist(delta) @ torch.as_tensor(camera.world_to_cam))
                                   .numpy())

    base_signature = _pair_signature(gauss, camera)
    checked = 0
    for k in range(6):
        for step in (2e-3, 1e-3, 5e-4):  # the largest step within which no pair switches on or off
            cams = [moved(sign * step * torch.eye(6, dtype=torch.float64)[k]) for sign in (1.0, -1.0)]
            if all(_pair_signature(gauss, cam) == base_signature for cam in cams):
                break
        else:
            continue  # the loss is not smooth around this direction at any step tried
        with torch.no_grad():
            values = [float(_loss(rasterize(gauss, cam, backend="native"), cot)) for cam in cams]
        fd = (values[0] - values[1]) / (2 * step)
        err = abs(fd - float(analytic[k])) / (abs(float(analytic[k])) + 0.02 * scale)
        _note("camera finite differences", "rel err", err)
        assert err < 0.03, f"d loss / d xi[{k}]: finite difference {fd:.6g}, analytic {float(analytic[k]):.6g}"
        checked += 1
    assert checked >= 5


def test_camera_gradient_costs_nothing_unless_asked(ext):
    """Without a viewmat that needs a gradient the kernels skip the sums (an empty tensor comes back)."""
    camera = _camera(16, 12, 14.0)
    gauss = _synthetic(20, camera).activated()
    viewmat, K = camera_tensors(camera, torch.device("cpu"))
    outs = ext.preprocess_forward(gauss.means, gauss.quats, gauss.scales, gauss.sh0.contiguous(),
                                  gauss.shN.contiguous(), viewmat, K, 16, 12, 3, EPS2D, NEAR_PLANE, 1e10)
    grads = [torch.ones_like(t, dtype=torch.float32) for t in (outs[0], outs[1], outs[2], outs[4], outs[5])]
    for wanted, size in ((False, 0), (True, 15)):
        sums = ext.preprocess_backward(gauss.means, gauss.quats, gauss.scales, gauss.sh0.contiguous(),
                                       gauss.shN.contiguous(), viewmat, K, 16, 12, 3, EPS2D, outs[3], *grads,
                                       wanted)[5]
        assert sums.shape == (size,)


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
