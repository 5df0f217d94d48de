"""`splatkit process`: a scene folder `splatkit train` reads, made from a folder of photos or a video by
structure from motion (pycolmap, in-process), or from photos plus a feed-forward model's point maps.

Both roads end in the same layout: `<scene>/images/` + `<scene>/sparse/` (undistorted PINHOLE COLMAP model) or
`<scene>/images/` + `<scene>/pointmaps.npz`, with `<scene>/process.json` saying how it was made and what the
checks found. The folder is built beside its final place and renamed into it at the end, so an interrupted
run leaves no half scene.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal, Optional

import numpy as np
import tyro
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from splatkit.data.feedforward import VGGT_FILE, find_pointmaps
from splatkit.data.pointmap_scene import load_pointmaps
from splatkit.data.pointmaps import FILE_NAME, NPZ_ERRORS, write_pointmaps
from splatkit.data.sfm import CameraModel, SfmOptions, natural_key, run_sfm, undistort
from splatkit.data.video import VIDEO_SUFFIXES, extract_frames
from splatkit.errors import SplatkitError, file_error

EXHAUSTIVE_UP_TO = 100  # photos; beyond, exhaustive matching's n^2 pairs take too long on a CPU

console = Console(stderr=True)


@dataclass
class ProcessConfig:
    """Make a scene folder from photos or a video (structure from motion with pycolmap, no COLMAP binary),
    or from photos plus a feed-forward model's point maps (--method feedforward --pointmaps FILE)."""

    input: tyro.conf.Positional[Path]
    """A folder of photos or a video file (mp4, mov, m4v, avi, mkv, webm)."""
    out: Path
    """The scene folder to create (must not exist, or be empty)."""
    method: Literal["sfm", "feedforward"] = "sfm"
    """sfm: features, matching, incremental mapping, undistortion. feedforward: wrap --pointmaps with the photos."""
    pointmaps: Optional[Path] = None
    """With --method feedforward: a pointmaps.npz, VGGT's predictions.npz, or CUT3R's or MonST3R's output
    folder, made from the photos in INPUT (sorted by name)."""
    matcher: Literal["auto", "exhaustive", "sequential"] = "auto"
    """Which image pairs are matched: every pair (exhaustive), or each image with the next --overlap in name
    order (sequential: video frames, ordered captures). auto: sequential for a video or more than 100 photos."""
    overlap: int = 10
    frames: int = 150
    """Video: how many frames to keep, the sharpest of each of this many equal windows."""
    camera_model: CameraModel = "SIMPLE_RADIAL"
    """Lens model solved for (one camera shared by all images); images are undistorted to PINHOLE."""
    max_image_size: int = 1600
    """Feature extraction runs on images scaled to at most this many pixels on the long side."""
    keep_doubtful: bool = False
    """Keep images whose pose disagrees with their matched pairs (reported) instead of mapping without them."""
    threads: int = -1
    """CPU threads for pycolmap (-1: all)."""


def process(cfg: ProcessConfig) -> Path:
    """Build the scene `cfg.out` describes; returns its folder. Raises SplatkitError (one line) for a missing
    or unreadable input, an occupied output folder, and a reconstruction that fails."""
    source, out = Path(cfg.input), Path(cfg.out)
    if not source.exists():
        raise file_error(source, "does not exist")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise file_error(out, "already exists and is not empty; remove it or choose another --out")
    is_video = source.is_file()
    if is_video and source.suffix.lower() not in VIDEO_SUFFIXES:
        raise file_error(source, f"is a file but not a video ({', '.join(VIDEO_SUFFIXES)}); give a folder of photos "
                                 "or a video")
    if cfg.method == "feedforward" and (cfg.pointmaps is None or is_video):
        raise SplatkitError("--method feedforward needs a folder of photos as INPUT and --pointmaps FILE")
    if cfg.method == "sfm" and cfg.pointmaps is not None:
        raise SplatkitError("--pointmaps is read with --method feedforward; without it the photos go through "
                            "structure from motion")
    if cfg.frames < 1 or cfg.overlap < 1:
        raise SplatkitError(f"--frames {cfg.frames} and --overlap {cfg.overlap} must be at least 1")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    started = time.monotonic()
    try:
        tmp.mkdir()
        try:
            record = (_feedforward(cfg, source, tmp) if cfg.method == "feedforward"
                      else _sfm(cfg, source, is_video, tmp))
        except SplatkitError as e:  # name the scene being made, not its hidden staging folder
            raise SplatkitError(str(e).replace(str(tmp), str(out))) from None
        record.update(input=str(source), seconds=round(time.monotonic() - started, 1), options=_options(cfg))
        (tmp / "process.json").write_text(json.dumps(record, indent=2) + "\n")
        if out.exists():
            out.rmdir()
        os.rename(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _options(cfg: ProcessConfig) -> dict:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items() if k not in ("input", "out")}


