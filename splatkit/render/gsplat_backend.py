"""The `gsplat` backend: gsplat's fused CUDA rasterizer, the proven path on NVIDIA GPUs.

Used by `auto` when gsplat is installed (`pip install splatkit[cuda]`) and the Gaussians live on a CUDA device.
gsplat does not report per-Gaussian weight sums, so `weight_sums` is None with this backend.
"""

from __future__ import annotations

import importlib.util

import torch

from splatkit.data.cameras import Camera
from splatkit.model.gaussians import Gaussians
from splatkit.render.api import RenderOutput, RenderSettings, register_backend
from splatkit.render.torch_backend import camera_tensors


def render_gsplat(gaussians: Gaussians, camera: Camera, settings: RenderSettings) -> RenderOutput:
    import gsplat

    viewmat, K = camera_tensors(camera, gaussians.means.device)
    background = torch.tensor([settings.background], dtype=torch.float32, device=viewmat.device)
    colors, alphas, meta = gsplat.rasterization(
        gaussians.means, gaussians.activated_quats, gaussians.activated_scales, gaussians.activated_opacities,
        gaussians.sh, viewmat[None], K[None], camera.width, camera.height, sh_degree=settings.sh_degree,
        render_mode="RGB+ED", rasterize_mode="antialiased" if settings.antialiased else "classic",
        absgrad=True, packed=False,
    )
    alpha = alphas[0, ..., 0]
    rgb = colors[0, ..., :3] + (1.0 - alpha[..., None]) * background[0]
    radii = meta["radii"][0]
    if radii.dim() == 1:  # gsplat < 1.5 reports one radius per Gaussian
        radii = radii[:, None].expand(-1, 2)
    return RenderOutput(rgb, alpha, colors[0, ..., 3], meta["means2d"], radii.int(), None)


def _available(device: torch.device) -> bool:
    return device.type == "cuda" and importlib.util.find_spec("gsplat") is not None


register_backend("gsplat", render_gsplat, available=_available)
