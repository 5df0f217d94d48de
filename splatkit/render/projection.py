"""Per-Gaussian geometry in PyTorch: 3D covariance, EWA projection to a 2D conic, screen-space extent.

Conventions follow gsplat: OpenCV camera axes, pixel centres at +0.5, a 0.3 px low-pass added to the 2D
covariance, the Jacobian evaluated at a position clamped to 1.3x the field of view, and per-axis radii of
3.33 sigma (beyond which alpha < 1/255 even at full opacity).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

NEAR_PLANE = 0.01
FAR_PLANE = 1e10
EPS2D = 0.3
RADIUS_SIGMAS = 3.33


def quat_to_rotmat(quats: torch.Tensor) -> torch.Tensor:
    """Rotation matrices (N, 3, 3) from wxyz quaternions (N, 4) of any non-zero length."""
    w, x, y, z = torch.nn.functional.normalize(quats, dim=-1).unbind(-1)
    return torch.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    ).reshape(quats.shape[:-1] + (3, 3))


def covariance_3d(quats: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """Sigma = R S S^T R^T with S = diag(scales) (activated scales)."""
    m = quat_to_rotmat(quats) * scales[..., None, :]
    return m @ m.transpose(-1, -2)


@dataclass
class Projected:
    means2d: torch.Tensor  # (N, 2) pixel coordinates
    conics: torch.Tensor  # (N, 3) upper triangle of the inverse 2D covariance (a, b, c)
    depths: torch.Tensor  # (N,) camera-space z
    radii: torch.Tensor  # (N, 2) int per-axis pixel radius; 0 where culled
    compensation: torch.Tensor  # (N,) sqrt(det(S) / det(S + eps I)), Mip-Splatting's opacity factor


def project(
    means: torch.Tensor,
    covars: torch.Tensor,
    viewmat: torch.Tensor,
    K: torch.Tensor,
    width: int,
    height: int,
    *,
    eps2d: float = EPS2D,
    near: float = NEAR_PLANE,
    far: float = FAR_PLANE,
) -> Projected:
    """EWA-project world-space Gaussians into one pinhole camera (world-to-camera `viewmat`, intrinsics `K`)."""
    R, t = viewmat[:3, :3], viewmat[:3, 3]
    mc = means @ R.T + t
    cc = R @ covars @ R.T
    tx, ty, tz = mc.unbind(-1)
    in_depth = (tz > near) & (tz < far)
    # Gaussians behind the camera get a harmless stand-in depth so no NaN/inf enters the graph; they are culled.
    tz = torch.where(in_depth, tz, torch.ones_like(tz))
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    lim_x_pos = (width - cx) / fx + 0.3 * (0.5 * width / fx)
    lim_x_neg = cx / fx + 0.3 * (0.5 * width / fx)
    lim_y_pos = (height - cy) / fy + 0.3 * (0.5 * height / fy)
    lim_y_neg = cy / fy + 0.3 * (0.5 * height / fy)
    u = torch.clamp(tx / tz, -lim_x_neg, lim_x_pos)
    v = torch.clamp(ty / tz, -lim_y_neg, lim_y_pos)
    zeros = torch.zeros_like(tz)
    J = torch.stack([fx / tz, zeros, -fx * u / tz, zeros, fy / tz, -fy * v / tz], dim=-1).reshape(-1, 2, 3)
    cov2d = J @ cc @ J.transpose(-1, -2)
    a, b, c = cov2d[:, 0, 0], 0.5 * (cov2d[:, 0, 1] + cov2d[:, 1, 0]), cov2d[:, 1, 1]
    det_orig = a * c - b * b
    a, c = a + eps2d, c + eps2d
    det = a * c - b * b
    valid = in_depth & (det > 0)
    det_safe = torch.where(valid, det, torch.ones_like(det))
    conics = torch.stack([c / det_safe, -b / det_safe, a / det_safe], dim=-1)
    # Clamped away from 0 so sqrt's infinite slope there cannot turn a zero gradient into NaN.
    compensation = torch.sqrt(torch.clamp(det_orig / det_safe, min=1e-12))
    means2d = torch.stack([fx * tx / tz + cx, fy * ty / tz + cy], dim=-1)
    with torch.no_grad():
        radii = torch.ceil(RADIUS_SIGMAS * torch.sqrt(torch.stack([a, c], dim=-1).clamp(min=0)))
        inside = ((means2d[:, 0] + radii[:, 0] > 0) & (means2d[:, 0] - radii[:, 0] < width)
                  & (means2d[:, 1] + radii[:, 1] > 0) & (means2d[:, 1] - radii[:, 1] < height))
        radii = torch.where((valid & inside)[:, None], radii, torch.zeros_like(radii)).int()
    return Projected(means2d, conics, mc[:, 2], radii, compensation)
