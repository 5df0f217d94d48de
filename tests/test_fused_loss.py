"""The fused native loss (L1 + D-SSIM and its gradient in one kernel, cuda/cpu/loss_cpu.cpp) against the torch
loss run in float64 (itself checked against scipy's SSIM in tests/test_metrics.py) and its autograd gradient.

Tolerance, derived rather than tuned: each windowed statistic is two float32 passes of an 11-tap weighted sum of
values in [0, 1], so its rounding error is at most DELTA = 2 (11 + 1) U (U = 2^-24, the unit roundoff; FMA
contraction or vector order on other CPUs only lowers it). First order, a window's SSIM then errs by at most
kappa DELTA, where kappa (computed here from the float64 statistics of the very images tested) is the sum of
|dSSIM/d statistic| over the five statistics. The loss's error is bounded by lambda kappa DELTA, and every
gradient entry's by 4 kappa DELTA max|gradient| (the factor covers the blur's transpose and second-order terms).
The PSNR it reports comes from squared errors rounded to float32 (a difference and a product, each within U
relative) and summed in float64, so the mean errs by at most 3U relative and the PSNR by 10 log10(e) 3U dB.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from splatkit.render.native_build import compiler_available
from splatkit.train.metrics import SSIM_SIGMA, SSIM_WINDOW, _gaussian_window, ignore_masked, photometric_loss

pytestmark = [
    pytest.mark.xdist_group("native"),
    pytest.mark.skipif(not compiler_available(), reason="no C++ compiler for the native extension"),
]

U = 2.0**-24
LAMBDA = 0.2


def _kappa(render: torch.Tensor, target: torch.Tensor) -> float:
    """max over windows of sum |dSSIM/d(mx, my, sxx, syy, sxy)|, in float64."""
    x, y = render.double().permute(2, 0, 1), target.double().permute(2, 0, 1)
    size = min(SSIM_WINDOW, x.shape[-1], x.shape[-2])
    g = _gaussian_window(size, SSIM_SIGMA, x.device).double()
    maps = torch.cat([x, y, x * x, y * y, x * y])[None]
    kernel = (g[:, None] * g[None, :]).expand(maps.shape[1], 1, size, size)
    stats = [s.detach().requires_grad_() for s in F.conv2d(maps, kernel, groups=maps.shape[1])[0].chunk(5)]
    mx, my, sxx, syy, sxy = stats
    c1, c2 = 0.01**2, 0.03**2
    ssim = ((2 * mx * my + c1) * (2 * (sxy - mx * my) + c2)) / \
        ((mx**2 + my**2 + c1) * ((sxx - mx**2) + (syy - my**2) + c2))
    grads = torch.autograd.grad(ssim.sum(), stats)
    return float(sum(g.abs() for g in grads).max())


PSNR_BOUND = 10 * math.log10(math.e) * 3 * U


def _both(render: torch.Tensor, target: torch.Tensor, keep: torch.Tensor | None):
    """(fused loss, its gradient, PSNR), (float64 torch loss, its gradient, PSNR), through `ignore_masked` as
    training does."""
    out = []
    for fused, dtype in ((True, torch.float32), (False, torch.float64)):
        leaf = render.detach().to(dtype).requires_grad_()
        scored, truth = ignore_masked(leaf, target.to(dtype), keep)
        loss, psnr = photometric_loss(scored, truth, keep, LAMBDA, fused=fused)
        (grad,) = torch.autograd.grad(loss, leaf)
        out.append((float(loss.detach()), grad.double(), psnr))
    return out


def _images(h: int, w: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    target = torch.rand(h, w, 3, generator=generator)
    render = (target + 0.2 * torch.randn(h, w, 3, generator=generator)).clamp(0, 1)  # a render near its photo
    render[0, : w // 2] += 0.5  # and values above 1 (PSNR clamps them; the loss does not)
    return render, target


@pytest.mark.parametrize("h, w, masked", [(150, 200, False), (150, 200, True), (37, 23, True), (7, 9, False)],
                         ids=["200x150", "200x150-masked", "23x37-masked", "9x7-window-clipped"])
def test_fused_loss_and_gradient_match_the_float64_reference(h: int, w: int, masked: bool) -> None:
    render, target = _images(h, w, seed=h * w)
    keep = None
    if masked:
        keep = torch.rand(h, w, 1, generator=torch.Generator().manual_seed(1)) > 0.3
        keep[: h // 3, : w // 2] = False  # a large masked block as well as scattered pixels
    (loss, grad, psnr), (loss_ref, grad_ref, psnr_ref) = _both(render, target, keep)
    assert abs(psnr - psnr_ref) <= PSNR_BOUND, (psnr, psnr_ref)
    delta = 2 * (min(SSIM_WINDOW, h, w) + 1) * U
    kappa = _kappa(render, target)
    assert abs(loss - loss_ref) <= LAMBDA * kappa * delta + 4 * U, (loss, loss_ref, kappa)
    bound = 4 * kappa * delta * float(grad_ref.abs().max())
    assert float((grad - grad_ref).abs().max()) <= bound, (float((grad - grad_ref).abs().max()), bound)
    if keep is not None:
        assert float(grad[~keep[..., 0]].abs().max()) == 0.0  # no gradient through masked pixels


def test_identical_images_give_zero_loss_and_zero_gradient() -> None:
    """SSIM = 1 is its maximum and |x - y| = 0 has a zero (sub)gradient, as torch's abs takes it."""
    image = torch.rand(40, 50, 3, generator=torch.Generator().manual_seed(3))
    leaf = image.clone().requires_grad_()
    loss, psnr = photometric_loss(leaf, image, None, LAMBDA, fused=True)
    loss.backward()
    assert psnr == math.inf
    assert abs(float(loss.detach())) <= 4 * U
    assert float(leaf.grad.abs().max()) <= 2 * (SSIM_WINDOW + 1) * U * 100  # the SSIM partials cancel to rounding


def test_all_masked_view_scores_as_the_torch_loss_does() -> None:
    """No kept pixel: both means are over nothing (the torch path divides by max(count, 1)), so the loss is
    lambda and nothing gets a gradient."""
    render, target = _images(30, 40, seed=4)
    keep = torch.zeros(30, 40, 1, dtype=torch.bool)
    (loss, grad, _), (loss_ref, _, _) = _both(render, target, keep)
    assert loss == pytest.approx(loss_ref, abs=4 * U) and loss == pytest.approx(LAMBDA, abs=4 * U)
    assert float(grad.abs().max()) == 0.0
