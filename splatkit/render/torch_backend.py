"""The `torch` backend: the pure-PyTorch reference renderer. Slow, simple, and the yardstick for the others."""

from __future__ import annotations

import torch

from splatkit.data.cameras import Camera
from splatkit.model.gaussians import ActivatedGaussians
from splatkit.render.api import Rasterized, RenderSettings, register_backend
from splatkit.render.composite import composite
from splatkit.render.projection import covariance_3d, project
from splatkit.render.sh import eval_sh


def camera_tensors(camera: Camera, device: torch.device, viewmat: torch.Tensor | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """(world-to-camera 4x4, K 3x3) as tensors on `device`: float32, or `viewmat` (a refined pose, kept as it
    is so gradients reach it) with K in its dtype."""
    if viewmat is None:
        viewmat = torch.as_tensor(camera.world_to_cam, dtype=torch.float32, device=device)
    K = torch.as_tensor(camera.K, dtype=viewmat.dtype, device=device)
    return viewmat, K


def render_torch(gaussians: ActivatedGaussians, camera: Camera, settings: RenderSettings) -> Rasterized:
    viewmat, K = camera_tensors(camera, gaussians.means.device, settings.viewmat)
    covars = covariance_3d(gaussians.quats, gaussians.scales)
    proj = project(gaussians.means, covars, viewmat, K, camera.width, camera.height)
    opacities = gaussians.opacities * proj.compensation if settings.antialiased else gaussians.opacities
    campos = torch.linalg.inv(viewmat)[:3, 3]
    rgb = torch.clamp_min(eval_sh(settings.sh_degree, gaussians.means - campos, gaussians.sh) + 0.5, 0.0)
    features = torch.cat([rgb, proj.depths[:, None]], dim=-1)
    out = composite(proj.means2d, proj.conics, opacities, features, proj.depths, proj.radii,
                    camera.width, camera.height)
    return Rasterized(out.color[..., :3], out.alpha, out.color[..., 3], proj.means2d, proj.radii, out.weight_sums)


register_backend("torch", render_torch, unavailable=lambda device: None,
                 provides=frozenset({"weight_sums"}))
