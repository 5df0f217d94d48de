"""Image metrics used both as losses and for evaluation."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from splatkit.render.native_build import load_extension

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5


def _gaussian_window(size: int, sigma: float, device: torch.device) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float32, device=device) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def ssim(a: torch.Tensor, b: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
    """Mean SSIM of two (H, W, C) images in [0, 1] (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5).

    Only windows that fit inside the image count ("valid"), so no padding leaks into the score; with `keep`
    ((H, W, 1) bool, a mask) only windows centred on kept pixels count. The five local statistics of all
    channels are blurred in one depthwise convolution: on the CPU that is ~10x faster than separate
    single-channel convolutions.
    """
    c1, c2 = 0.01**2, 0.03**2
    x, y = a.permute(2, 0, 1), b.permute(2, 0, 1)
    size = min(SSIM_WINDOW, x.shape[-1], x.shape[-2])
    g = _gaussian_window(size, SSIM_SIGMA, a.device).to(a.dtype)
    maps = torch.cat([x, y, x * x, y * y, x * y])[None]  # (1, 5C, H, W)
    kernel = (g[:, None] * g[None, :]).expand(maps.shape[1], 1, size, size)
    mu_x, mu_y, xx, yy, xy = F.conv2d(maps, kernel, groups=maps.shape[1])[0].chunk(5)
    var_x, var_y, cov = xx - mu_x**2, yy - mu_y**2, xy - mu_x * mu_y
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    if keep is None:
        return s.mean()
    h, w = s.shape[-2:]
    centred = keep[size // 2: size // 2 + h, size // 2: size // 2 + w].permute(2, 0, 1)  # window centres
    return masked_mean(s, centred)


def masked_mean(values: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    """Mean of `values` over the kept entries (`keep` broadcasts against it); all of them without a mask."""
    if keep is None:
        return values.mean()
    weight = keep.to(values.dtype).expand_as(values)
    return (values * weight).sum() / weight.sum().clamp_min(1.0)


def ignore_masked(render: torch.Tensor, target: torch.Tensor, keep: torch.Tensor | None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """(render, target) with every ignored pixel of both replaced by the detached render there.

    Ignored pixels then add no error, and neither their photo (e.g. a passer-by) nor a gradient through them
    reaches the model, not even through SSIM windows that straddle the mask's edge. `keep` is (H, W, 1) bool.
    """
    if keep is None:
        return render, target
    stand_in = render.detach()
    return torch.where(keep, render, stand_in), torch.where(keep, target, stand_in)


def photometric_loss(render: torch.Tensor, target: torch.Tensor, keep: torch.Tensor | None,
                     ssim_lambda: float, fused: bool = False) -> tuple[torch.Tensor, float]:
    """(1 - lambda) L1 + lambda (1 - SSIM), the 3DGS training loss (Kerbl et al. 2023, eq. 7), averaged over the
    kept pixels (per image, so a mostly masked photo weighs as much as a whole one): a scalar, differentiable
    with respect to `render` ((H, W, C) float32 in [0, 1]; `target` alike, `keep` (H, W, 1) bool or None). Pass
    (render, target) through `ignore_masked` first. Returned with the render's PSNR in dB (`psnr`), which
    training reports every step.

    `fused` computes it, its gradient and the PSNR's squared error in one call of the native extension
    (`cuda/cpu/loss_cpu.cpp`, and the CUDA build on a GPU) instead of a dozen torch ops and their backward; the
    two agree to float32 rounding (tests/test_fused_loss.py). The fused loss passes no gradient to `target`."""
    if fused:
        mse = torch.empty(1, dtype=torch.float64)
        return _FusedLoss.apply(render, target, keep, ssim_lambda, mse), psnr_from_mse(float(mse))
    l1 = masked_mean(torch.abs(render - target), keep)
    loss = (1 - ssim_lambda) * l1 + ssim_lambda * (1 - ssim(render, target, keep))
    return loss, psnr(render.detach(), target, keep)


class _FusedLoss(torch.autograd.Function):
    """The native loss kernel: its forward call writes the gradient too, which backward scales. The mean squared
    error it also reports is written into `mse` (a float64 tensor of one value)."""

    @staticmethod
    def forward(ctx, render: torch.Tensor, target: torch.Tensor, keep: torch.Tensor | None,  # type: ignore[override]
                ssim_lambda: float, mse: torch.Tensor) -> torch.Tensor:
        size = min(SSIM_WINDOW, render.shape[0], render.shape[1])
        values, grad = load_extension().photometric_loss(render.contiguous(), target.detach().contiguous(), keep,
                                                         ssim_lambda, size, SSIM_SIGMA)
        ctx.save_for_backward(grad)
        mse[0] = values[3]
        return values[0].to(render)

    @staticmethod
    def backward(ctx, v_loss: torch.Tensor):  # type: ignore[override]
        (grad,) = ctx.saved_tensors
        return grad * v_loss, None, None, None, None


def psnr(a: torch.Tensor, b: torch.Tensor, keep: torch.Tensor | None = None) -> float:
    """Peak signal-to-noise ratio in dB for (H, W, C) images in [0, 1], over the kept pixels if masked."""
    return psnr_from_mse(masked_mean((a.clamp(0, 1) - b.clamp(0, 1)) ** 2, keep).item())


def psnr_from_mse(mse: float) -> float:
    """PSNR in dB of a mean squared error of values in [0, 1]; inf for identical images."""
    return float("inf") if mse == 0 else -10.0 * math.log10(mse)
