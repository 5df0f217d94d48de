"""City-scale captures in blocks: split a scene's ground plane into a grid, train each block as its own scene,
merge the blocks' Gaussians back into one model (VastGaussian, Lin et al. 2024; CityGS, Liu et al. 2024).

The ground plane is perpendicular to the cameras' mean up direction (-y of OpenCV cameras). Its grid spans the
2nd to 98th percentile of the scene's points; the outer cells reach to infinity, so the cells' *cores* tile the
whole plane and every point and Gaussian lies in exactly one core (intervals are half-open, [lo, hi)). A
block trains on its core grown by `margin` of a cell on each side (points inside it start its Gaussians) and on
the cameras that stand in that grown region or see it: at least `visibility` of the scene points a camera
projects into its image lie in the grown region (the visibility-based selection of VastGaussian, with points
standing in for its projected box area).

A block is a folder holding `block.json` (the source scene's path relative to it, the block's cameras by
image name, its region in the source's original frame); `load_scene` reads it as the source scene narrowed to
the block, with the source's own held-out split, so a merged model is scored on the full scene's held-out views.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from splatkit.atomic import write_text_atomic
from splatkit.data.cameras import Camera
from splatkit.data.scene import Scene
from splatkit.errors import SplatkitError, file_error

BLOCK_FILE = "block.json"
FORMAT = "splatkit-block"
VERSION = 1


@dataclass(frozen=True)
class BlockRegion:
    """A block's place on the ground plane, in the source scene's original frame (e.g. COLMAP's units).

    `uv = x @ axes.T` puts a 3D point on the plane; the block's core is lo <= uv < hi (per axis, None
    for an unbounded side) and its grown region the core widened by `margin` (same units) on bounded sides."""

    axes: np.ndarray  # (2, 3) orthonormal, both perpendicular to the up direction
    lo: tuple[float | None, float | None]
    hi: tuple[float | None, float | None]
    margin: tuple[float, float]

    def plane(self, points: np.ndarray) -> np.ndarray:
        """(N, 2) plane coordinates of (N, 3) points (float64)."""
        return np.asarray(points, np.float64) @ self.axes.T

    def inside(self, points: np.ndarray, grown: bool = False) -> np.ndarray:
        """(N,) bool: which points lie in the core (or, with `grown`, in the grown region)."""
        uv = self.plane(points)
        keep = np.ones(len(uv), bool)
        for axis in range(2):
            pad = self.margin[axis] if grown else 0.0
            if self.lo[axis] is not None:
                keep &= uv[:, axis] >= self.lo[axis] - pad
            if self.hi[axis] is not None:
                keep &= uv[:, axis] < self.hi[axis] + pad
        return keep

    def to_json(self) -> dict:
        return {"axes": self.axes.tolist(), "lo": list(self.lo),
                "hi": list(self.hi), "margin": list(self.margin)}

    @classmethod
    def from_json(cls, d: dict) -> "BlockRegion":
        return cls(np.asarray(d["axes"], np.float64), tuple(d["lo"]),
                   tuple(d["hi"]), tuple(d["margin"]))


@dataclass(frozen=True)
class Block:
    name: str  # "block_<row>_<col>"
    cameras: list[str]  # image names
    region: BlockRegion
    point_count: int


def ground_axes(scene: Scene) -> np.ndarray:
    """(2, 3) orthonormal axes of the ground plane: perpendicular to the cameras' mean up vector (-y)."""
    up = -np.mean([c.cam_to_world[:3, 1] for c in scene.cameras], axis=0)
    up /= np.linalg.norm(up)
    helper = np.eye(3)[np.argmin(np.abs(up))]  # the world axis least aligned with up
    first = np.cross(up, helper)
    first /= np.linalg.norm(first)
    return np.stack([first, np.cross(up, first)])


