"""splatkit's point-map file, `pointmaps.npz`: what a feed-forward 3D model (VGGT, DUSt3R/MASt3R, CUT3R, ...)
predicts for a set of photos, in one documented layout that every native reader converts to.

The format (format_version 1; the key names, shapes and conventions below are the format, and later versions
only add optional keys). N images, each predicted on an H x W grid of the model's own pixels:

=================  ==================  ==========================================================================
key                shape, dtype        meaning
=================  ==================  ==========================================================================
format_version     () int              1
image_names        (N,) str            file names relative to the scene's `images/`
cam_from_world     (N,3,4) or (N,4,4)  OpenCV world-to-camera poses (x right, y down, z forward), float
intrinsics         (N,3,3) float       pinhole K in pixels of the H x W grid; pixel (i, j)'s centre is at
                                       (j + 0.5, i + 0.5), as in COLMAP
crop_box           (N,4) float         [x0, y0, x1, y1]: the rectangle of the original photo, in its pixels
                                       (edges, so a whole 800x600 photo is [0, 0, 800, 600]), that the grid
                                       covers. A crop lies inside the photo, padding reaches outside it, and
                                       an aspect-changing resize shows as (x1-x0)/W != (y1-y0)/H
world_points       (N,H,W,3) float     the 3D point seen at each grid pixel, world frame (or give `depth`)
depth              (N,H,W) float       z-depth along the camera's optical axis, used when `world_points` is
                                       absent
conf               (N,H,W) float       confidence, larger is better (optional)
valid              (N,H,W) bool        False where the model predicted nothing (optional)
colors             (N,H,W,3) uint8     the grid's colours (optional, informational: splatkit takes colours
                                       from the original photos)
=================  ==================  ==========================================================================

The grid maps to the photo by one scale and offset per axis: a grid point (u, v) is the photo point
(x0 + sx u, y0 + sy v) with sx = (x1 - x0) / W, sy = (y1 - y0) / H, so the photo's intrinsics are
[[sx, 0, x0], [0, sy, y0], [0, 0, 1]] @ K.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from splatkit.atomic import atomic_path
from splatkit.data.checks import MAX_VALUE, intrinsics_problem, pose_problem
from splatkit.errors import file_error

FORMAT_VERSION = 1
FILE_NAME = "pointmaps.npz"
# What reading a damaged .npz/.npy may raise: numpy hands on zipfile's, zlib's, tokenize's (a mangled .npy header
# is parsed as Python literals) and its own errors of many types, as PIL does for images; the only work inside
# these try blocks is reading the file, so anything raised there is the file's fault.
NPZ_ERRORS = (Exception,)


@dataclass
class PointMaps:
    """The contents of a `pointmaps.npz` (see the module docstring), checked and with world points resolved.

    Arrays: world_points (N,H,W,3) float32; cam_from_world (N,4,4) float64; intrinsics (N,3,3) float64 in grid
    pixels; crop_box (N,4) float64 in photo pixels; conf (N,H,W) float32 or None; valid (N,H,W) bool or None.
    """

    image_names: list[str]
    world_points: np.ndarray
    cam_from_world: np.ndarray
    intrinsics: np.ndarray
    crop_box: np.ndarray
    conf: np.ndarray | None = None
    valid: np.ndarray | None = None

    @property
    def grid_size(self) -> tuple[int, int]:
        """(W, H) of the model's grid."""
        return self.world_points.shape[2], self.world_points.shape[1]

    def grid_to_photo(self) -> np.ndarray:
        """(N,3,3) affine maps from grid pixel coordinates to photo pixel coordinates (the crop box)."""
        W, H = self.grid_size
        x0, y0, x1, y1 = self.crop_box.T
        A = np.zeros((len(self.crop_box), 3, 3))
        A[:, 0, 0], A[:, 0, 2] = (x1 - x0) / W, x0
        A[:, 1, 1], A[:, 1, 2] = (y1 - y0) / H, y0
        A[:, 2, 2] = 1.0
        return A

    def photo_intrinsics(self) -> np.ndarray:
        """(N,3,3) K of each original photo, in its pixels (COLMAP's pixel-centre convention)."""
        return self.grid_to_photo() @ self.intrinsics


