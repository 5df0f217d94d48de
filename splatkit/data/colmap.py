"""COLMAP scene folders (`images/` + `sparse/0/`, `sparse/` or InstantSplat's `sparse_N/0/`) -> a `Scene` in
COLMAP's world frame.

pycolmap does the parsing; this module adds what users need on top: undistortion for the radial/OpenCV models,
the `images_N` shortcut for downsampled training, and one-line errors that name the broken file (pycolmap's own
exceptions say e.g. "std::bad_alloc" without saying which file is truncated).
"""

from __future__ import annotations

import math
import mmap
import os
import struct
import tempfile
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pycolmap

from splatkit.data.cameras import Camera
from splatkit.data.checks import (ROTATION_TOLERANCE, checked_undistortion, names_a_file, points_problem,
                                  pose_problem)
from splatkit.data.images import image_size, opencv_intrinsics
from splatkit.data.init_points import random_points_in_view, read_ply_points
from splatkit.data.masks import find_mask
from splatkit.data.matches import Observations
from splatkit.data.scene import Scene, Similarity
from splatkit.errors import file_error

_MODEL_FILES = ("rigs", "cameras", "frames", "images", "points3D")  # rigs and frames: COLMAP >= 3.12
# Number of parameters per COLMAP camera model id (from the pycolmap in use, which may know newer models), used
# to check the structure of model files before pycolmap reads them.
CAMERA_NUM_PARAMS = {int(m): len(pycolmap.Camera.create_from_model_id(0, m, 1.0, 1, 1).params)
                     for m in pycolmap.CameraModelId.__members__.values() if int(m) >= 0}
SUPPORTED_MODELS = ("SIMPLE_PINHOLE", "PINHOLE", "SIMPLE_RADIAL", "RADIAL", "OPENCV")


def model_dirs(root: Path) -> list[Path]:
    """The folders of `root` that may hold its COLMAP model: `sparse/0/` and `sparse/` (COLMAP, VGGT,
    MASt3R-SfM), or InstantSplat's `sparse_<N views>/0/`."""
    return [root / "sparse" / "0", root / "sparse", *sorted(root.glob("sparse_*/0"))]


def find_model_dir(root: Path) -> Path:
    """`sparse/0/` if it holds a model, else `sparse/` itself, else the one InstantSplat `sparse_N/0/`."""
    found = [d for d in model_dirs(root) if any((d / f"cameras{ext}").is_file() for ext in (".bin", ".txt"))]
    if len(found) > 1 and found[0] not in (root / "sparse" / "0", root / "sparse"):
        raise file_error(root, f"holds {len(found)} InstantSplat models ({', '.join(d.parent.name for d in found)}); "
                               "keep the one to train beside images/ in a folder of its own")
    if not found:
        raise file_error(root / "sparse", "no COLMAP model found (expected sparse/0/ or sparse/ with "
                                          "cameras, images and points3D .bin or .txt files)")
    return found[0]


# ------------------------------------------------------------------------------------- .bin structure check


def check_bin_file(path: Path) -> str | None:
    """Walk a COLMAP .bin file's records without decoding them; return what is wrong, or None if it is sound."""
    kind = path.stem
    if path.stat().st_size == 0:
        return "file is empty"
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        return _walk_records(data, kind)


def _walk_records(data: mmap.mmap, kind: str) -> str | None:
    pos, index, count = 0, -1, 0

    def take(n: int) -> int:
        nonlocal pos
        if pos + n > len(data):
            where = "in its header" if index < 0 else f"inside record {index + 1} of {count}"
            raise EOFError(f"file ends at byte {len(data)} {where}")
        pos += n
        return pos - n

    try:
        (count,) = struct.unpack_from("<Q", data, take(8))
        if count > len(data):
            return f"header says {count} records, more than the file size allows"
        for index in range(count):
            if kind == "cameras":
                _, model, _, _ = struct.unpack_from("<iiQQ", data, take(24))
                if model not in CAMERA_NUM_PARAMS:
                    return f"unknown camera model id {model}"
                take(8 * CAMERA_NUM_PARAMS[model])
            elif kind == "images":
                take(4 + 8 * 7 + 4)
                end = data.find(b"\0", pos)
                if end < 0:
                    raise EOFError(f"file ends inside the name of image record {index + 1} of {count}")
                pos = end + 1
                (n2d,) = struct.unpack_from("<Q", data, take(8))
                take(24 * n2d)
            elif kind == "points3D":
                take(8 + 24 + 3 + 8)
                (track,) = struct.unpack_from("<Q", data, take(8))
                take(8 * track)
            elif kind == "rigs":
                (sensors,) = struct.unpack_from("<4xI", data, take(8))
                take(8 if sensors else 0)  # the reference sensor
                for _ in range(max(0, sensors - 1)):  # each takes >= 9 bytes, so the file's end bounds the loop
                    (has_pose,) = struct.unpack_from("<8xB", data, take(9))
                    take(56 if has_pose else 0)
            elif kind == "frames":
                (data_ids,) = struct.unpack_from("<64xI", data, take(8 + 56 + 4))
                take(16 * data_ids)
            else:
                return None
    except EOFError as e:
        return str(e)
    if pos != len(data):
        return f"{len(data) - pos} unexpected bytes after the last of {count} records"
    return None