def _progress() -> Progress:
    return Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=console, transient=True)


def _sfm(cfg: ProcessConfig, source: Path, is_video: bool, scene: Path) -> dict:
    work = scene / "colmap"
    record: dict = {"method": "sfm"}
    with _progress() as progress:
        if is_video:
            task = progress.add_task("decoding video, keeping the sharpest frames", total=None)
            frames = extract_frames(source, work / "frames", cfg.frames,
                                    lambda done, total: progress.update(task, completed=done, total=total))
            record["frames"] = {name: index for name, index in frames}
            photos = work / "frames"
        else:
            photos = source
        matcher = cfg.matcher
        if matcher == "auto":
            many = not is_video and sum(1 for p in photos.iterdir() if p.is_file()) > EXHAUSTIVE_UP_TO
            matcher = "sequential" if is_video or many else "exhaustive"
        options = SfmOptions(matcher=matcher, overlap=cfg.overlap, camera_model=cfg.camera_model,
                             max_image_size=cfg.max_image_size, threads=cfg.threads, keep_doubtful=cfg.keep_doubtful)
        task = progress.add_task("structure from motion", total=None)
        rec, report = run_sfm(photos, work, options, lambda name: progress.update(task, description=name))
        progress.update(task, description="undistorting")
        undistort(rec, photos, work, scene)
    if is_video:
        shutil.rmtree(work / "frames")  # the undistorted copies in images/ are what training reads
    for line in report.lines():
        console.print(f"splatkit: {line}", highlight=False, soft_wrap=True)
    if report.doubtful or report.dropped:
        console.print("[yellow]warning:[/] some images were registered where their matches say they are not; "
                      "more may be: photos of a symmetric or plain subject taken far apart match its other "
                      "side. Take photos closer together, or use --matcher sequential for an ordered capture",
                      highlight=False, soft_wrap=True)
    if report.registered < 0.5 * report.images:
        console.print(f"[yellow]warning:[/] only {report.registered} of {report.images} images are in the model; "
                      "training sees only those", highlight=False)
    record.update(matcher=matcher, images=report.images, registered=report.registered, models=report.models,
                  points=report.points, mean_reprojection_error=report.mean_reprojection_error,
                  doubtful=report.doubtful, left_out=report.dropped, unreadable=report.unreadable,
                  registered_images=sorted((im.name for im in rec.images.values() if im.has_pose), key=natural_key))
    return record


def _feedforward(cfg: ProcessConfig, photos: Path, scene: Path) -> dict:
    """images/ (copies of the photos the point maps name) + pointmaps.npz converted from whatever --pointmaps
    holds, checked as training will load it."""
    given = Path(cfg.pointmaps)
    if not given.exists():
        raise file_error(given, "does not exist")
    staged = scene / ".staged"  # the readers find a tool's output beside images/, under its own name
    staged.mkdir()
    (staged / "images").symlink_to(photos.absolute())
    if given.is_dir():
        for entry in given.iterdir():
            if entry.name != "images":
                (staged / entry.name).symlink_to(entry.absolute())
    else:
        (staged / _npz_kind(given)).symlink_to(given.absolute())
    found = find_pointmaps(staged)
    if found is None:
        raise file_error(given, "is not a pointmaps.npz, VGGT's predictions.npz, or a CUT3R or MonST3R output "
                                "folder")
    try:
        maps = found[1](staged)
    except SplatkitError as e:  # name the user's files, not the staging links
        raise SplatkitError(str(e).replace(str(staged / "images"), str(photos))
                            .replace(str(staged / _npz_kind(given)) if given.is_file() else str(staged),
                                     str(given))) from None
    shutil.rmtree(staged)
    for name in maps.image_names:
        if not (photos / name).is_file():
            raise file_error(photos / name, f"image listed in {given} is missing")
        (scene / "images" / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(photos / name, scene / "images" / name)
    write_pointmaps(scene / FILE_NAME, maps)
    load_pointmaps(scene)  # what training will refuse (inverted poses, a crop box off its photo) is refused now
    console.print(f"splatkit: {len(maps.image_names)} views with {maps.grid_size[0]}x{maps.grid_size[1]} point "
                  f"maps from {given}", highlight=False, soft_wrap=True)
    return {"method": "feedforward", "source": str(given), "source_kind": found[0].name,
            "views": len(maps.image_names)}


def _npz_kind(path: Path) -> str:
    """The name the readers know an .npz by: pointmaps.npz when it has a format_version, else VGGT's."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            return FILE_NAME if "format_version" in npz.files else VGGT_FILE
    except NPZ_ERRORS as e:
        raise file_error(path, f"not a readable .npz file ({type(e).__name__})") from None
