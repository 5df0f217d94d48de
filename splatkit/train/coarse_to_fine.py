"""Coarse-to-fine training (EAGLES, Girish et al. 2024, "coarse-to-fine"; their `resize_scale` schedule): early
steps fit a downsampled photo with a render of the same size, so they see the scene's low frequencies first and
cost a fraction of a full-size step (on a CPU the render's cost follows its pixel count)."""

from __future__ import annotations

import math

import torch

from splatkit.data.cameras import Camera


def resolution_scale(step: int, steps: int, start: float, until: float) -> float:
    """Linear image size at `step` of `steps`, as a fraction of full size: `start` at step 0, rising on a half
    cosine to 1 at `until` x `steps` and 1 afterwards (the reference's `DecayScheduler('cosine')`)."""
    period = until * steps
    if step >= period or start >= 1.0:
        return 1.0
    return 1.0 + 0.5 * (start - 1.0) * (1.0 + math.cos(math.pi * step / period))


def downsampled(camera: Camera, target: torch.Tensor, keep: torch.Tensor | None, scale: float
                ) -> tuple[Camera, torch.Tensor, torch.Tensor | None]:
    """The view at `scale` of its size: the camera with its intrinsics scaled, the photo `target` (H, W, 3)
    resized with an antialiasing (area-like) filter, and the mask `keep` (H, W, 1) bool keeping only pixels
    whose whole footprint was kept. `scale` 1 returns the inputs."""
    if scale >= 1.0:
        return camera, target, keep
    small = camera.scaled(1.0 / scale)
    size = (small.height, small.width)

    def resize(image: torch.Tensor) -> torch.Tensor:
        nchw = image.permute(2, 0, 1)[None].float()
        return torch.nn.functional.interpolate(nchw, size=size, mode="bilinear", antialias=True,
                                               align_corners=False)[0].permute(1, 2, 0).contiguous()

    return small, resize(target), None if keep is None else resize(keep) > 0.999
