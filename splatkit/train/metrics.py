"""Image metrics used both as losses and for evaluation."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5


def _gaussian_window(size: int, sigma: float, device: torch.device) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float32, device=device) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean SSIM of two (H, W, C) images in [0, 1] (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5).

    Only windows that fit inside the image count ("valid"), so no padding leaks into the score. The five local
    statistics of all channels are blurred in one depthwise convolution: on the CPU that is ~10x faster than
    separate single-channel convolutions.
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
    return s.mean()


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Peak signal-to-noise ratio in dB for images in [0, 1]."""
    mse = torch.mean((a.clamp(0, 1) - b.clamp(0, 1)) ** 2).item()
    return float("inf") if mse == 0 else -10.0 * math.log10(mse)
