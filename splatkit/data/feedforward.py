"""Readers of what feed-forward 3D models write, each turning a tool's own output into `PointMaps`.

splatkit does not run the models (no weights can be fetched where it runs); it reads their outputs:

- splatkit's own `pointmaps.npz` (see `splatkit.data.pointmaps`), which any model's output can be put into;
- VGGT's `predictions.npz`, as its demo writes it beside `images/` (Wang et al., "VGGT: Visual Geometry
  Grounded Transformer", CVPR 2025; facebookresearch/vggt, demo_gradio.py);
- CUT3R's demo output folder (Wang et al., "Continuous 3D Perception Model with Persistent State", CVPR 2025;
  CUT3R/CUT3R, demo.py): depth/, conf/, camera/ with one file per frame;
- MonST3R's (Zhang et al., "MonST3R: A Simple Approach for Estimating Geometry in the Presence of Motion",
  ICLR 2025; Junyi42/monst3r, demo.py): pred_traj.txt, pred_intrinsics.txt, frame_*.npy, conf_*.npy,
  dynamic_mask_*.png.

None of them stores the photos' names: each ran on a folder's sorted photos, so the scene's `images/` must be
that folder, and the tool's resize and crop of each photo is recomputed to give the crop box.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image
from scipy.spatial.transform import Rotation

from splatkit.data.images import image_size
from splatkit.data.pointmaps import FILE_NAME, FORMAT_VERSION, NPZ_ERRORS, PointMaps, read_pointmaps
from splatkit.errors import file_error

VGGT_FILE = "predictions.npz"
VGGT_SIZE = 518  # the side VGGT resizes photos to
VGGT_PATCH = 14  # the other side is rounded to a multiple of its patch size
CUT3R_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".heic", ".heif")  # what each tool takes from a folder
MONST3R_SUFFIXES = (".jpg", ".jpeg", ".png", ".heic", ".heif")


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


def dust3r_grid(width: int, height: int, size: int = 512) -> tuple[int, int, np.ndarray]:
    """(grid width, grid height, crop box in photo pixels) of DUSt3R's `load_images` (naver/dust3r,
    dust3r/utils/image.py), which CUT3R, MonST3R and InstantSplat share: size 512 resizes the long side to 512
    and centre-crops both sides to multiples of 16 (a square to 4:3); size 224 resizes the short side to 224
    and centre-crops a square."""
    scale = max(width / height, height / width)
    long_side = size if size != 224 else round(224 * scale)
    s = max(width, height)
    new_w, new_h = int(round(width * long_side / s)), int(round(height * long_side / s))
    cx, cy = new_w // 2, new_h // 2
    if size == 224:
        half_w = half_h = min(cx, cy)
    else:
        half_w, half_h = ((2 * cx) // 16) * 8, ((2 * cy) // 16) * 8
        if new_w == new_h:
            half_h = 3 * half_w / 4
    sx, sy = width / new_w, height / new_h
    box = np.array([(cx - half_w) * sx, (cy - half_h) * sy, (cx + half_w) * sx, (cy + half_h) * sy])
    return int(2 * half_w), int(2 * half_h), box


def sorted_photos(images_dir: Path, suffixes: tuple[str, ...] | None = None) -> list[str]:
    """Names of the files in `images_dir` (those ending in `suffixes`, any case, if given), sorted as the
    tools sort them, which is the order of their outputs."""
    if not images_dir.is_dir():
        raise file_error(images_dir, "image folder is missing")
    return sorted(p.name for p in images_dir.iterdir()  # their globs skip hidden files (.DS_Store)
                  if p.is_file() and not p.name.startswith(".")
                  and (suffixes is None or p.suffix.lower() in suffixes))


def _crop_boxes(path: Path, names: list[str], grid: tuple[int, int], rules: dict[str, Callable]) -> np.ndarray:
    """Each photo's crop box under whichever of the tool's preprocessing `rules` gives the output's grid."""
    boxes = []
    for name in names:
        size = image_size(path.parent / "images" / name)
        if size is None:
            raise file_error(path.parent / "images" / name, "unreadable image")
        fits = [g[2] for g in (rule(*size) for rule in rules.values()) if g[:2] == grid]
        if not fits:
            raise file_error(path, f"its {grid[0]}x{grid[1]} grid is not what {' or '.join(rules)} makes of "
                                   f"{name} ({size[0]}x{size[1]})")
        boxes.append(fits[0])
    return np.stack(boxes)


