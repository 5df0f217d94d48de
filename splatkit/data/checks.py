"""Checks every scene reader applies to the numbers it has read, so that each format turns away the same broken
values (NaN, 10^300, a zero quaternion, a negative focal length) with a line saying which, instead of passing
them on to normalisation and training as overflows, singular matrices or NaN losses.

Each returns what is wrong, or None; the reader knows the file and the record, and names both."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from splatkit.data.cameras import Undistortion
from splatkit.data.images import make_undistortion

# No coordinate, focal length or principal point of a real capture comes near this, and the product of two such
# values stays finite even in float32.
MAX_VALUE = 1e12
MIN_FOCAL = 1 / MAX_VALUE  # pixels; a positive denormal would vanish once scaled for a data factor
MAX_SIDE = 2**31 - 1  # image sizes go to OpenCV as 32-bit ints
ROTATION_TOLERANCE = 1e-3  # |R R^T - I|: text files with 6 significant digits are well inside it


def intrinsics_problem(K: np.ndarray, width: int, height: int) -> str | None:
    """What makes a pinhole camera (K in pixels, image size) unusable."""
    K = np.asarray(K, np.float64)
    if not (1 <= width <= MAX_SIDE and 1 <= height <= MAX_SIDE):
        return f"image size {width}x{height} is out of range"
    if not (np.isfinite(K).all() and np.abs(K).max() <= MAX_VALUE):
        return f"intrinsics {K[0, 0]:g} {K[1, 1]:g} {K[0, 2]:g} {K[1, 2]:g} (fx fy cx cy) are not finite or too large"
    if not (K[0, 0] >= MIN_FOCAL and K[1, 1] >= MIN_FOCAL):
        return f"focal length {K[0, 0]:g}, {K[1, 1]:g} is not positive (at least {MIN_FOCAL:g} pixels)"
    return None


def pose_problem(world_to_cam: np.ndarray) -> str | None:
    """What keeps a 4x4 world-to-camera matrix from being a rigid motion within reach."""
    m = np.asarray(world_to_cam, np.float64)
    if m.shape != (4, 4) or not np.isfinite(m).all():
        return "is not finite"
    R, t = m[:3, :3], m[:3, 3]
    if np.abs(t).max() > MAX_VALUE:
        return f"has a translation {t.tolist()} beyond {MAX_VALUE:g}"
    if (not np.array_equal(m[3], [0.0, 0.0, 0.0, 1.0]) or np.abs(R).max() > 1.0 + ROTATION_TOLERANCE
            or np.abs(R @ R.T - np.eye(3)).max() > ROTATION_TOLERANCE):
        return "has a rotation part that is not a rotation matrix"
    if np.linalg.det(R) < 0:
        return "has a rotation part that is a reflection (determinant -1)"
    return None


def points_problem(points: np.ndarray) -> str | None:
    """What keeps points (an initial point cloud, keypoints) from being used: NaN, inf or absurd coordinates."""
    p = np.asarray(points, np.float64)
    if not np.isfinite(p).all():
        return "coordinates are NaN or infinite"
    if p.size and np.abs(p).max() > MAX_VALUE:
        return f"coordinates reach {np.abs(p).max():g}, beyond {MAX_VALUE:g}"
    return None


def checked_undistortion(K_src: np.ndarray, dist: Sequence[float], width: int, height: int
                         ) -> tuple[np.ndarray, Undistortion | None]:
    """`make_undistortion` with the camera checked before and after: wild but finite distortion coefficients
    give a negative or infinite undistorted focal length. Raises ValueError saying what is wrong."""
    problem = intrinsics_problem(K_src, width, height)
    if problem is None and not np.isfinite(np.asarray(dist, np.float64)).all():
        problem = "distortion coefficients are not finite"
    if problem is None:
        K, und = make_undistortion(K_src, dist, width, height)
        after = intrinsics_problem(K, width, height)
        if after is None:
            return K, und
        problem = f"its distortion cannot be undone ({after} after undistortion)"
    raise ValueError(problem)


def names_a_file(path: Path) -> bool:
    """`Path.is_file` for a name read from a file: False, not an OSError, when the OS will not even look the name
    up (a component longer than the file system allows)."""
    try:
        return path.is_file()
    except OSError:
        return False
