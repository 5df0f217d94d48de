"""The `gsplat` backend: gsplat's fused CUDA rasterizer, the proven path on NVIDIA GPUs.

Used by `auto` when gsplat is installed (`pip install splatkit[cuda]`) and the Gaussians live on a CUDA device.
gsplat does not report per-Gaussian weight sums, so `weight_sums` is None with this backend.
"""

from __future__ import annotations

import importlib.util

import torch

from splatkit.data.cameras import Camera
from splatkit.model.gaussians import ActivatedGaussians
from splatkit.render.api import Rasterized, RenderSettings, register_backend
from splatkit.render.torch_backend import camera_tensors


def render_gsplat(gaussians: ActivatedGaussians, camera: Camera, settings: RenderSettings) -> Rasterized:
    import gsplat

    viewmat, K = camera_tensors(camera, gaussians.means.device, settings.viewmat)
    # "RGB+D": the depth channel is the accumulated sum(w z), normalised once by rasterize() for every backend.
    colors, alphas, meta = gsplat.rasterization(
        gaussians.means, gaussians.quats, gaussians.scales, gaussians.opacities, gaussians.sh, viewmat[None],
        K[None], camera.width, camera.height, sh_degree=settings.sh_degree, render_mode="RGB+D",
        rasterize_mode="antialiased" if settings.antialiased else "classic", absgrad=True, packed=False,
    )
    radii = meta["radii"][0]
    if radii.dim() == 1:  # gsplat < 1.5 reports one radius per Gaussian
        radii = radii[:, None].expand(-1, 2)
    return Rasterized(colors[0, ..., :3], alphas[0, ..., 0], colors[0, ..., 3], meta["means2d"], radii.int(), None)


def _unavailable(device: torch.device) -> str | None:
    if device.type != "cuda":
        return "runs on CUDA devices only"
    if importlib.util.find_spec("gsplat") is None:
        return "not installed (pip install 'splatkit[cuda]')"
    return None


register_backend("gsplat", render_gsplat, unavailable=_unavailable)