def _photo_names(path: Path, count: int, suffixes: tuple[str, ...] | None) -> list[str]:
    names = sorted_photos(path.parent / "images", suffixes)
    if len(names) != count:
        raise file_error(path, f"holds {count} views but {path.parent / 'images'} has {len(names)} photos; the "
                               "outputs are matched to the sorted photos, so the folder must be the one the model "
                               "ran on")
    return names


def _load_array(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except NPZ_ERRORS as e:
        raise file_error(path, f"not a readable .npy file ({type(e).__name__}: {e})".replace("\n", " ")) from None


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
    except NPZ_ERRORS as e:
        raise file_error(path, f"not a readable .npz file ({type(e).__name__}: {e})".replace("\n", " ")) from None
    depth = arrays["depth"]
    if depth.ndim == 4 and depth.shape[-1] == 1:
        depth = depth[..., 0]
    if depth.ndim != 3:
        raise file_error(path, f"depth has shape {arrays['depth'].shape}, expected (S,H,W,1)")
    n, H, W = depth.shape
    names = _photo_names(path, n, None)  # the demos glob every file of images/
    boxes = _crop_boxes(path, names, (W, H), {"VGGT's crop": lambda w, h: vggt_grid(w, h, "crop"),
                                              "VGGT's pad": lambda w, h: vggt_grid(w, h, "pad")})
    out = {"format_version": np.int32(FORMAT_VERSION), "image_names": np.array(names), "depth": depth,
           "cam_from_world": arrays["extrinsic"], "intrinsics": arrays["intrinsic"], "crop_box": boxes}
    if points_key:
        out["world_points"] = arrays[points_key]
        out["valid"] = depth > 0  # its depth is positive where it predicted anything
    if "depth_conf" in arrays:
        out["conf"] = arrays["depth_conf"]
    return read_pointmaps(path, arrays=out)


DUST3R_RULES = {"DUSt3R's 512 crop": dust3r_grid, "DUSt3R's 224 crop": lambda w, h: dust3r_grid(w, h, 224)}


def read_cut3r(root: Path) -> PointMaps:
    """CUT3R's demo output in `root` (depth/%06d.npy z-depth (H,W), conf/%06d.npy (>= 1), camera/%06d.npz with
    `pose` 4x4 camera-to-world and `intrinsics` 3x3 in grid pixels, OpenCV axes) for the sorted photos of
    `root/images/` (jpg, jpeg, png, bmp, heic, heif, as CUT3R globs them) -> `PointMaps`."""
    root = Path(root)
    cameras = sorted((root / "camera").glob("*.npz"))
    names = _photo_names(root / "camera", len(cameras), CUT3R_SUFFIXES)
    depth, conf, c2w, K = [], [], [], []
    for f in cameras:
        try:
            with np.load(f, allow_pickle=False) as npz:
                c2w.append(np.asarray(npz["pose"], np.float64))
                K.append(np.asarray(npz["intrinsics"], np.float64))
        except NPZ_ERRORS as e:
            raise file_error(f, f"not a CUT3R camera file with pose and intrinsics ({type(e).__name__}: {e})"
                             .replace("\n", " ")) from None
        depth.append(_load_array(root / "depth" / f"{f.stem}.npy"))
        conf.append(_load_array(root / "conf" / f"{f.stem}.npy"))
    arrays = _frames(root / "camera", names, depth, conf, c2w, K)
    arrays["crop_box"] = _crop_boxes(root / "camera", names, arrays["depth"].shape[2:0:-1], DUST3R_RULES)
    return read_pointmaps(root / "camera", arrays=arrays)


def read_monst3r(root: Path) -> PointMaps:
    """MonST3R's demo output in `root` (pred_traj.txt: per frame `t x y z qw qx qy qz`, camera-to-world with a
    w-first quaternion; pred_intrinsics.txt: per frame K row-major; frame_%04d.npy z-depth; conf_%d.npy
    log-confidence, -inf where it cleaned a point away; dynamic_mask_%d.png, 255 on moving things, which are
    left out) for the sorted photos of `root/images/` -> `PointMaps`."""
    root = Path(root)
    traj_file = root / "pred_traj.txt"
    try:
        traj = np.loadtxt(traj_file, ndmin=2)
        K = np.loadtxt(root / "pred_intrinsics.txt", ndmin=2)
    except (OSError, ValueError) as e:
        raise file_error(traj_file, f"unreadable MonST3R output ({type(e).__name__}: {e})".replace("\n", " ")) from None
    if traj.shape[1] != 8 or K.shape != (len(traj), 9):
        raise file_error(traj_file, f"expected lines of 8 numbers (t x y z qw qx qy qz) and pred_intrinsics.txt "
                                    f"with 9 per frame; got {traj.shape} and {K.shape}")
    names = _photo_names(traj_file, len(traj), MONST3R_SUFFIXES)
    c2w = np.tile(np.eye(4), (len(traj), 1, 1))
    quats = traj[:, [5, 6, 7, 4]]  # to scipy's scalar-last order
    norms = np.linalg.norm(quats, axis=1)
    if not (np.isfinite(quats).all() and np.all(np.abs(norms - 1) < 1e-3)):
        raise file_error(traj_file, "holds a quaternion that is not of unit length")
    c2w[:, :3, :3] = Rotation.from_quat(quats / norms[:, None]).as_matrix()
    c2w[:, :3, 3] = traj[:, 1:4]
    depth = [_load_array(root / f"frame_{i:04d}.npy") for i in range(len(traj))]
    conf = [_load_array(root / f"conf_{i}.npy") for i in range(len(traj))]
    arrays = _frames(traj_file, names, depth, conf, list(c2w), list(K.reshape(-1, 3, 3)))
    dynamic = []
    for i in range(len(traj)):
        mask_file = root / f"dynamic_mask_{i}.png"
        if not mask_file.is_file():
            dynamic.append(np.zeros(arrays["depth"].shape[1:], bool))
            continue
        try:
            with Image.open(mask_file) as im:
                dynamic.append(np.asarray(im.convert("L")) > 127)
        except Exception as e:
            raise file_error(mask_file, f"unreadable mask ({type(e).__name__})") from None
    if {d.shape for d in dynamic} != {arrays["depth"].shape[1:]}:
        raise file_error(root, "dynamic masks are not the size of the depth maps")
    arrays["valid"] = ~np.stack(dynamic)
    arrays["crop_box"] = _crop_boxes(traj_file, names, arrays["depth"].shape[2:0:-1], DUST3R_RULES)
    return read_pointmaps(traj_file, arrays=arrays)


def _frames(path: Path, names: list[str], depth: list, conf: list, c2w: list, K: list) -> dict[str, np.ndarray]:
    """The pointmaps.npz keys common to per-frame outputs (all but the crop box), camera-to-world inverted."""
    shapes = {d.shape for d in depth} | {c.shape for c in conf}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise file_error(path, f"depth and confidence maps must all be one (H,W) size; found {sorted(shapes)}")
    c2w_all = np.stack(c2w)
    if c2w_all.shape[1:] != (4, 4) or np.stack(K).shape[1:] != (3, 3):
        raise file_error(path, "poses must be 4x4 and intrinsics 3x3")
    with np.errstate(all="ignore"):
        w2c = np.linalg.inv(c2w_all) if np.isfinite(c2w_all).all() else c2w_all  # read_pointmaps names the bad one
    return {"format_version": np.int32(FORMAT_VERSION), "image_names": np.array(names), "depth": np.stack(depth),
            "conf": np.stack(conf), "cam_from_world": w2c, "intrinsics": np.stack(K)}


# (file name beside images/, reader) for each feed-forward output a scene folder may hold, in order of preference
READERS: tuple[tuple[str, Callable[[Path], PointMaps]], ...] = (
    (FILE_NAME, lambda root: read_pointmaps(root / FILE_NAME)),
    (VGGT_FILE, read_vggt_predictions),
    ("camera/000000.npz", read_cut3r),
    ("pred_traj.txt", read_monst3r),
)


def find_pointmaps(root: Path) -> tuple[Path, Callable[[Path], PointMaps]] | None:
    """(file, reader taking `root`) of the feed-forward output in scene folder `root`, or None when it has none."""
    for name, reader in READERS:
        if (Path(root) / name).is_file():
            return Path(root) / name, reader
    return None
