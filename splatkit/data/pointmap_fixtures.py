"""Point maps of known scenes, standing in for a feed-forward model's output where no model can run: a COLMAP
scene's points projected with a z-buffer into each view's model grid, or the demo scene's exact surfaces
ray-traced through it. Written in every layout splatkit reads, they test the readers and the crop-box
mapping against geometry known exactly, and give the benchmarks a point-map initialisation."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image
from scipy.spatial.transform import Rotation

from splatkit.atomic import atomic_path, make_folder
from splatkit.data.cameras import Camera
from splatkit.data.feedforward import VGGT_FILE, vggt_grid
from splatkit.data.pointmaps import FILE_NAME, PointMaps, write_pointmaps

# (photo width, height) -> (grid width, grid height, crop box [x0, y0, x1, y1] in photo pixels)
GridRule = Callable[[int, int], tuple[int, int, np.ndarray]]


def _grid_intrinsics(cam: Camera, grid_w: int, grid_h: int, box: np.ndarray) -> np.ndarray:
    """K of the model grid: the inverse of the crop-box map applied to the photo's K."""
    x0, y0, x1, y1 = box
    A = np.array([[(x1 - x0) / grid_w, 0.0, x0], [0.0, (y1 - y0) / grid_h, y0], [0.0, 0.0, 1.0]])
    return np.linalg.solve(A, cam.K)


def projected_pointmaps(cameras: list[Camera], points: np.ndarray, grid: GridRule = vggt_grid,
                        conf: float = 5.0) -> PointMaps:
    """Point maps made by projecting `points` (P,3) into each camera's grid: each grid pixel holds the nearest
    point landing in it (z-buffer), confidence `conf`; pixels no point lands in are not valid."""
    maps = []
    for cam in cameras:
        gw, gh, box = grid(cam.width, cam.height)
        K = _grid_intrinsics(cam, gw, gh, box)
        x = points @ cam.world_to_cam[:3, :3].T + cam.world_to_cam[:3, 3]
        z = x[:, 2]
        front = z > 0
        uv = (x[front] @ K.T)[:, :2] / z[front, None]
        u, v = np.floor(uv[:, 0]).astype(np.int64), np.floor(uv[:, 1]).astype(np.int64)
        ok = (u >= 0) & (u < gw) & (v >= 0) & (v < gh)
        idx, depth = np.flatnonzero(front)[ok], z[front][ok]
        order = np.argsort(-depth, kind="stable")  # far first, so the nearest point is written last and wins
        cell = (v[ok] * gw + u[ok])[order]
        world = np.zeros((gh * gw, 3), np.float32)
        valid = np.zeros(gh * gw, bool)
        world[cell], valid[cell] = points[idx[order]], True
        maps.append((world.reshape(gh, gw, 3), valid.reshape(gh, gw), K, box))
    return _stack(cameras, maps, conf)


def grid_rays(cam: Camera, grid: GridRule) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(origins (M,3), unit directions (M,3), grid K, crop box) of the rays through the centres of `cam`'s
    grid pixels, row by row (M = grid width x height)."""
    gw, gh, box = grid(cam.width, cam.height)
    K = _grid_intrinsics(cam, gw, gh, box)
    jj, ii = np.meshgrid(np.arange(gw) + 0.5, np.arange(gh) + 0.5)
    rays = np.stack([(jj - K[0, 2]) / K[0, 0], (ii - K[1, 2]) / K[1, 1], np.ones_like(jj)], -1).reshape(-1, 3)
    d = rays @ cam.world_to_cam[:3, :3]  # R^T applied to each row
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    return np.broadcast_to(cam.center, d.shape).copy(), d, K, box


def traced_pointmaps(cameras: list[Camera], trace: Callable[[np.ndarray, np.ndarray], np.ndarray],
                     grid: GridRule) -> PointMaps:
    """Point maps of exact geometry: `trace(origins, directions)` (both (M,3)) gives each ray's hit distance;
    every grid pixel centre's ray is traced, so every pixel is valid, confidence 1."""
    maps = []
    for cam in cameras:
        o, d, K, box = grid_rays(cam, grid)
        gw, gh, _ = grid(cam.width, cam.height)
        world = o + trace(o, d)[:, None] * d
        maps.append((world.reshape(gh, gw, 3).astype(np.float32), np.ones((gh, gw), bool), K, box))
    return _stack(cameras, maps, 1.0)


def perturbed_poses(maps: PointMaps, degrees: float, shift: float, seed: int = 0) -> PointMaps:
    """`maps` with every pose but the first turned by `degrees` about a random axis and its centre moved by
    `shift` (world units) in a random direction, the points left where they are: the approximate poses of a
    feed-forward model, for pose refinement to correct (the first stays, as those models pin their frame)."""
    rng = np.random.default_rng(seed)
    w2c = maps.cam_from_world.copy()
    for i in range(1, len(w2c)):
        axis, direction = rng.normal(size=3), rng.normal(size=3)
        turn = Rotation.from_rotvec(axis / np.linalg.norm(axis) * np.radians(degrees)).as_matrix()
        c2w = np.linalg.inv(w2c[i])
        c2w[:3, :3] = c2w[:3, :3] @ turn.T
        c2w[:3, 3] += shift * direction / np.linalg.norm(direction)
        w2c[i] = np.linalg.inv(c2w)
    return replace(maps, cam_from_world=w2c)


