"""A scene from feed-forward point maps (`images/` + `pointmaps.npz`): cameras from the predicted poses and
intrinsics mapped back to the photos through each crop box, and an initial point cloud chosen from the
predicted points (confidence filter, stride, voxel merge, cap) with colours from the original photos."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from splatkit.data.cameras import Camera
from splatkit.data.checks import intrinsics_problem, names_a_file
from splatkit.data.images import image_size, read_image
from splatkit.data.masks import find_mask
from splatkit.data.feedforward import find_pointmaps
from splatkit.data.pointmaps import PointMaps
from splatkit.data.scene import Scene, Similarity, rig_radius
from splatkit.errors import SplatkitError, file_error

# An image's pose and intrinsics are taken to be wrong, not just noisy, when more of its points than this
# lie behind its camera, or their median reprojection error exceeds this share of the grid's diagonal
# (models' point and camera heads disagree by a few pixels; an inverted pose is off by hundreds).
BEHIND_SHARE = 0.5
REPROJECTION_SHARE = 0.1


@dataclass(frozen=True)
class PointMapInit:
    """How the initial point cloud of a point-map scene is chosen from the predicted points."""

    conf: str = "p50"
    """Keep points whose confidence is at least this: a number (an absolute threshold, e.g. 5 as VGGT's COLMAP
    export) or pN, the N-th percentile of all confidences (p50 keeps the better half, VGGT's demo default;
    p0 keeps all)."""
    stride: int = 1
    """Use every stride-th pixel of each image's point map along each axis."""
    voxel: float = 0.002
    """Merge the points in each voxel of this edge (a fraction of the camera rig's radius) into their mean;
    0 keeps every point."""
    max_points: int = 100_000
    """Keep at most this many points after merging (a seeded random subset, as VGGT's COLMAP export); 0: all."""

    def threshold(self, conf: np.ndarray) -> float:
        """The absolute confidence threshold for confidences `conf` (1-D). Raises SplatkitError for a malformed
        --conf."""
        text = self.conf.strip().lower()
        try:
            value = float(text[1:] if text.startswith("p") else text)
        except ValueError:
            value = float("nan")
        if not np.isfinite(value) or (text.startswith("p") and not 0 <= value <= 100):
            raise SplatkitError(f"--init.conf {self.conf!r}: give a number (absolute) or pN with 0 <= N <= 100 "
                                "(a percentile of the confidences)")
        if not text.startswith("p"):
            return value
        return float(np.percentile(conf, value)) if len(conf) else -np.inf


def load_pointmaps(root: Path, data_factor: int = 1, init: PointMapInit = PointMapInit()) -> Scene:
    """Cameras (photo intrinsics, scaled by `data_factor`) and initial points of `root/images/` + a feed-forward
    output beside it (`pointmaps.npz`, VGGT's `predictions.npz`: `splatkit.data.feedforward`), in the
    output's world frame (identity `to_normalized`, no split: `load_scene` does both).

    Raises SplatkitError naming the file for a missing photo, a photo its crop box misses, an image whose
    points lie mostly behind its camera (camera-to-world poses stored as cam_from_world), and no point left
    after the confidence filter.
    """
    root = Path(root)
    found = find_pointmaps(root)
    if found is None:
        raise file_error(root, "holds no point maps (pointmaps.npz or VGGT's predictions.npz)")
    path, reader = found
    maps = reader(root)
    images_dir = root / "images"
    if not images_dir.is_dir():
        raise file_error(images_dir, "image folder is missing (point-map scenes keep their photos in images/)")
    K = maps.photo_intrinsics()
    cameras = []
    for i, name in enumerate(maps.image_names):
        photo = images_dir / name
        size = image_size(photo) if names_a_file(photo) else None
        if size is None:
            raise file_error(photo, f"image listed in {path} is missing or unreadable")
        x0, y0, x1, y1 = maps.crop_box[i]
        if x1 <= 0 or y1 <= 0 or x0 >= size[0] or y0 >= size[1]:
            raise file_error(path, f"image {name}: crop_box {maps.crop_box[i].tolist()} lies outside the "
                                   f"{size[0]}x{size[1]} photo")
        if (problem := intrinsics_problem(K[i], *size)) is not None:
            raise file_error(path, f"image {name}: photo intrinsics {problem}")
        cameras.append(Camera(name, size[0], size[1], K[i], maps.cam_from_world[i], photo,
                              mask_path=find_mask(root / "masks", name)))
    points, colors = initial_points(maps, cameras, init, path)
    if data_factor != 1:
        cameras = [c.scaled(data_factor) for c in cameras]
    return Scene(root=root, cameras=cameras, points=points, colors=colors, to_normalized=Similarity(),
                 train_ids=list(range(len(cameras))), test_ids=[])


