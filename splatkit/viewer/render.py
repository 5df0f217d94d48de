"""One viewer frame: rasterize a camera and turn RGB, depth or alpha into an 8-bit image; splat arrays for
the browser's own renderer."""

from __future__ import annotations

import numpy as np
import torch

from splatkit.data.cameras import Camera
from splatkit.model.gaussians import Gaussians
from splatkit.model.sh import SH_C0
from splatkit.render import rasterize
from splatkit.train.exposure import apply_exposure

OUTPUTS = ("RGB", "Depth", "Alpha")

# A few anchors of a perceptual colour map (near = yellow, far = dark purple), interpolated per channel.
_DEPTH_ANCHORS = np.array([[0.99, 0.91, 0.15], [0.37, 0.79, 0.38], [0.13, 0.57, 0.55], [0.23, 0.32, 0.55],
                           [0.27, 0.00, 0.33]])


def colorize_depth(depth: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Depth as colours scaled to the 2nd-98th percentile of the covered pixels; empty pixels black."""
    covered = alpha > 0.5
    out = np.zeros((*depth.shape, 3), np.float32)
    if not covered.any():
        return out
    lo, hi = np.percentile(depth[covered], [2, 98])
    t = np.clip((depth - lo) / max(hi - lo, 1e-9), 0, 1) * (len(_DEPTH_ANCHORS) - 1)
    xs = np.arange(len(_DEPTH_ANCHORS))
    for c in range(3):
        out[..., c] = np.interp(t, xs, _DEPTH_ANCHORS[:, c])
    return out * covered[..., None]


@torch.no_grad()
def render_image(gaussians: Gaussians, camera: Camera, *, output: str = "RGB", sh_degree: int | None = None,
                 background: tuple[float, float, float] = (0.0, 0.0, 0.0), backend: str = "auto",
                 exposure: torch.Tensor | None = None) -> np.ndarray:
    """(H, W, 3) uint8 of `output` (RGB / Depth / Alpha) seen from `camera`; RGB through `exposure` (3, 4), a
    training photo's affine colour transform (`splatkit.train.exposure`), when given."""
    out = rasterize(gaussians, camera, sh_degree=sh_degree, background=background, backend=backend)
    if output == "Depth":
        image = colorize_depth(out.depth.float().cpu().numpy(), out.alpha.float().cpu().numpy())
    elif output == "Alpha":
        image = np.repeat(out.alpha.float().cpu().numpy()[..., None], 3, axis=-1)
    else:
        rgb = out.rgb if exposure is None else apply_exposure(out.rgb, exposure.to(out.rgb.device))
        image = rgb.float().cpu().numpy()
    return (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def quat_wxyz_to_matrices(quats: np.ndarray) -> np.ndarray:
    q = quats / np.linalg.norm(quats, axis=-1, keepdims=True)
    w, x, y, z = q[:, 0], q[:, 1], q[:, 2], q[:, 3]
    return np.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], axis=-1).reshape(-1, 3, 3)


def splat_arrays(gaussians: Gaussians) -> dict[str, np.ndarray]:
    """What viser's `add_gaussian_splats` takes: centres, world covariances R diag(s^2) R^T, DC colours, opacities."""
    g = gaussians.detach().to("cpu")
    R = quat_wxyz_to_matrices(g.quats.double().numpy())
    s2 = g.activated_scales.double().numpy() ** 2
    covariances = np.einsum("nij,nj,nkj->nik", R, s2, R)
    rgbs = np.clip(0.5 + SH_C0 * g.sh0[:, 0, :].double().numpy(), 0.0, 1.0)
    opacities = g.activated_opacities.double().numpy()[:, None]
    return {"centers": g.means.numpy().astype(np.float32), "covariances": covariances.astype(np.float32),
            "rgbs": rgbs.astype(np.float32), "opacities": opacities.astype(np.float32)}