def _read_reconstruction(model_dir: Path) -> pycolmap.Reconstruction:
    # Checked first, not only when pycolmap fails: pycolmap silently accepts files missing their last bytes.
    for name in _MODEL_FILES:
        f = model_dir / f"{name}.bin"
        if f.is_file():
            problem = check_bin_file(f)
            if problem is not None:
                raise file_error(f, f"truncated or corrupt COLMAP file ({problem})")
    try:
        if any((model_dir / f"points3D{ext}").is_file() for ext in (".bin", ".txt")):
            return pycolmap.Reconstruction(str(model_dir))
        with tempfile.TemporaryDirectory() as tmp:  # InstantSplat: no points3D file, which pycolmap requires
            for f in model_dir.iterdir():
                if f.stem in _MODEL_FILES and f.suffix in (".bin", ".txt"):
                    os.symlink(f.absolute(), Path(tmp) / f.name)
            binary = (model_dir / "cameras.bin").is_file()
            (Path(tmp) / f"points3D{'.bin' if binary else '.txt'}").write_bytes(bytes(8) if binary else b"")
            return pycolmap.Reconstruction(tmp)
    except Exception as e:
        reason = f"{type(e).__name__}: {e}".replace("\n", " ")
        raise file_error(model_dir, f"could not read the COLMAP model ({reason})") from None


# -------------------------------------------------------------------------------------------------- cameras


def _intrinsics(cam: pycolmap.Camera, model_file: Path) -> tuple[np.ndarray, list[float]]:
    """K (COLMAP pixel convention) and OpenCV distortion coefficients for one supported COLMAP camera."""
    name = cam.model.name
    p = [float(v) for v in cam.params]
    if name == "SIMPLE_PINHOLE":
        (f, cx, cy), fx, fy, dist = p, p[0], p[0], []
    elif name == "PINHOLE":
        fx, fy, cx, cy = p
        dist = []
    elif name == "SIMPLE_RADIAL":
        f, cx, cy, k = p
        fx = fy = f
        dist = [k, 0.0, 0.0, 0.0]
    elif name == "RADIAL":
        f, cx, cy, k1, k2 = p
        fx = fy = f
        dist = [k1, k2, 0.0, 0.0]
    elif name == "OPENCV":
        fx, fy, cx, cy, k1, k2, p1, p2 = p
        dist = [k1, k2, p1, p2]
    else:
        raise file_error(model_file, f"unsupported COLMAP camera model {name} (camera {cam.camera_id}); supported: "
                                     f"{', '.join(SUPPORTED_MODELS)}. Undistort first with `colmap image_undistorter`")
    K = np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1]], np.float64)
    return K, dist


def _world_to_cam(image: pycolmap.Image) -> np.ndarray | None:
    """The 4x4 pose, or None when its quaternion is not of unit length (pycolmap would turn it into a matrix
    that is no rotation); near-unit ones are normalised."""
    rigid = image.cam_from_world
    rigid = rigid() if callable(rigid) else rigid  # a method in pycolmap 4.x, a property before
    q = np.asarray(rigid.rotation.quat, np.float64)
    length = math.hypot(*q)
    if not abs(length - 1.0) <= ROTATION_TOLERANCE:  # NaN fails this too
        return None
    m = np.eye(4)
    m[:3, :3] = pycolmap.Rotation3d(q / length).matrix()
    m[:3, 3] = rigid.translation
    return m


def _use_downsampled_folder(root: Path, cameras: list[Camera], factor: int) -> list[Camera]:
    """Point cameras at `images_N/` when every file there exists at exactly the camera's (scaled) size."""
    folder = root / f"images_{factor}"
    if factor == 1 or not folder.is_dir() or any(c.undistortion is not None for c in cameras):
        return cameras
    out = []
    for cam in cameras:
        rel = Path(cam.name)
        for cand in (folder / rel, folder / rel.with_suffix(".png")):
            if image_size(cand) == (cam.width, cam.height):
                out.append(replace(cam, image_path=cand))
                break
        else:
            return cameras  # all or nothing, so every image goes through the same resampling
    return out