def _stack(cameras: list[Camera], maps: list[tuple], conf: float) -> PointMaps:
    shapes = {m[0].shape for m in maps}
    if len(shapes) != 1:
        raise ValueError(f"the grid rule gives photos of this scene different grids {sorted(shapes)}")
    valid = np.stack([m[1] for m in maps])
    return PointMaps(image_names=[c.name for c in cameras], world_points=np.stack([m[0] for m in maps]),
                     cam_from_world=np.stack([c.world_to_cam for c in cameras]),
                     intrinsics=np.stack([m[2] for m in maps]), crop_box=np.stack([m[3] for m in maps]),
                     conf=np.where(valid, np.float32(conf), np.float32(0)), valid=valid)


def write_scene(out: Path, maps: PointMaps, photos: Path, layout: str = "pointmaps") -> Path:
    """A scene folder `out` with `images/` linking to the photos in `photos` and `maps` written as a tool
    writes them (`LAYOUTS`): "pointmaps" (splatkit's pointmaps.npz), "vggt" (VGGT demo's predictions.npz:
    depth (S,H,W,1) with depth_conf, extrinsic (S,3,4), intrinsic, world_points_from_depth, and a None entry as
    the demo saves), "cut3r" (depth/, conf/, camera/ per frame, camera-to-world poses) or "monst3r"
    (pred_traj.txt with w-first quaternions, pred_intrinsics.txt, frame_*.npy, log-confidence conf_*.npy,
    dynamic_mask_*.png). Pixels that are not valid get depth 0 and the lowest confidence each tool writes."""
    out = Path(out)
    make_folder(out / "images")
    for name in maps.image_names:
        link = out / "images" / name
        if not link.exists():
            make_folder(link.parent)
            os.symlink(os.path.abspath(photos / name), link)
    valid = maps.valid if maps.valid is not None else np.ones(maps.world_points.shape[:3], bool)
    conf = maps.conf if maps.conf is not None else valid.astype(np.float32)
    R, t = maps.cam_from_world[:, :3, :3], maps.cam_from_world[:, :3, 3]
    depth = np.einsum("nij,nhwj->nhwi", R, maps.world_points.astype(np.float64))[..., 2] + t[:, 2, None, None]
    depth = np.where(valid, depth, 0.0).astype(np.float32)
    c2w = np.linalg.inv(maps.cam_from_world)
    if layout == "pointmaps":
        write_pointmaps(out / FILE_NAME, maps)
    elif layout == "vggt":
        arrays = {"depth": depth[..., None], "depth_conf": np.where(valid, conf, 0).astype(np.float32),
                  "extrinsic": maps.cam_from_world[:, :3].astype(np.float32),
                  "intrinsic": maps.intrinsics.astype(np.float32),
                  "world_points_from_depth": np.where(valid[..., None], maps.world_points, 0).astype(np.float32),
                  "pose_enc_list": np.array(None, dtype=object)}
        with atomic_path(out / VGGT_FILE, suffix=".npz") as tmp:
            np.savez(tmp, **arrays)
    elif layout == "cut3r":
        for sub in ("depth", "conf", "camera"):
            make_folder(out / sub)
        for i in range(len(maps.image_names)):
            np.save(out / "depth" / f"{i:06d}.npy", depth[i])
            np.save(out / "conf" / f"{i:06d}.npy", np.where(valid[i], conf[i], 1.0).astype(np.float32))
            np.savez(out / "camera" / f"{i:06d}.npz", pose=c2w[i].astype(np.float32),
                     intrinsics=maps.intrinsics[i].astype(np.float32))
    elif layout == "monst3r":
        quats = Rotation.from_matrix(c2w[:, :3, :3]).as_quat()  # x y z w
        lines = [" ".join(str(v) for v in (float(i), *c2w[i, :3, 3], quats[i, 3], *quats[i, :3]))
                 for i in range(len(c2w))]
        (out / "pred_traj.txt").write_text("\n".join(lines) + "\n")
        np.savetxt(out / "pred_intrinsics.txt", maps.intrinsics.reshape(-1, 9), fmt="%.6f")
        for i in range(len(maps.image_names)):
            np.save(out / f"frame_{i:04d}.npy", depth[i])
            with np.errstate(divide="ignore"):
                np.save(out / f"conf_{i}.npy", np.log(np.where(valid[i], conf[i], 0.0)).astype(np.float32))
            Image.fromarray(np.zeros(depth[i].shape, np.uint8)).save(out / f"dynamic_mask_{i}.png")
    else:
        raise ValueError(f"unknown layout {layout!r}; expected one of {', '.join(LAYOUTS)}")
    return out


LAYOUTS = ("pointmaps", "vggt", "cut3r", "monst3r")
