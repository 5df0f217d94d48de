"""nerfstudio / instant-ngp / Blender-synthetic `transforms*.json` -> a `Scene` in the file's world frame.

These files store camera-to-world matrices with OpenGL camera axes (y up, looking down -z); splatkit's cameras
use OpenCV axes, so the camera's y and z axes are flipped here, once, at the boundary.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from splatkit.data.cameras import Camera
from splatkit.data.checks import checked_undistortion, names_a_file, pose_problem
from splatkit.data.images import has_alpha, image_size
from splatkit.data.init_points import random_points_in_view, read_ply_points
from splatkit.data.scene import Scene, Similarity
from splatkit.errors import file_error

_OPENGL_TO_OPENCV = np.diag([1.0, -1.0, -1.0, 1.0])
_DIST_KEYS = ("k1", "k2", "p1", "p2", "k3")
_SUPPORTED_MODELS = ("OPENCV", "PINHOLE", "SIMPLE_PINHOLE", "SIMPLE_RADIAL", "RADIAL")


def find_transforms(path: Path) -> tuple[Path, list[tuple[Path, str]]]:
    """(scene root, [(json file, split)]) with split 'all' for a single file, or 'train'/'test' (Blender)."""
    if path.is_file():
        return path.parent, [(path, "all")]
    if (path / "transforms.json").is_file():
        return path, [(path / "transforms.json", "all")]
    train = path / "transforms_train.json"
    if train.is_file():
        test = path / "transforms_test.json"
        if not test.is_file():
            test = path / "transforms_val.json"
        files = [(train, "train")] + ([(test, "test")] if test.is_file() else [])
        return path, files
    raise file_error(path, "no transforms.json or transforms_train.json found")


def _read_json(path: Path) -> dict:
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as e:  # ValueError: bad UTF-8, bad JSON, 5000-digit numbers
        raise file_error(path, f"not a readable JSON file ({e})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("frames"), list) or not meta["frames"]:
        raise file_error(path, "has no 'frames' list")
    return meta


def _image_path(json_path: Path, file_path: str) -> Path:
    """Resolve a frame's file_path; Blender files omit the extension, so try .png then .jpg."""
    # abspath: `..` resolved without following symlinks (the user's folder layout names the camera); unlike
    # Path.resolve it never raises for a long name
    p = Path(os.path.abspath(json_path.parent / file_path))
    for cand in (p, *(p.with_name(p.name + ext) for ext in (".png", ".jpg", ".jpeg", ".JPG", ".PNG") if p.name)):
        if names_a_file(cand):
            return cand
    raise file_error(p, f"image listed in {json_path.name} is missing")


def _file_name(json_path: Path, what: str, value: Any) -> str:
    """A path the json names: a non-empty string that the OS can take (no NUL)."""
    if not isinstance(value, str) or not value or "\0" in value:
        raise file_error(json_path, f"{what} must be a file name, not {repr(value)[:60]}")
    return value


def _mask_path(json_path: Path, frame: dict, index: int) -> Path | None:
    """The frame's `mask_path` (nerfstudio), resolved beside the json file; it must exist when named."""
    if frame.get("mask_path") is None:
        return None
    path = Path(os.path.realpath(json_path.parent / _file_name(json_path, f"frame {index}: mask_path",
                                                                frame["mask_path"])))
    if not names_a_file(path):
        raise file_error(path, f"mask listed in {json_path.name} (frame {index}) is missing")
    return path


def _number(json_path: Path, index: int, key: str, value: Any) -> float:
    """A value that must be a finite number (numeric strings pass, as they always did)."""
    try:
        number = math.nan if isinstance(value, bool) else float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number):
        raise file_error(json_path, f"frame {index}: {key} must be a finite number, not {repr(value)[:60]}")
    return number


def _focal(json_path: Path, index: int, key: str, angle: Any, size: int) -> float:
    """The focal length in pixels that a field of view `angle` (radians) across `size` pixels means."""
    angle = _number(json_path, index, key, angle)
    if not 0.0 < angle < math.pi:
        raise file_error(json_path, f"frame {index}: {key} {angle:g} is not an angle in (0, pi)")
    return 0.5 * size / math.tan(0.5 * angle)