def read_pointmaps(path: Path, arrays: dict[str, np.ndarray] | None = None) -> PointMaps:
    """Read and check a `pointmaps.npz`, or check `arrays` holding its keys (a reader of another tool's output
    has put them there), naming `path` in errors.

    Raises SplatkitError naming the file for a file that is not an .npz, a missing or misshapen key, a
    format_version this splatkit does not know, non-finite values where every value counts, bad poses or
    intrinsics, and an empty or inverted crop box. Depth maps become world points here.
    """
    path = Path(path)
    try:
        if arrays is None:
            with np.load(path, allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
    except NPZ_ERRORS as e:
        raise file_error(path, f"not a readable .npz file ({type(e).__name__}: {e})".replace("\n", " ")) from None
    for key, value in arrays.items():
        if not isinstance(value, (np.ndarray, np.generic)):  # numpy hands back a member without a header as bytes
            raise file_error(path, f"its '{key}' member is not an .npy array")

    def need(key: str) -> np.ndarray:
        if key not in arrays:
            raise file_error(path, f"has no '{key}' array (keys: {', '.join(sorted(arrays)) or 'none'})")
        return arrays[key]

    version = need("format_version")
    if version.shape != () or not np.issubdtype(version.dtype, np.integer) or int(version) != FORMAT_VERSION:
        shown = int(version) if version.shape == () and np.issubdtype(version.dtype, np.integer) else version.tolist()
        raise file_error(path, f"format_version {shown!r} is not {FORMAT_VERSION}, the version this splatkit reads")
    names = need("image_names")
    if names.ndim != 1 or names.dtype.kind != "U" or len(names) == 0:
        raise file_error(path, f"image_names must be a non-empty 1-D array of strings, not {names.dtype} "
                               f"{names.shape}")
    n = len(names)
    if "world_points" in arrays:
        grid = _shaped(path, arrays, "world_points", (n, None, None, 3), "f")
    else:
        if "depth" not in arrays:
            raise file_error(path, "has neither 'world_points' nor 'depth'")
        grid = _shaped(path, arrays, "depth", (n, None, None), "f")
    H, W = grid.shape[1:3]
    if H == 0 or W == 0:
        raise file_error(path, f"the point-map grid is empty ({W}x{H})")
    conf = _optional(path, arrays, "conf", (n, H, W), "fiu")
    valid = _optional(path, arrays, "valid", (n, H, W), "b")
    pose = _shaped(path, arrays, "cam_from_world", (n, None, 4), "f")
    if pose.shape[1] not in (3, 4):
        raise file_error(path, f"cam_from_world must be (N,3,4) or (N,4,4), not {pose.shape}")
    cam_from_world = np.tile(np.eye(4), (n, 1, 1))
    cam_from_world[:, : pose.shape[1]] = pose
    K = _shaped(path, arrays, "intrinsics", (n, 3, 3), "f").astype(np.float64)
    box = _shaped(path, arrays, "crop_box", (n, 4), "fiu").astype(np.float64)
    image_names = [str(s) for s in names]
    for i, name in enumerate(image_names):
        if (problem := pose_problem(cam_from_world[i])) is not None:
            raise file_error(path, f"image {name}: cam_from_world {problem}")
        if (problem := intrinsics_problem(K[i], W, H)) is not None:
            raise file_error(path, f"image {name}: intrinsics: {problem}")
        x0, y0, x1, y1 = box[i]
        if not (np.isfinite(box[i]).all() and np.abs(box[i]).max() <= MAX_VALUE and x1 > x0 and y1 > y0):
            raise file_error(path, f"image {name}: crop_box {box[i].tolist()} is not a box [x0, y0, x1, y1] with "
                                   "x1 > x0 and y1 > y0")
    known = valid if valid is not None else np.ones((n, H, W), bool)
    if "world_points" in arrays:
        world_points = grid.astype(np.float32)
    else:
        world_points = _unproject(grid.astype(np.float64), K, cam_from_world).astype(np.float32)
        known = known & (grid > 0)
    usable = known & np.isfinite(world_points).all(-1) & (np.abs(world_points) <= MAX_VALUE).all(-1)
    if conf is not None:
        conf = conf.astype(np.float32)
        usable &= np.isfinite(conf)
    return PointMaps(image_names, world_points, cam_from_world, K, box, conf,
                     None if usable.all() else usable)


def write_pointmaps(path: Path, maps: PointMaps) -> None:
    """Write `maps` as a format_version 1 `pointmaps.npz`, atomically (a killed write leaves the old file)."""
    arrays = {"format_version": np.int32(FORMAT_VERSION), "image_names": np.array(maps.image_names, dtype=str),
              "world_points": maps.world_points.astype(np.float32), "cam_from_world": maps.cam_from_world,
              "intrinsics": maps.intrinsics, "crop_box": maps.crop_box}
    if maps.conf is not None:
        arrays["conf"] = maps.conf.astype(np.float32)
    if maps.valid is not None:
        arrays["valid"] = maps.valid.astype(bool)
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez_compressed(tmp, **arrays)


def _shaped(path: Path, arrays: dict, key: str, shape: tuple, kinds: str) -> np.ndarray:
    """arrays[key], checked against `shape` (None: any length) and dtype kinds ('f' float, 'i'/'u' int, 'b')."""
    a = arrays.get(key)
    if a is None:
        raise file_error(path, f"has no '{key}' array")
    want = "x".join("?" if s is None else str(s) for s in shape)
    if a.ndim != len(shape) or any(s is not None and s != d for s, d in zip(shape, a.shape)):
        raise file_error(path, f"'{key}' has shape {a.shape}, expected {want}")
    if a.dtype.kind not in kinds:
        wanted = "booleans" if kinds == "b" else "floats" if kinds == "f" else "numbers"
        raise file_error(path, f"'{key}' has dtype {a.dtype}, expected {wanted}")
    return a


def _optional(path: Path, arrays: dict, key: str, shape: tuple, kinds: str) -> np.ndarray | None:
    return _shaped(path, arrays, key, shape, kinds) if key in arrays else None


def _unproject(depth: np.ndarray, K: np.ndarray, cam_from_world: np.ndarray) -> np.ndarray:
    """World points (N,H,W,3) from z-depth (N,H,W) at the grid's pixel centres."""
    n, H, W = depth.shape
    jj, ii = np.meshgrid(np.arange(W) + 0.5, np.arange(H) + 0.5)
    pix = np.stack([jj, ii, np.ones_like(jj)], -1)  # (H,W,3)
    rays = np.einsum("nij,hwj->nhwi", np.linalg.inv(K), pix)
    cam = rays * depth[..., None]
    R, t = cam_from_world[:, :3, :3], cam_from_world[:, :3, 3]
    return np.einsum("nji,nhwj->nhwi", R, cam - t[:, None, None, :])  # R^T (x - t)