def _seen(camera: Camera, points: np.ndarray) -> np.ndarray:
    """(N,) mask of `points` (training frame) that `camera` projects in front of it and inside its image."""
    cam = points @ camera.world_to_cam[:3, :3].T + camera.world_to_cam[:3, 3]
    z = cam[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        px = cam @ camera.K.T
        u, v = px[:, 0] / z, px[:, 1] / z
    return (z > 1e-6) & (u >= 0) & (u < camera.width) & (v >= 0) & (v < camera.height)


def partition(scene: Scene, rows: int, cols: int, margin: float = 0.2, visibility: float = 0.25) -> list[Block]:
    """The blocks of a `rows` x `cols` grid over `scene` (a loaded scene in its training frame; regions are
    returned in its original frame). A camera joins every block whose grown region holds its centre (the
    block whose core holds it among them) or `visibility` of the points it sees. Raises SplatkitError for a grid
    smaller than 1x1 or a margin or visibility out of [0, 1]."""
    if rows < 1 or cols < 1:
        raise SplatkitError(f"--blocks {rows}x{cols}: needs at least 1x1")
    if not (0 <= margin <= 1 and 0 < visibility <= 1):
        raise SplatkitError(f"--margin {margin} / --visibility {visibility}: must lie in [0, 1] and (0, 1]")
    back = scene.to_normalized.inverse()
    points = back.apply_points(scene.points).astype(np.float64)
    centers = back.apply_points(np.stack([c.center for c in scene.cameras])).astype(np.float64)
    axes = ground_axes(scene)  # the training frame only scales and shifts: directions are the original's
    uv = (points if len(points) else centers) @ axes.T
    lo, hi = np.percentile(uv, 2, axis=0), np.percentile(uv, 98, axis=0)
    edges = [np.linspace(lo[0], hi[0], rows + 1), np.linspace(lo[1], hi[1], cols + 1)]
    size = ((hi[0] - lo[0]) / rows, (hi[1] - lo[1]) / cols)
    names, regions = [], []
    for r in range(rows):
        for c in range(cols):
            names.append(f"block_{r}_{c}")
            regions.append(BlockRegion(
                axes, (None if r == 0 else float(edges[0][r]), None if c == 0 else float(edges[1][c])),
                (None if r == rows - 1 else float(edges[0][r + 1]), None if c == cols - 1 else float(edges[1][c + 1])),
                (margin * size[0], margin * size[1])))
    grown = np.stack([region.inside(points, grown=True) for region in regions])  # (blocks, N)
    joins = np.stack([region.inside(centers, grown=True) for region in regions], 1)  # (cameras, blocks)
    training_points = np.asarray(scene.points, np.float64)
    for i, camera in enumerate(scene.cameras):  # one camera's mask at a time: memory ~ blocks x points
        seen = _seen(camera, training_points)
        if seen.any():
            joins[i] |= grown[:, seen].mean(1) >= visibility
    return [Block(name, [cam.name for i, cam in enumerate(scene.cameras) if joins[i, b]], region,
                  int(grown[b].sum())) for b, (name, region) in enumerate(zip(names, regions))]


def grid_for(scene: Scene, cameras_per_block: int) -> tuple[int, int]:
    """A rows x cols grid giving about `cameras_per_block` cameras per block, cells as square as the scene's
    extent on the ground plane allows."""
    if cameras_per_block < 1:
        raise SplatkitError(f"--cameras-per-block {cameras_per_block}: must be at least 1")
    count = max(1, math.ceil(len(scene.cameras) / cameras_per_block))
    uv = np.stack([c.center for c in scene.cameras]) @ ground_axes(scene).T
    spread = np.ptp(uv, axis=0) + 1e-12
    rows = max(1, min(count, round(math.sqrt(count * spread[0] / spread[1]))))
    return rows, math.ceil(count / rows)


def write_blocks(blocks: list[Block], source: Path, out: Path) -> list[Path]:
    """One folder per block under `out` holding its block.json (atomic writes; each names all the partition's
    blocks, so a merge can tell a missing one); returns the folders."""
    folders = []
    for block in blocks:
        folder = out / block.name
        folder.mkdir(parents=True, exist_ok=True)
        record = {"format": FORMAT, "version": VERSION,
                  "source": os.path.relpath(source.resolve(), folder.resolve()), "block": block.name,
                  "partition": [b.name for b in blocks],
                  "cameras": block.cameras, "region": block.region.to_json()}
        write_text_atomic(folder / BLOCK_FILE, json.dumps(record, indent=1))
        folders.append(folder)
    return folders


@dataclass(frozen=True)
class BlockRecord:
    """What a block folder's block.json says."""

    source: Path  # the partitioned scene
    name: str
    partition: list[str]  # the names of all blocks of the partition
    cameras: list[str]
    region: BlockRegion


def read_block(folder: Path) -> BlockRecord:
    """A block folder's record; one line naming the file when it is broken."""
    path = folder / BLOCK_FILE
    try:
        record = json.loads(path.read_text())
        if record.get("format") != FORMAT or record.get("version") != VERSION:
            raise ValueError(f"not a {FORMAT} version {VERSION} file")
        return BlockRecord((folder / record["source"]).resolve(), str(record["block"]),
                           [str(n) for n in record["partition"]], [str(n) for n in record["cameras"]],
                           BlockRegion.from_json(record["region"]))
    except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
        raise file_error(path, f"unreadable block file ({exc})") from None


def narrow_to_block(scene: Scene, names: list[str], region: BlockRegion, path: Path) -> Scene:
    """`scene` (the source, loaded and split) narrowed to a block's cameras, keeping each one's train/held-out
    side, and to the points in the block's grown region."""
    index = {c.name: i for i, c in enumerate(scene.cameras)}
    missing = [n for n in names if n not in index]
    if missing:
        raise file_error(path / BLOCK_FILE, f"camera {missing[0]} is not in the source scene")
    kept = sorted(index[n] for n in names)
    new = {old: i for i, old in enumerate(kept)}
    inside = region.inside(scene.to_normalized.inverse().apply_points(scene.points), grown=True)
    train = [new[i] for i in scene.train_ids if i in new]
    if not train:
        raise file_error(path / BLOCK_FILE, "the block has no training views")
    return Scene(root=scene.root, cameras=[scene.cameras[i] for i in kept], points=scene.points[inside],
                 colors=scene.colors[inside], to_normalized=scene.to_normalized, train_ids=train,
                 test_ids=[new[i] for i in scene.test_ids if i in new], background=scene.background,
                 observations=None if scene.observations is None else [scene.observations[i] for i in kept])
