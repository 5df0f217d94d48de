"""`load_scene`: one entry point for every supported capture format, returning a normalised, split `Scene`."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from splatkit.data.blocks import BLOCK_FILE, narrow_to_block, read_block
from splatkit.data.colmap import load_colmap, model_dirs
from splatkit.data.feedforward import find_pointmaps
from splatkit.data.pointmap_scene import PointMapInit, load_pointmaps
from splatkit.data.scene import Scene, Similarity, rig_radius
from splatkit.data.transforms_json import load_transforms
from splatkit.errors import SplatkitError, file_error


def load_scene(path: str | Path, *, data_factor: int = 1, test_every: int = 8,
               pointmap_init: PointMapInit = PointMapInit()) -> Scene:
    """Load a COLMAP folder, a transforms*.json scene or a folder of feed-forward point maps (`images/` +
    `pointmaps.npz` or VGGT's `predictions.npz`, whose initial points `pointmap_init` chooses), downsampled by
    `data_factor`. A folder with both a COLMAP model and point maps is read as COLMAP. A block folder
    (`block.json`, `splatkit.data.blocks`) is its source scene narrowed to the block.

    The result lives in a normalised frame (centre = mean camera position, farthest camera at distance 1) so that
    learning rates and thresholds mean the same for every capture. Cameras are sorted by image name and every
    `test_every`-th one (index % test_every == 0, the Mip-NeRF 360 convention) is held out; `test_every=0` keeps
    all for training, as does a scene of one view. Blender scenes keep their own transforms_train/test split.

    Raises SplatkitError (one line naming the file) for a missing or unreadable scene, and when the split
    leaves no view to train on.
    """
    path = Path(path)
    if isinstance(data_factor, bool) or not isinstance(data_factor, int) or data_factor < 1:
        raise SplatkitError(f"data_factor must be a positive integer, got {data_factor!r}")
    if test_every < 0:
        raise SplatkitError(f"test_every must be >= 0, got {test_every!r}")
    if not path.exists():
        raise file_error(path, "scene path does not exist")

    if path.is_dir() and (path / BLOCK_FILE).is_file():  # a block of a partitioned scene (`splatkit partition`)
        block = read_block(path)
        full = load_scene(block.source, data_factor=data_factor, test_every=test_every, pointmap_init=pointmap_init)
        return narrow_to_block(full, block.cameras, block.region, path)
    predefined = False
    if path.is_dir() and any(d.is_dir() for d in model_dirs(path)):
        scene = load_colmap(path, data_factor)
    elif (path.is_file() and path.suffix == ".json") or (path.is_dir() and any(path.glob("transforms*.json"))):
        scene, predefined = load_transforms(path, data_factor)
    elif path.is_dir() and find_pointmaps(path) is not None:
        scene = load_pointmaps(path, data_factor, pointmap_init)
    else:
        raise file_error(path, "not a scene: expected a COLMAP folder (images/ + sparse/), transforms.json "
                               "(or transforms_train.json) or feed-forward point maps (images/ + pointmaps.npz "
                               "or predictions.npz)")
    scene = _normalise_and_split(scene, test_every, predefined)
    if not scene.train_ids:
        why = "by the scene's own train/test files" if predefined else f"with --test-every {test_every}"
        raise file_error(path, f"no training views: all {len(scene.cameras)} views are held out {why}; "
                               "use --test-every 0 to train on every view, or a larger value")
    return scene


def _normalise_and_split(scene: Scene, test_every: int, predefined: bool) -> Scene:
    order = sorted(range(len(scene.cameras)), key=lambda i: scene.cameras[i].name)
    new_index = {old: new for new, old in enumerate(order)}
    cameras = [scene.cameras[i] for i in order]

    centers = np.stack([c.center for c in cameras])
    sim = Similarity(scale=1.0 / rig_radius(centers, scene.points), center=centers.mean(0))
    cameras = [replace(c, world_to_cam=sim.apply_camera(c.world_to_cam)) for c in cameras]

    if predefined:
        train_ids = sorted(new_index[i] for i in scene.train_ids)
        test_ids = sorted(new_index[i] for i in scene.test_ids)
    elif test_every > 0 and len(cameras) > 1:  # a single view is trained on, not held out
        test_ids = [i for i in range(len(cameras)) if i % test_every == 0]
        train_ids = [i for i in range(len(cameras)) if i % test_every != 0]
    else:
        train_ids, test_ids = list(range(len(cameras))), []
    return Scene(root=scene.root, cameras=cameras, points=sim.apply_points(scene.points),
                 colors=np.asarray(scene.colors, np.float32), to_normalized=sim, train_ids=train_ids,
                 test_ids=test_ids, background=scene.background,
                 observations=None if scene.observations is None else [scene.observations[i] for i in order])