def _frame_camera(json_path: Path, meta: dict, frame: dict, index: int, root: Path) -> Camera:
    if not isinstance(frame, dict):
        raise file_error(json_path, f"frame {index} is not an object")
    get = lambda k: frame.get(k, meta.get(k))  # per-frame values override the shared ones
    number = lambda k: _number(json_path, index, k, get(k))
    model = get("camera_model") or "OPENCV"
    if model not in _SUPPORTED_MODELS:
        raise file_error(json_path, f"unsupported camera_model {model!r}; supported: {', '.join(_SUPPORTED_MODELS)}")
    if "file_path" not in frame or "transform_matrix" not in frame:
        raise file_error(json_path, f"frame {index} needs 'file_path' and 'transform_matrix'")
    path = _image_path(json_path, _file_name(json_path, f"frame {index}: file_path", frame["file_path"]))
    if get("w") is None or get("h") is None:
        size = image_size(path)
        if size is None:
            raise file_error(path, "unreadable or corrupt image (needed to learn the image size)")
        w, h = size
    else:
        w, h = round(number("w")), round(number("h"))
    if get("fl_x") is not None:
        fx = number("fl_x")
    elif get("camera_angle_x") is not None:
        fx = _focal(json_path, index, "camera_angle_x", get("camera_angle_x"), w)
    else:
        raise file_error(json_path, "frames need fl_x or camera_angle_x")
    if get("fl_y") is not None:
        fy = number("fl_y")
    elif get("camera_angle_y") is not None:
        fy = _focal(json_path, index, "camera_angle_y", get("camera_angle_y"), h)
    else:
        fy = fx
    cx = number("cx") if get("cx") is not None else w / 2.0
    cy = number("cy") if get("cy") is not None else h / 2.0
    K_src = np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1]], np.float64)
    dist = [number(k) if get(k) else 0.0 for k in _DIST_KEYS]
    try:
        K, und = checked_undistortion(K_src, dist, w, h)
    except ValueError as e:
        raise file_error(json_path, f"frame {index}: {e}") from None

    try:
        c2w = np.asarray(frame["transform_matrix"], np.float64)
    except (TypeError, ValueError):
        c2w = np.zeros(0)
    if c2w.shape == (3, 4):
        c2w = np.vstack([c2w, [0.0, 0.0, 0.0, 1.0]])
    if c2w.shape != (4, 4) or not np.all(np.isfinite(c2w)):
        raise file_error(json_path, f"frame {index} has a malformed transform_matrix (need 4x4 numbers)")
    if (problem := pose_problem(c2w)) is not None:  # checked before inverting: a singular matrix has no inverse
        raise file_error(json_path, f"frame {index}: transform_matrix {problem}")
    world_to_cam = np.linalg.inv(c2w @ _OPENGL_TO_OPENCV)
    name = Path(os.path.relpath(path, root)).as_posix()  # unique even for images outside the scene folder
    return Camera(name, w, h, K, world_to_cam, path, und, _mask_path(json_path, frame, index))


def _has_alpha(path: Path) -> bool:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return has_alpha(im)
    except Exception:
        return False


def load_transforms(path: Path, data_factor: int = 1) -> tuple[Scene, bool]:
    """Cameras (scaled by `data_factor`), points and colours in the json's world frame.

    Returns the scene and whether its train/test split is predefined (Blender's separate files).
    """
    root, files = find_transforms(Path(path))
    cameras: list[Camera] = []
    train_ids: list[int] = []
    test_ids: list[int] = []
    points = colors = None
    for json_path, split in files:
        meta = _read_json(json_path)
        for k, frame in enumerate(meta["frames"]):
            (test_ids if split == "test" else train_ids).append(len(cameras))
            cameras.append(_frame_camera(json_path, meta, frame, k, root))
        if points is None and meta.get("ply_file_path"):
            points, colors = read_ply_points(json_path.parent / _file_name(json_path, "ply_file_path",
                                                                           meta["ply_file_path"]))
    if points is None or len(points) == 0:  # no point cloud, or an empty one: start from what the cameras see
        points, colors = random_points_in_view(cameras)
    background = (1.0, 1.0, 1.0) if cameras[0].image_path and _has_alpha(cameras[0].image_path) else None
    if data_factor != 1:
        cameras = [c.scaled(data_factor) for c in cameras]
    scene = Scene(root=root, cameras=cameras, points=points, colors=colors, to_normalized=Similarity(),
                  train_ids=train_ids, test_ids=test_ids, background=background)
    return scene, any(s != "all" for _, s in files)
