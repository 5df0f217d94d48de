"""Initial point clouds for scenes that do not come with one from structure-from-motion: a point-cloud file
named by the scene, or random points that the cameras see."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from splatkit.data.cameras import Camera
from splatkit.data.checks import points_problem
from splatkit.errors import file_error


def read_ply_points(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """xyz (float64) and rgb in [0, 1] from a point-cloud .ply (grey when it has no colours)."""
    from plyfile import PlyData

    rgb_names = ("red", "green", "blue")
    try:
        v = PlyData.read(str(path))["vertex"]
        xyz = np.stack([np.asarray(v[k], np.float64) for k in ("x", "y", "z")], axis=1)
        has_rgb = all(k in v.data.dtype.names for k in rgb_names)
        rgb = np.stack([np.asarray(v[k], np.float64) for k in rgb_names], axis=1) if has_rgb else None
    except Exception as e:
        raise file_error(path, f"unreadable point cloud ({type(e).__name__}: {e})".replace("\n", " ")) from None
    if (problem := points_problem(xyz)) is not None:
        raise file_error(path, problem)
    if rgb is None:
        return xyz, np.full_like(xyz, 0.5, dtype=np.float32)
    if not np.isfinite(rgb).all():
        raise file_error(path, "colours contain NaN or infinite values")
    rgb = rgb / (65535.0 if rgb.max(initial=0) > 255 else 255.0)
    return xyz, np.clip(rgb, 0.0, 1.0).astype(np.float32)  # signed or float colour properties may leave [0, 1]


def look_at_center(cameras: list[Camera]) -> np.ndarray:
    """Least-squares point nearest to all optical axes: where an object-centric rig is looking."""
    A = np.zeros((3, 3))
    b = np.zeros(3)
    for cam in cameras:
        c, d = cam.center, cam.world_to_cam[2, :3]  # R^T [0,0,1] is the third row of R
        d = d / np.linalg.norm(d)
        P = np.eye(3) - np.outer(d, d)
        A += P
        b += P @ c
    return np.linalg.lstsq(A, b, rcond=1e-6)[0]


def random_points_in_view(cameras: list[Camera], n: int = 50_000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Uniform random points in a box around the look-at centre, kept if at least 2 cameras see them.

    Used when a scene ships no point cloud; deterministic so repeated runs start from the same cloud.
    """
    rng = np.random.default_rng(seed)
    center = look_at_center(cameras)
    half = 0.5 * float(np.median([np.linalg.norm(c.center - center) for c in cameras]))
    kept: list[np.ndarray] = []
    total = 0
    for _ in range(20):  # draw a little more than still needed: object-centric rigs keep most points
        pts = (center + rng.uniform(-half, half, size=(int(1.25 * (n - total)) + 1000, 3))).astype(np.float32)
        seen = np.zeros(len(pts), np.int32)
        for cam in cameras:
            x = pts @ cam.world_to_cam[:3, :3].T.astype(np.float32) + cam.world_to_cam[:3, 3].astype(np.float32)
            z = x[:, 2]
            uv = x @ cam.K.T.astype(np.float32)
            with np.errstate(divide="ignore", invalid="ignore"):
                u, v = uv[:, 0] / z, uv[:, 1] / z
            seen += (z > 1e-3 * half) & (u >= 0) & (u < cam.width) & (v >= 0) & (v < cam.height)
        good = pts[seen >= min(2, len(cameras))]
        kept.append(good)
        total += len(good)
        if total >= n:
            break
    points = np.concatenate(kept)[:n]
    if len(points) == 0:  # cameras see nothing in common: fall back to the box itself
        points = center + rng.uniform(-half, half, size=(n, 3))
    colors = rng.uniform(0.0, 1.0, size=(len(points), 3)).astype(np.float32)
    return points, colors
