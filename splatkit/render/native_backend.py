"""The `native` backend: splatkit's own rasterizer from `cuda/` (OpenMP on the CPU, CUDA where built).

Two autograd functions mirror the two stages of the kernels: per-Gaussian preprocessing (projection + SH) and
per-tile blending. Keeping them apart makes `means2d` a real node of the graph, so `means2d.grad` is the
screen-space gradient densification needs, as in gsplat.
"""

from __future__ import annotations

import torch

from splatkit.data.cameras import Camera
from splatkit.model.gaussians import ActivatedGaussians
from splatkit.render.api import Rasterized, RenderSettings, register_backend
from splatkit.render.native_build import load_extension, unavailable_reason, with_cuda
from splatkit.render.projection import EPS2D, FAR_PLANE, NEAR_PLANE
from splatkit.render.torch_backend import camera_tensors


class _Preprocess(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means, quats, scales, sh0, shN, viewmat, K, width: int, height: int, degree: int):
        ext = load_extension()
        means2d, conics, depths, radii, compensation, colors = ext.preprocess_forward(
            means, quats, scales, sh0, shN, viewmat, K, width, height, degree, EPS2D, NEAR_PLANE, FAR_PLANE)
        ctx.save_for_backward(means, quats, scales, sh0, shN, viewmat, K, radii)
        ctx.size, ctx.degree = (width, height), degree
        ctx.mark_non_differentiable(radii)
        return means2d, conics, depths, radii, compensation, colors

    @staticmethod
    def backward(ctx, v_means2d, v_conics, v_depths, _v_radii, v_compensation, v_colors):
        means, quats, scales, sh0, shN, viewmat, K, radii = ctx.saved_tensors
        grads = [g.contiguous() for g in (v_means2d, v_conics, v_depths, v_compensation, v_colors)]
        camera_grad = ctx.needs_input_grad[5]
        v_means, v_quats, v_scales, v_sh0, v_shN, sums = load_extension().preprocess_backward(
            means, quats, scales, sh0, shN, viewmat, K, *ctx.size, ctx.degree, EPS2D, radii, *grads, camera_grad)
        v_viewmat = _viewmat_grad(viewmat, sums) if camera_grad else None
        return v_means, v_quats, v_scales, v_sh0, v_shN, v_viewmat, None, None, None, None


def _viewmat_grad(viewmat: torch.Tensor, sums: torch.Tensor) -> torch.Tensor:
    """dL/d(cam_from_world) (4, 4) from the kernels' sums (dL/dR, dL/dt through the Gaussians' camera-space
    means and covariances; dL/d of their view directions d = mean - c, where the camera centre c = -R^T t
    adds t (sum d)^T to dL/dR and R (sum d) to dL/dt)."""
    R, t = viewmat[:3, :3], viewmat[:3, 3]
    v_R, v_t, v_dir = sums[:9].reshape(3, 3), sums[9:12], sums[12:15]
    grad = torch.zeros_like(viewmat)
    grad[:3, :3] = v_R + torch.outer(t, v_dir)
    grad[:3, 3] = v_t + R @ v_dir
    return grad


class _Blend(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means2d, conics, opacities, features, depths, radii, width: int, height: int, absgrad):
        image, alpha, final_t, last, weight_sums, offsets, ids = load_extension().blend_forward(
            means2d, conics, opacities, features, depths, radii, width, height)
        ctx.save_for_backward(means2d, conics, opacities, features, offsets, ids, final_t, last, absgrad)
        ctx.size = (width, height)
        ctx.mark_non_differentiable(weight_sums)
        return image, alpha, weight_sums

    @staticmethod
    def backward(ctx, v_image, v_alpha, _v_weight_sums):
        means2d, conics, opacities, features, offsets, ids, final_t, last, absgrad = ctx.saved_tensors
        v_means2d, v_conics, v_opacities, v_features, abs_means2d = load_extension().blend_backward(
            means2d, conics, opacities, features, offsets, ids, final_t, last, v_image.contiguous(),
            v_alpha.contiguous(), *ctx.size)
        absgrad += abs_means2d  # gsplat's "absgrad": per-pixel |dL/dmeans2d| summed, for densification
        return v_means2d, v_conics, v_opacities, v_features, None, None, None, None, None


def render_native(gaussians: ActivatedGaussians, camera: Camera, settings: RenderSettings) -> Rasterized:
    viewmat, K = camera_tensors(camera, gaussians.means.device, settings.viewmat)
    width, height = camera.width, camera.height
    means2d, conics, depths, radii, compensation, colors = _Preprocess.apply(
        gaussians.means.contiguous(), gaussians.quats.contiguous(), gaussians.scales.contiguous(),
        gaussians.sh0.contiguous(), gaussians.shN.contiguous(), viewmat, K, width, height, settings.sh_degree)
    opacities = gaussians.opacities * compensation if settings.antialiased else gaussians.opacities
    features = torch.cat([colors, depths[:, None]], dim=-1)
    absgrad = torch.zeros_like(means2d.detach())
    image, alpha, weight_sums = _Blend.apply(means2d, conics, opacities.contiguous(), features, depths.detach(),
                                             radii, width, height, absgrad)
    return Rasterized(image[..., :3], alpha, image[..., 3], means2d, radii, weight_sums, absgrad)


def _unavailable(device: torch.device) -> str | None:
    reason = unavailable_reason()
    if reason is not None:
        return reason
    if device.type == "cuda" and not with_cuda():
        return "this torch cannot build CUDA extensions (a CPU-only torch, or no CUDA toolkit: set CUDA_HOME)"
    if device.type not in ("cpu", "cuda"):
        return f"runs on the CPU and CUDA devices, not {device.type}"
    return None


register_backend("native", render_native, unavailable=_unavailable,
                 provides=frozenset({"weight_sums", "absgrad"}))