def load_colmap(root: Path, data_factor: int = 1) -> Scene:
    """Cameras (scaled by `data_factor`, undistorted), 3D points and colours, in COLMAP's world frame.

    A model without 3D points starts from its `points3D.ply` if it has one (InstantSplat writes its points
    there), else from random points the cameras see (as transforms.json scenes do). Masks
    in `masks/` beside `images/` are attached to their cameras (see `splatkit.data.masks`).
    The returned Scene has an identity `to_normalized` and no split; `load_scene` does both.
    """
    root = Path(root)
    model_dir = find_model_dir(root)
    ext = ".bin" if (model_dir / "cameras.bin").is_file() else ".txt"
    images_dir = root / "images"
    if not images_dir.is_dir():
        raise file_error(images_dir, "image folder is missing (COLMAP scenes keep their photos in images/)")
    rec = _read_reconstruction(model_dir)

    images = [im for im in rec.images.values() if im.has_pose]
    if not images:
        raise file_error(model_dir / f"images{ext}", "COLMAP model has no registered images")

    intrinsics: dict[int, tuple] = {}
    cameras: list[Camera] = []
    pose_file = model_dir / f"frames{ext}"  # where COLMAP >= 3.12 keeps poses; older models keep them with images
    pose_file = pose_file if pose_file.is_file() else model_dir / f"images{ext}"
    try:
        images = sorted(images, key=lambda im: im.name)
    except UnicodeDecodeError as e:  # pycolmap hands names to Python as UTF-8
        raise file_error(model_dir / f"images{ext}", f"image name {e.object[:60]!r} is not UTF-8 text") from None
    for im in images:
        cam = rec.cameras[im.camera_id]
        if im.camera_id not in intrinsics:
            K_src, dist = _intrinsics(cam, model_dir / f"cameras{ext}")
            try:
                intrinsics[im.camera_id] = checked_undistortion(K_src, dist, cam.width, cam.height)
            except ValueError as e:
                raise file_error(model_dir / f"cameras{ext}", f"camera {cam.camera_id}: {e}") from None
        K, und = intrinsics[im.camera_id]
        path = images_dir / im.name
        if not names_a_file(path):
            raise file_error(path, f"image listed in the COLMAP model ({model_dir / ('images' + ext)}) "
                                   "is missing on disk")
        world_to_cam = _world_to_cam(im)
        problem = "has a quaternion not of unit length" if world_to_cam is None else pose_problem(world_to_cam)
        if problem is not None:
            raise file_error(pose_file, f"image {im.name}: pose {problem}")
        cameras.append(Camera(im.name, cam.width, cam.height, K.copy(), world_to_cam, path, und,
                              find_mask(root / "masks", im.name)))

    if data_factor != 1:
        cameras = [c.scaled(data_factor) for c in cameras]
        cameras = _use_downsampled_folder(root, cameras, data_factor)
    observations = [_observations(im, rec.cameras[im.camera_id], camera, model_dir / f"images{ext}")
                    for im, camera in zip(images, cameras)]

    pts = rec.points3D
    if len(pts) == 0 and (model_dir / "points3D.ply").is_file():  # InstantSplat's points, as a .ply
        points, colors = read_ply_points(model_dir / "points3D.ply")
    elif len(pts) == 0:  # e.g. poses from elsewhere with an empty points3D: start from what the cameras see
        points, colors = random_points_in_view(cameras)
    else:
        points = np.array([p.xyz for p in pts.values()], np.float64)
        colors = np.array([p.color for p in pts.values()], np.float32) / 255.0
        if (problem := points_problem(points)) is not None:
            raise file_error(model_dir / f"points3D{ext}", problem)
    return Scene(root=root, cameras=cameras, points=points, colors=colors, to_normalized=Similarity(),
                 train_ids=list(range(len(cameras))), test_ids=[], observations=observations)


def _observations(image: pycolmap.Image, source: pycolmap.Camera, camera: Camera, images_file: Path
                  ) -> Observations:
    """The image's keypoints that observe 3D points, moved into `camera`'s image (undistorted, scaled)."""
    points = image.get_observation_points2D()
    xy = np.array([p.xy for p in points], np.float64).reshape(-1, 2)
    if (problem := points_problem(xy)) is not None:
        raise file_error(images_file, f"image {image.name}: keypoint {problem}")
    ids = np.array([p.point3D_id for p in points], np.int64)
    und = camera.undistortion
    if und is not None and len(xy):  # COLMAP's pixel centres are at +0.5, OpenCV's at integers
        K_pin = und.K_pinhole if und.K_pinhole is not None else camera.K
        xy = cv2.undistortPoints((xy - 0.5)[:, None], opencv_intrinsics(und.K_src), np.asarray(und.dist, np.float64),
                                 P=opencv_intrinsics(K_pin))[:, 0] + 0.5
    xy = xy * [camera.width / source.width, camera.height / source.height]
    return Observations(xy.astype(np.float32), ids)