def initial_points(maps: PointMaps, cameras: list[Camera], init: PointMapInit, path: Path
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(P,3) float64 world points and (P,3) float32 colours in [0, 1]: confident, strided, in front of their
    camera and inside their photo, then voxel-merged and capped as `init` says."""
    for flag, value, low in (("stride", init.stride, 1), ("voxel", init.voxel, 0), ("max-points", init.max_points, 0)):
        if value < low:
            raise SplatkitError(f"--init.{flag} {value}: must be at least {low}")
    s = init.stride
    keep = np.ones(maps.world_points.shape[:3], bool) if maps.valid is None else maps.valid.copy()
    if maps.conf is not None:
        keep &= maps.conf >= init.threshold(maps.conf[keep])
    W, H = maps.grid_size
    grid_to_photo = maps.grid_to_photo()
    jj, ii = np.meshgrid(np.arange(0, W, s) + 0.5, np.arange(0, H, s) + 0.5)
    points, colors = [], []
    for i, cam in enumerate(cameras):
        sel = keep[i, ::s, ::s]
        xyz = maps.world_points[i, ::s, ::s][sel].astype(np.float64)
        depth = xyz @ cam.world_to_cam[2, :3] + cam.world_to_cam[2, 3]
        if (problem := _pose_problem(xyz, depth, jj[sel], ii[sel], maps, i)) is not None:
            raise file_error(path, f"image {cam.name}: {problem}; cam_from_world looks like camera-to-world "
                                   "poses (invert them), or the intrinsics are not in the grid's pixels")
        A = grid_to_photo[i]
        x = np.floor(A[0, 0] * jj[sel] + A[0, 2]).astype(np.int64)
        y = np.floor(A[1, 1] * ii[sel] + A[1, 2]).astype(np.int64)
        inside = (depth > 0) & (x >= 0) & (x < cam.width) & (y >= 0) & (y < cam.height)  # padding is outside
        photo = read_image(cam.image_path)
        points.append(xyz[inside])
        colors.append(photo[y[inside], x[inside], :3].astype(np.float32) / 255.0)
    points_all, colors_all = np.concatenate(points), np.concatenate(colors)
    if len(points_all) == 0:
        raise file_error(path, f"no predicted point passes --init.conf {init.conf} and lies in its photo")
    if init.voxel > 0:
        edge = init.voxel * rig_radius(np.stack([c.center for c in cameras]), points_all)
        points_all, colors_all = voxel_merge(points_all, colors_all, edge)
    if 0 < init.max_points < len(points_all):
        pick = np.sort(np.random.default_rng(0).choice(len(points_all), init.max_points, replace=False))
        points_all, colors_all = points_all[pick], colors_all[pick]
    return points_all, colors_all


def _pose_problem(xyz: np.ndarray, depth: np.ndarray, u: np.ndarray, v: np.ndarray, maps: PointMaps, i: int
                  ) -> str | None:
    """What shows image i's pose (or intrinsics) to be wrong: its points `xyz` (P,3), seen at grid pixels
    (u, v), lying behind the camera or projecting far from those pixels; None when they look right."""
    if len(xyz) == 0:
        return None
    behind = float(np.mean(depth <= 0))
    if behind > BEHIND_SHARE:
        return f"{behind:.0%} of its points lie behind its camera"
    front = depth > 0
    cam = xyz[front] @ maps.cam_from_world[i, :3, :3].T + maps.cam_from_world[i, :3, 3]
    uv = cam @ maps.intrinsics[i].T
    error = float(np.median(np.hypot(uv[:, 0] / uv[:, 2] - u[front], uv[:, 1] / uv[:, 2] - v[front])))
    limit = REPROJECTION_SHARE * float(np.hypot(*maps.grid_size))
    if error > limit:
        return f"its points project {error:.0f} grid pixels (median) from the pixels that see them"
    return None


def voxel_merge(points: np.ndarray, colors: np.ndarray, edge: float) -> tuple[np.ndarray, np.ndarray]:
    """One point per occupied voxel of edge `edge` (world units): the mean position and colour of its points,
    ordered by voxel."""
    cell = np.floor((points - points.min(0)) / edge).astype(np.int64)
    _, inverse, counts = np.unique(cell, axis=0, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)

    def mean(values: np.ndarray) -> np.ndarray:
        return np.stack([np.bincount(inverse, values[:, k], len(counts)) for k in range(3)], 1) / counts[:, None]

    return mean(points), mean(colors.astype(np.float64)).astype(np.float32)
