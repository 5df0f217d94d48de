"""Camera maths between viser and splatkit.

viser reports a client's camera as camera-to-world `wxyz` + `position` with OpenCV axes (x right, y down,
z forward: see viser's `CameraHandle.wxyz`, "the R in P_world = [R | t] p_camera"), a vertical field of view
`fov` in radians and the canvas aspect (width / height). splatkit's `Camera` is OpenCV too, so the rotation
carries over unchanged; only the intrinsics are built here from fov and the chosen render size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation

from splatkit.data.cameras import Camera


@dataclass(frozen=True)
class ViewPose:
    """A browser camera: camera-to-world rotation (wxyz) and position, vertical fov (radians), aspect w/h."""

    wxyz: np.ndarray
    position: np.ndarray
    fov: float
    aspect: float


def wxyz_to_matrix(wxyz: np.ndarray) -> np.ndarray:
    w, x, y, z = np.asarray(wxyz, np.float64)
    return Rotation.from_quat([x, y, z, w]).as_matrix()


def matrix_to_wxyz(R: np.ndarray) -> np.ndarray:
    x, y, z, w = Rotation.from_matrix(np.asarray(R, np.float64)).as_quat()
    return np.array([w, x, y, z])


def render_size(aspect: float, height: int) -> tuple[int, int]:
    """(width, height) of a render `height` pixels tall with the browser's aspect."""
    height = max(1, int(height))
    return max(1, round(height * aspect)), height


def camera_from_pose(pose: ViewPose, height: int, name: str = "viewer") -> Camera:
    """The splatkit `Camera` seeing what the browser sees, rendered `height` pixels tall."""
    width, height = render_size(pose.aspect, height)
    return Camera.from_pose(name, wxyz_to_matrix(pose.wxyz), pose.position, pose.fov, width, height)


def pose_from_camera(camera: Camera) -> ViewPose:
    """The browser pose matching a training camera (vertical fov from fy; a centred principal point assumed)."""
    c2w = camera.cam_to_world
    aspect = (camera.width / camera.height) * (camera.K[1, 1] / camera.K[0, 0])
    return ViewPose(matrix_to_wxyz(c2w[:3, :3]), c2w[:3, 3].copy(), camera.fov_y, aspect)


def up_from_cameras(cameras: list[Camera]) -> np.ndarray:
    """Mean "up" of the cameras: -y of each camera (OpenCV y points down) in world coordinates."""
    ups = np.stack([-c.cam_to_world[:3, 1] for c in cameras])
    up = ups.mean(0)
    return up / max(np.linalg.norm(up), 1e-12)


def up_from_points(points: np.ndarray) -> np.ndarray:
    """A guess without cameras: +z when the model is flattest along z (object captures, Blender), else -y
    (COLMAP scenes usually have -y up)."""
    lo, hi = robust_bounds(points)
    extent = hi - lo
    if extent[2] <= extent.min() + 1e-12:
        return np.array([0.0, 0.0, 1.0])
    return np.array([0.0, -1.0, 0.0])


def robust_bounds(points: np.ndarray, low: float = 5.0, high: float = 95.0) -> tuple[np.ndarray, np.ndarray]:
    """Per-axis 5th-95th percentiles: the box holding the bulk of the model, ignoring far-out floaters."""
    points = np.asarray(points, np.float64)
    if len(points) > 200_000:  # percentiles of a subsample are as good and much cheaper
        points = points[np.random.default_rng(0).choice(len(points), 200_000, replace=False)]
    return np.percentile(points, low, axis=0), np.percentile(points, high, axis=0)


@dataclass(frozen=True)
class Framing:
    """Where to put a browser camera: position, look-at point, up direction, vertical fov."""

    position: np.ndarray
    look_at: np.ndarray
    up: np.ndarray
    fov: float = math.radians(60.0)


def frame_points(points: np.ndarray, up: np.ndarray, fov: float = math.radians(60.0)) -> Framing:
    """A view of the robust bounding box from 30 degrees above its horizon, far enough to fit it in view."""
    lo, hi = robust_bounds(points)
    center = 0.5 * (lo + hi)
    radius = max(0.5 * float(np.linalg.norm(hi - lo)), 1e-6)
    up = np.asarray(up, np.float64) / max(np.linalg.norm(up), 1e-12)
    # Any horizontal direction: the world axis least aligned with `up`, made orthogonal to it.
    axis = np.eye(3)[int(np.argmin(np.abs(up)))]
    horizontal = axis - up * (axis @ up)
    horizontal /= np.linalg.norm(horizontal)
    elevation = math.radians(30.0)
    direction = math.cos(elevation) * horizontal + math.sin(elevation) * up
    distance = 1.1 * radius / math.sin(0.5 * fov)
    return Framing(center + distance * direction, center, up, fov)


def frame_camera(camera: Camera, points: np.ndarray, up: np.ndarray) -> Framing:
    """The training camera's own view; it looks at the model's robust centre's depth along its axis."""
    c2w = camera.cam_to_world
    forward, position = c2w[:3, 2], c2w[:3, 3]
    lo, hi = robust_bounds(points) if len(points) else (position, position + forward)
    depth = float((0.5 * (lo + hi) - position) @ forward)
    if depth <= 1e-6:
        depth = max(float(np.linalg.norm(hi - lo)), 1e-3)
    return Framing(position.copy(), position + depth * forward, np.asarray(up, np.float64), camera.fov_y)
