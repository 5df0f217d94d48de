"""Scenes built from the real captures in ../shared for tests: subsets, renamed folders, edited photos.

Photos are linked, not copied, unless a test edits them; the COLMAP model is rewritten with pycolmap.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import pycolmap
from PIL import Image


def cup_variant(shared_datasets: Path, dest: Path, *, keep: int | None = None,
                rename: Callable[[int, str], str] | None = None,
                edit: Callable[[int, np.ndarray], Image.Image] | None = None) -> Path:
    """cup_colmap at `dest` with only its first `keep` photos (in numeric order) registered, each named
    `rename(index, old_name)` in the model and under images/ (folders created), linked to the original photo,
    or, with `edit`, the image `edit(index, photo as uint8 HxWx3)` saved there (name it .png to stay lossless)."""
    source = (shared_datasets / "cup_colmap").resolve()
    rec = pycolmap.Reconstruction(str(source / "sparse" / "0"))
    ordered = sorted(rec.images.values(), key=lambda im: int(Path(im.name).stem))
    for k, image in enumerate(ordered):
        if keep is not None and k >= keep:
            rec.deregister_frame(image.frame_id)
            continue
        new = rename(k, image.name) if rename else image.name
        target = dest / "images" / new
        target.parent.mkdir(parents=True, exist_ok=True)
        if edit is None:
            target.symlink_to(source / "images" / image.name)
        else:
            with Image.open(source / "images" / image.name) as photo:
                edit(k, np.asarray(photo.convert("RGB"))).save(target)
        image.name = new
    model = dest / "sparse" / "0"
    model.mkdir(parents=True)
    rec.write(str(model))
    return dest


def cup_twins(shared_datasets: Path, dest: Path, *, every: int,
              change: Callable[[str, np.ndarray], np.ndarray]) -> Path:
    """cup_colmap at `dest` with every `every`-th photo (in numeric order) registered twice at its pose: as it is
    (linked, under its own name) and as `change(name, photo as float64 HxWx3 in [0, 1])`, saved losslessly as
    `<stem>_changed.png`. The other photos are left out. Both twins see the same render of any model, so what a
    per-photo model learns for the pair differs only by what `change` did."""
    source = (shared_datasets / "cup_colmap").resolve()
    rec = pycolmap.Reconstruction(str(source / "sparse" / "0"))
    ordered = sorted(rec.images.values(), key=lambda im: int(Path(im.name).stem))
    next_id = max(rec.images) + 1
    (dest / "images").mkdir(parents=True)
    for k, image in enumerate(ordered):
        if k % every:
            rec.deregister_frame(image.frame_id)
            continue
        (dest / "images" / image.name).symlink_to(source / "images" / image.name)
        twin = pycolmap.Image(name=f"{Path(image.name).stem}_changed.png", camera_id=image.camera_id,
                              image_id=next_id)
        rec.add_image_with_trivial_frame(twin, image.cam_from_world())
        next_id += 1
        with Image.open(source / "images" / image.name) as photo:
            changed = change(image.name, np.asarray(photo.convert("RGB"), dtype=np.float64) / 255)
        Image.fromarray(np.clip(np.round(changed * 255), 0, 255).astype(np.uint8)).save(dest / "images" / twin.name)
    model = dest / "sparse" / "0"
    model.mkdir(parents=True)
    rec.write(str(model))
    return dest
