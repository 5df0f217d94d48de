"""Front-to-back alpha compositing of projected Gaussians in vectorised PyTorch (autograd gives the backward).

The native rasterizer bins Gaussians into 16x16 tiles; this reference enumerates each Gaussian's
(pixel, Gaussian) pairs inside the box where its alpha can reach 1/255 instead. Both visit every pair that can
matter, so they blend the same terms. The compositing rules are the 3DGS ones: alpha = min(0.99, opacity *
exp(-power)), pairs with alpha < 1/255 are skipped, and a pixel stops before the Gaussian that would bring its
transmittance below 1e-4.
"""

from __future__ import annotations

import math
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


def _pixel_pairs(means2d: torch.Tensor, conics: torch.Tensor, opacities: torch.Tensor, radii: torch.Tensor,
                 order: torch.Tensor, width: int, height: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(gaussian, pixel) pairs whose pixel centre lies where the Gaussian's alpha can reach 1/255.

    The box is the Gaussian's radius, tightened by its opacity: alpha >= 1/255 needs a Mahalanobis distance
    d with d^2 <= 2 ln(255 opacity), and |dx| <= d * sigma_x. Pairs come out grouped by Gaussian in `order`.
    """
    visible = order[(radii[order] > 0).all(dim=-1)]
    m = means2d.detach()[visible]
    a, b, c = conics.detach()[visible].unbind(-1)
    det = (a * c - b * b).clamp(min=1e-12)
    d2 = 2.0 * torch.log((255.0 * opacities.detach()[visible]).clamp(min=1.0))
    half = torch.stack([torch.sqrt(d2 * c / det), torch.sqrt(d2 * a / det)], dim=-1)
    half = torch.minimum(half, radii[visible].to(half.dtype))
    # Pixel j has its centre at j + 0.5: keep |j + 0.5 - mean| <= half.
    lo = torch.ceil(m - half - 0.5)
    hi = torch.floor(m + half - 0.5) + 1
    size = torch.tensor([width, height], dtype=lo.dtype)
    lo = torch.minimum(lo.clamp(min=0), size).long()
    hi = torch.minimum(hi.clamp(min=0), size).long()
    extent = (hi - lo).clamp(min=0)
    counts = extent[:, 0] * extent[:, 1]
    slot = torch.repeat_interleave(torch.arange(len(visible)), counts)
    starts = torch.cumsum(counts, 0) - counts
    local = torch.arange(slot.numel()) - starts[slot]
    nx = extent[slot, 0]
    px = lo[slot, 0] + local % nx
    py = lo[slot, 1] + torch.div(local, nx, rounding_mode="floor")
    return visible[slot], py * width + px


def _alphas(packed: torch.Tensor, pixels: torch.Tensor, width: int) -> torch.Tensor:
    """alpha per pair from gathered per-Gaussian rows (mean x, mean y, conic a, b, c, opacity)."""
    mx, my, a, b, c, opacity = packed.unbind(-1)
    dx = (pixels % width).to(packed.dtype) + 0.5 - mx
    dy = torch.div(pixels, width, rounding_mode="floor").to(packed.dtype) + 0.5 - my
    power = -0.5 * (a * dx * dx + c * dy * dy) - b * dx * dy
    alpha = torch.clamp_max(opacity * torch.exp(power.clamp(max=0.0)), ALPHA_MAX)
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
    packed = torch.cat([means2d, conics, opacities[:, None]], dim=-1)  # one gather (and one scatter) per pair
    with torch.no_grad():
        by_depth = torch.argsort(depths.detach(), stable=True)
        gauss, pixels = _pixel_pairs(means2d, conics, opacities, radii, by_depth, width, height)
        keep = _alphas(packed.detach().index_select(0, gauss), pixels, width) >= ALPHA_MIN
        gauss, pixels = gauss[keep], pixels[keep]
        # Pairs are grouped by Gaussian in depth order, so a stable sort by pixel orders each pixel's list
        # front to back.
        order = torch.sort(pixels, stable=True).indices
        gauss, pixels = gauss[order], pixels[order]
        _, per_pixel = torch.unique_consecutive(pixels, return_counts=True)
        segment_start = torch.repeat_interleave(torch.cumsum(per_pixel, 0) - per_pixel, per_pixel)

    alpha = _alphas(packed.index_select(0, gauss), pixels, width)
    log_t = torch.log1p(-alpha).double()
    inclusive = torch.cumsum(log_t, 0)
    # Segmented exclusive prefix sum: subtract what was accumulated before this pixel's segment began.
    before_segment = torch.cat([inclusive.new_zeros(1), inclusive]).index_select(0, segment_start)
    log_t_before = inclusive - log_t - before_segment
    with torch.no_grad():
        alive = (log_t_before + log_t) >= math.log(T_MIN)
    weights = (alpha * torch.exp(log_t_before).float()) * alive

    hw = height * width
    contrib = weights[:, None] * colors.index_select(0, gauss)
    color = colors.new_zeros(hw, channels).index_add(0, pixels, contrib)
    alpha_img = weights.new_zeros(hw).index_add(0, pixels, weights)
    weight_sums = weights.detach().new_zeros(n).index_add(0, gauss, weights.detach())
    return Composited(color.reshape(height, width, channels), alpha_img.reshape(height, width), weight_sums)
