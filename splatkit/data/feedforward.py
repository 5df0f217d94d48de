"""Readers of what feed-forward 3D models write, each turning a tool's own output into `PointMaps`.

splatkit does not run the models (no weights can be fetched where it runs); it reads their outputs:

- splatkit's own `pointmaps.npz` (see `splatkit.data.pointmaps`), which any model's output can be put into;
- VGGT's `predictions.npz`, as its demo writes it beside `images/` (Wang et al., "VGGT: Visual Geometry
  Grounded Transformer", CVPR 2025; facebookresearch/vggt, demo_gradio.py).
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Callable

import numpy as np

from splatkit.data.images import image_size
from splatkit.data.pointmaps import FILE_NAME, FORMAT_VERSION, PointMaps, read_pointmaps
from splatkit.errors import file_error

VGGT_FILE = "predictions.npz"
VGGT_SIZE = 518  # the side VGGT resizes photos to
VGGT_PATCH = 14  # the other side is rounded to a multiple of its patch size
PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp")


def vggt_grid(width: int, height: int, mode: str = "crop") -> tuple[int, int, np.ndarray]:
    """(grid width, grid height, crop box [x0, y0, x1, y1] in photo pixels) of VGGT's preprocessing of a
    width x height photo (vggt/utils/load_fn.py, load_and_preprocess_images).

    "crop" (the demos' default): width resized to 518, height to the nearest multiple of 14 at that scale
    (so x and y scales differ slightly), then centre-cropped to 518 if taller. "pad": the long side resized to
    518, the other to a multiple of 14, then padded (white) to 518 x 518, half the padding on each side
    (the extra pixel of an odd padding at the bottom/right).
    """
    if mode == "crop":
        new_w, new_h = VGGT_SIZE, round(height * (VGGT_SIZE / width) / VGGT_PATCH) * VGGT_PATCH
        grid_w, grid_h = new_w, min(new_h, VGGT_SIZE)
        left, top = 0, -((new_h - VGGT_SIZE) // 2 if new_h > VGGT_SIZE else 0)
    elif mode == "pad":
        if width >= height:
            new_w, new_h = VGGT_SIZE, round(height * (VGGT_SIZE / width) / VGGT_PATCH) * VGGT_PATCH
        else:
            new_w, new_h = round(width * (VGGT_SIZE / height) / VGGT_PATCH) * VGGT_PATCH, VGGT_SIZE
        grid_w = grid_h = VGGT_SIZE
        left, top = (VGGT_SIZE - new_w) // 2, (VGGT_SIZE - new_h) // 2
    else:
        raise ValueError(f"unknown VGGT preprocessing mode {mode!r}")
    sx, sy = width / new_w, height / new_h  # photo pixels per resized pixel
    box = np.array([-left * sx, -top * sy, (grid_w - left) * sx, (grid_h - top) * sy])
    return grid_w, grid_h, box


def sorted_photos(images_dir: Path) -> list[str]:
    """Names of the photos in `images_dir`, sorted as VGGT's demos sort them (the order of their outputs)."""
    if not images_dir.is_dir():
        raise file_error(images_dir, "image folder is missing")
    return sorted(p.name for p in images_dir.iterdir() if p.suffix.lower() in PHOTO_SUFFIXES and p.is_file())


def read_vggt_predictions(root: Path) -> PointMaps:
    """`root/predictions.npz` (VGGT's demo output) with the photos in `root/images/` -> `PointMaps`.

    Uses the depth branch as VGGT's demos do by default: `world_points_from_depth` (else `depth` unprojected
    through `extrinsic` (S,3,4), OpenCV world-to-camera, and `intrinsic` (S,3,3), pixels of the grid) with
    `depth_conf`. Image names are not stored; the demos feed the sorted `images/`, so those are the names,
    and the crop box is VGGT's crop or pad preprocessing, whichever gives the grid's shape.
    Raises SplatkitError naming the file when keys are missing, the image count differs, or neither
    preprocessing explains the grid.
    """
    path = Path(root) / VGGT_FILE
    try:
        with np.load(path, allow_pickle=False) as npz:  # keys holding None (pose_enc_list) are never touched
            keys = set(npz.files)
            missing = {"extrinsic", "intrinsic", "depth"} - keys
            if missing:
                raise file_error(path, f"has no {', '.join(sorted(missing))} (not a VGGT predictions file?)")
            points_key = "world_points_from_depth" if "world_points_from_depth" in keys else None
            arrays = {k: npz[k] for k in ("extrinsic", "intrinsic", "depth", "depth_conf", points_key)
                      if k in keys}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise file_error(path, f"not a readable .npz file ({type(e).__name__}: {e})".replace("\n", " ")) from None
    depth = arrays["depth"]
    if depth.ndim == 4 and depth.shape[-1] == 1:
        depth = depth[..., 0]
    if depth.ndim != 3:
        raise file_error(path, f"depth has shape {arrays['depth'].shape}, expected (S,H,W,1)")
    n, H, W = depth.shape
    names = sorted_photos(path.parent / "images")
    if len(names) != n:
        raise file_error(path, f"holds {n} views but {path.parent / 'images'} has {len(names)} photos; VGGT's "
                               "outputs are matched to the sorted photos, so the folder must be the one it ran on")
    boxes = []
    for name in names:
        size = image_size(path.parent / "images" / name)
        if size is None:
            raise file_error(path.parent / "images" / name, "unreadable image")
        fits = [g[2] for g in (vggt_grid(*size, m) for m in ("crop", "pad")) if g[:2] == (W, H)]
        if not fits:
            raise file_error(path, f"its {W}x{H} grid is neither VGGT's crop nor its pad preprocessing of "
                                   f"{name} ({size[0]}x{size[1]})")
        boxes.append(fits[0])
    out = {"format_version": np.int32(FORMAT_VERSION), "image_names": np.array(names), "depth": depth,
           "cam_from_world": arrays["extrinsic"], "intrinsics": arrays["intrinsic"], "crop_box": np.stack(boxes)}
    if points_key:
        out["world_points"] = arrays[points_key]
    if "depth_conf" in arrays:
        out["conf"] = arrays["depth_conf"]
    return read_pointmaps(path, arrays=out)


# (file name beside images/, reader) for each feed-forward output a scene folder may hold, in order of preference
READERS: tuple[tuple[str, Callable[[Path], PointMaps]], ...] = (
    (FILE_NAME, lambda root: read_pointmaps(root / FILE_NAME)),
    (VGGT_FILE, read_vggt_predictions),
)


def find_pointmaps(root: Path) -> tuple[Path, Callable[[Path], PointMaps]] | None:
    """(file, reader taking `root`) of the feed-forward output in scene folder `root`, or None when it has none."""
    for name, reader in READERS:
        if (Path(root) / name).is_file():
            return Path(root) / name, reader
    return None
