"""Front-to-back alpha compositing of projected Gaussians in vectorised PyTorch (autograd gives the backward).

The native rasterizer bins Gaussians into 16x16 tiles; this reference enumerates each Gaussian's
(pixel, Gaussian) pairs inside its per-axis 3.33-sigma box instead. Both visit the same pairs that can matter:
outside that box the Mahalanobis distance exceeds 3.33, so alpha < 1/255 and the pair is skipped either way.
The compositing rules are the 3DGS ones: alpha = min(0.99, opacity * exp(-power)), pairs with alpha < 1/255
are skipped, and a pixel stops before the Gaussian that would bring its transmittance below 1e-4.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

ALPHA_MIN = 1.0 / 255.0
ALPHA_MAX = 0.99
T_MIN = 1e-4


@dataclass
class Composited:
    color: torch.Tensor  # (H, W, C) sum of w * colour (no background)
    alpha: torch.Tensor  # (H, W) sum of w
    weight_sums: torch.Tensor  # (N,) sum over pixels of alpha * T, detached


def _pixel_pairs(means2d: torch.Tensor, radii: torch.Tensor, width: int, height: int):
    """All (gaussian, pixel) pairs whose pixel centre lies within the Gaussian's per-axis radius."""
    visible = torch.nonzero((radii > 0).all(dim=-1)).squeeze(1)
    m, r = means2d.detach()[visible], radii[visible].to(means2d.dtype)
    # Pixel j has its centre at j + 0.5: keep |j + 0.5 - mean| <= radius.
    x0 = torch.ceil(m[:, 0] - r[:, 0] - 0.5).clamp(0, width).long()
    x1 = torch.floor(m[:, 0] + r[:, 0] - 0.5).clamp(-1, width - 1).long() + 1
    y0 = torch.ceil(m[:, 1] - r[:, 1] - 0.5).clamp(0, height).long()
    y1 = torch.floor(m[:, 1] + r[:, 1] - 0.5).clamp(-1, height - 1).long() + 1
    nx, ny = (x1 - x0).clamp(min=0), (y1 - y0).clamp(min=0)
    counts = nx * ny
    gauss = torch.repeat_interleave(visible, counts)
    starts = torch.cumsum(counts, 0) - counts
    local = torch.arange(gauss.numel(), device=means2d.device) - torch.repeat_interleave(starts, counts)
    slot = torch.repeat_interleave(torch.arange(len(visible), device=means2d.device), counts)
    px = x0[slot] + local % nx[slot]
    py = y0[slot] + torch.div(local, nx[slot], rounding_mode="floor")
    return gauss, py * width + px


def _alphas(means2d, conics, opacities, gauss, pixels, width):
    px = (pixels % width).to(means2d.dtype) + 0.5
    py = torch.div(pixels, width, rounding_mode="floor").to(means2d.dtype) + 0.5
    dx, dy = px - means2d[gauss, 0], py - means2d[gauss, 1]
    a, b, c = conics[gauss].unbind(-1)
    power = -0.5 * (a * dx * dx + c * dy * dy) - b * dx * dy
    alpha = torch.clamp_max(opacities[gauss] * torch.exp(power), ALPHA_MAX)
    return torch.where(power > 0, torch.zeros_like(alpha), alpha)


def composite(
    means2d: torch.Tensor,
    conics: torch.Tensor,
    opacities: torch.Tensor,
    colors: torch.Tensor,
    depths: torch.Tensor,
    radii: torch.Tensor,
    width: int,
    height: int,
) -> Composited:
    """Blend Gaussians (N) with per-Gaussian `colors` (N, C) into an image, nearest first by `depths`."""
    n, channels = colors.shape
    gauss, pixels = _pixel_pairs(means2d, radii, width, height)
    with torch.no_grad():  # drop pairs that cannot contribute before building the autograd graph
        keep = _alphas(means2d, conics, opacities, gauss, pixels, width) >= ALPHA_MIN
        gauss, pixels = gauss[keep], pixels[keep]
        depth_rank = torch.empty(n, dtype=torch.long, device=depths.device)
        depth_rank[torch.argsort(depths.detach(), stable=True)] = torch.arange(n, device=depths.device)
        order = torch.argsort(pixels * n + depth_rank[gauss])
        gauss, pixels = gauss[order], pixels[order]
        _, per_pixel = torch.unique_consecutive(pixels, return_counts=True)
        segment_start = torch.repeat_interleave(torch.cumsum(per_pixel, 0) - per_pixel, per_pixel)

    alpha = _alphas(means2d, conics, opacities, gauss, pixels, width)
    log_t = torch.log1p(-alpha).double()
    inclusive = torch.cumsum(log_t, 0)
    # Per-pixel (segmented) exclusive prefix sum: subtract everything accumulated before the pixel's segment.
    before_segment = torch.cat([inclusive.new_zeros(1), inclusive])[segment_start]
    log_t_before = (inclusive - log_t - before_segment).float()
    with torch.no_grad():
        alive = (log_t_before + log_t.float()) >= torch.log(torch.tensor(T_MIN))
    weights = alpha * torch.exp(log_t_before) * alive

    hw = height * width
    color = colors.new_zeros(hw, channels).index_add(0, pixels, weights[:, None] * colors[gauss])
    alpha_img = weights.new_zeros(hw).index_add(0, pixels, weights)
    weight_sums = weights.detach().new_zeros(n).index_add(0, gauss, weights.detach())
    return Composited(color.reshape(height, width, channels), alpha_img.reshape(height, width), weight_sums)
