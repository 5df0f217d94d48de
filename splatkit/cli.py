"""`splatkit` command line: one tyro config dataclass per subcommand, each with a small handler."""

from __future__ import annotations

import dataclasses
import functools
import json
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal, Optional

import numpy as np
import torch
import tyro
from scipy.spatial.transform import Rotation
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from splatkit.atomic import write_text_atomic
from splatkit.data import Scene, load_scene
from splatkit.data.blocks import BLOCK_FILE, grid_for, partition, read_block, write_blocks
from splatkit.data.cameras import Camera
from splatkit.data.process import ProcessConfig, process
from splatkit.data.scene import Similarity
from splatkit.errors import SplatkitError, file_error
from splatkit.io.compact import save_compact
from splatkit.io.export import describe, slimmed, stored_count, write_model
from splatkit.io.formats import EXTENSIONS, detect_format, format_from_extension, read_splats, stored_bytes
from splatkit.io.merge import merge_blocks
from splatkit.io.ply import save_ply
from splatkit.model.gaussians import Gaussians
from splatkit.model.levels import LevelChoice, band_edges, level_counts, level_floors
from splatkit.model.quantized import QuantizedGaussians
from splatkit.render import rasterize, resolve_device
from splatkit.render.api import Device
from splatkit.render.camera_path import CameraPath, render_video
from splatkit.train.appearance import AppearanceDecoder
from splatkit.train.config import TrainConfig, lod_preset, quantize_preset
from splatkit.train.run_record import RunRecord, read_run
from splatkit.train.evaluate import evaluate, save_png, to_uint8
from splatkit.train.trainer import console, open_images, resolve_scene_path, train
from splatkit.viewer.camera import up_from_cameras
from splatkit.viewer.config import ViewConfig


@dataclass
class LevelFlags:
    """Which levels of a model with levels of detail (FLoD, `train --lod`) to draw (they need a model that has
    levels; without these flags a model is drawn as it is, a levelled one at its finest level)."""

    level: Optional[int] = None
    """Draw this level (1 = coarsest; default: the finest the model holds)."""
    levels: Optional[str] = None
    """COARSEST:FINEST, FLoD's selective rendering: each level where a camera's distance falls in its band."""
    budget: Optional[int] = None
    """The finest selective set with at most this many splats per view."""

    def choice(self) -> LevelChoice:
        span = None
        if self.levels is not None:
            parts = self.levels.split(":")
            if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
                raise SplatkitError(f"--levels {self.levels}: give COARSEST:FINEST, e.g. 3:5")
            span = (int(parts[0]), int(parts[1]))
        return LevelChoice(self.level, span, self.budget)


Levels = tyro.conf.OmitArgPrefixes[LevelFlags]


@dataclass
class EvalConfig:
    """PSNR and SSIM of a trained run on its held-out views (per view and mean), with side-by-side PNGs."""

    run: tyro.conf.Positional[Path]
    """Run folder written by `splatkit train`."""
    model: Optional[Path] = None
    """Score this splat file instead of the run's model (e.g. an export, to see what its quantisation costs);
    it must be in the capture's frame, as exports are by default. Side-by-sides go to <run>/eval/<file name>/."""
    lod: Levels = field(default_factory=LevelFlags)
    fit_exposure: bool = False
    """Score each held-out view's right half through a gain and offset per channel fitted to its left half (INRIA
    3DGS's --train_test_exp protocol), for captures whose exposure changes from photo to photo; on an
    --appearance run the view's appearance embedding is fitted on the left half first (the run's own model at
    full detail only). The default, plain protocol compares whole photos as they are, as other tools' numbers do:
    quote that one unless you say which."""
    device: Device = "auto"
    """auto (CUDA when torch sees a GPU), cpu or cuda."""
    backend: str = "auto"


@dataclass
class RenderConfig:
    """Render one PNG per camera of a scene from a trained run or a splat file, or a camera path to a video."""

    model: tyro.conf.Positional[Path]
    """Run folder or splat file (any format `info` reads: .ply, .compressed.ply, .spz, .splat, .sog, .spkz, ...)."""
    path: Optional[Path] = None
    """Camera path JSON saved by the viewer's camera-path tool: render it to the video --out names (.mp4;
    a folder gets <path name>.mp4) instead of PNGs of the scene's cameras."""
    scene: Optional[str] = None
    """Scene whose cameras to render (default: the run's scene). Models are in the scene's original frame."""
    split: Literal["test", "train", "all"] = "test"
    out: Path = Path("renders")
    data_factor: Optional[int] = None
    """Image downsampling (default: the run's, else 1)."""
    lod: Levels = field(default_factory=LevelFlags)
    device: Device = "auto"
    """auto (CUDA when torch sees a GPU), cpu or cuda."""
    backend: str = "auto"


Format = Literal["ply", "compressed-ply", "spz", "splat", "sog", "sog-meta", "sog-lod", "compact"]
OutPath = Annotated[Optional[Path], tyro.conf.arg(aliases=("-o",))]


@dataclass
class ExportConfig:
    """Write a trained run (or any splat file) as a file web and mobile players open: INRIA .ply, PlayCanvas
    compressed.ply (about 16 B a splat, SuperSplat/PlayCanvas), Niantic .spz (Scaniverse, Spark), .splat, PlayCanvas
    SOG (.sog, or meta.json + WebP images), or splatkit's compact .spkz (a --quantize run keeps its latents)."""

    model: tyro.conf.Positional[Path]
    """Run folder written by `splatkit train`, or a splat file."""
    format: Optional[Format] = None
    """Default: from -o's extension, else compressed-ply."""
    out: OutPath = None
    """Output file (default: <run>/export/<run name><format's extension>; with --player, inside that folder)."""
    sh_degree: Optional[int] = None
    """Keep SH bands up to this degree (0 = base colour only, the smallest file); default: all the model has."""
    prune_opacity: float = 0.0
    """Drop splats less opaque than this (e.g. 0.02): nearly invisible, but they cost as much as any other."""
    frame: Literal["original", "upright", "training"] = "original"
    """original: the capture's own frame (COLMAP / transforms.json), as the run's point_cloud.ply;
    upright: turned so the cameras' up is -y (what web players expect of COLMAP-style scenes) and centred on
    the scene, in the capture's units; training: centred and scaled as splatkit trains it."""
    spz_version: Literal[3, 4] = 3
    """SPZ container: 3 (gzip, read by every SPZ player) or 4 (zstd, newer readers only)."""
    player: Optional[Path] = None
    """Also write a web page that shows the export into this folder, ready to host: PlayCanvas for .ply and
    compressed.ply, Spark for .spz and .splat (their JavaScript comes from npm the first time)."""
    lod: Levels = field(default_factory=LevelFlags)
    """Of a model with levels of detail (FLoD): without these, .ply and .spkz keep every level and other
    formats get the finest; --levels and --budget choose from the run's first held-out camera."""
    lod_set: Optional[Path] = None
    """Write one file per level of a model with levels into this folder, with lod.json (each level's file,
    count, bytes, size floor and distance band), so a phone can load a coarse level first, a finer one next."""


@dataclass
class ConvertConfig:
    """Convert a splat file between formats; the input's format is read from its content, the output's from
    --format or its extension (.ply, .compressed.ply, .spz, .splat, .sog, meta.json, .spkz)."""

    input: tyro.conf.Positional[Path]
    output: tyro.conf.Positional[Path]
    format: Optional[Format] = None
    sh_degree: Optional[int] = None
    """Keep SH bands up to this degree (default: all the input has)."""
    prune_opacity: float = 0.0
    """Drop splats less opaque than this."""
    spz_version: Literal[3, 4] = 3
    """SPZ container when writing .spz: 3 (gzip, read by every SPZ player) or 4 (zstd, newer readers only)."""


@dataclass
class PartitionConfig:
    """Split a large scene into blocks on its ground plane, each a scene folder `splatkit train` (or torchrun)
    trains on its own; `splatkit merge` joins the trained blocks (VastGaussian / CityGS style)."""

    scene: tyro.conf.Positional[Path]
    out: Path
    """Folder to write the blocks into (one block_<row>_<col>/ each)."""
    blocks: str = "2x1"
    """Grid of blocks, rows x columns along the ground plane's two axes."""
    cameras_per_block: Optional[int] = None
    """Choose the grid for about this many cameras per block instead of --blocks."""
    margin: float = 0.2
    """Each block trains on its cell grown by this fraction of a cell on each side (its points and cameras)."""
    visibility: float = 0.25
    """A camera outside a block's grown cell joins it when this share of the points it sees lie in that cell."""
    test_every: int = 8
    """The held-out split the blocks will train with (as `train --test-every`), for the summary."""


@dataclass
class MergeConfig:
    """Join the trained blocks of a partitioned scene into one model: each block keeps the Gaussians whose
    centres lie in its own cell, so every Gaussian comes from the block that trained it with all its views."""

    runs: tyro.conf.Positional[tuple[Path, ...]]
    """The blocks' run folders (their scenes are block folders of one `splatkit partition`)."""
    out: Path = Path("merged.ply")
    """The merged model (INRIA .ply, the source scene's original frame)."""


@dataclass
class InfoConfig:
    """Format, splat count, SH degree, bounds and size per splat of a splat file."""

    file: tyro.conf.Positional[Path]


def _model_in_scene_frame(model: Gaussians, scene: Scene) -> Gaussians:
    t = scene.to_normalized
    return model.transformed(t)


def _model_label(path: Path) -> str:
    """A folder name for a model file's evaluation: its name, with its folder's for the fixed names of an
    unbundled or streamed SOG (two lod-meta.json files must not share one)."""
    return f"{path.parent.name}-{path.name}" if path.name.lower() in ("meta.json", "lod-meta.json") else path.name


def run_eval(cfg: EvalConfig) -> dict:
    record = read_run(cfg.run)
    scene = record.load_scene()
    if not scene.test_ids:
        raise SplatkitError(f"{cfg.run}: the run has no held-out views (test_every=0)")
    images = open_images(record.config, scene, cfg.run, record.scene_path)
    source = cfg.model or _model_file(cfg.run)
    levels = cfg.lod.choice()
    # Another file or a chosen level gets its own folder, so the run's own evaluation is never overwritten.
    out = cfg.run / "eval" / (_model_label(source) if cfg.model else "") / (levels.label if levels.given else "") \
        / ("fit-exposure" if cfg.fit_exposure else "")
    model = _model_in_scene_frame(read_splats(source), scene).to(resolve_device(cfg.device))
    scene, poses = record.camera_poses(scene).for_evaluation(model, images, cfg.backend)
    appearance = _held_out_appearance(cfg, record, scene, len(model), levels) if cfg.fit_exposure else None
    result = evaluate(model, scene, images, scene.test_ids, backend=cfg.backend, side_by_side_dir=out, levels=levels,
                      fit_exposure=cfg.fit_exposure, appearance=appearance)
    result["model"], result["levels"] = str(source), levels.label
    if poses is not None:
        result["poses"] = poses
        console.print(f"splatkit: {poses}", highlight=False, soft_wrap=True)
    for view in result["views"]:
        masked = f"  ({view['masked']:.1%} of pixels masked out)" if "masked" in view else ""
        console.print(f"{view['name']:>24}  PSNR {view['psnr']:6.2f}  SSIM {view['ssim']:.4f}{masked}")
    scored = (" on the masks' kept pixels" if result["masked"] else "") + \
        (" (right halves, through exposures fitted on the left halves)" if cfg.fit_exposure else "")
    console.print(f"{'mean':>24}  PSNR {result['mean']['psnr']:6.2f}  SSIM {result['mean']['ssim']:.4f}{scored}")
    write_text_atomic(out / "metrics.json", json.dumps(result, indent=2))
    console.print(f"wrote {out}")
    return result


def _held_out_appearance(cfg: EvalConfig, record: RunRecord, scene: Scene, count: int,
                         levels: LevelChoice) -> AppearanceDecoder | None:
    """The decoder whose embedding --fit-exposure fits per held-out view: an --appearance run's, for its own model
    at full detail (another file or a level has other Gaussians than its features describe)."""
    if not record.config.appearance:
        return None
    if cfg.model is not None or levels.given:
        console.print("splatkit: --model/--lod: no appearance embedding is fitted (the run's features describe its "
                      "own model's Gaussians); the exposure transform alone is", highlight=False)
        return None
    appearance = record.appearance(scene)
    if len(appearance.features) != count:
        raise file_error(cfg.run, f"the last checkpoint has {len(appearance.features):,} Gaussians but the model "
                                  f"file {count:,}; export the run again (`splatkit export`) or score it plainly")
    return appearance.to(resolve_device(cfg.device))


def _model_file(model: Path) -> Path:
    """The .ply of a run folder (in the capture's frame, as camera paths are), or the splat file given."""
    if not model.exists():
        raise file_error(model, "no such file or folder")
    if model.is_dir():
        read_run(model)
        if not (model / "point_cloud.ply").is_file():
            raise file_error(model, "the run has no point_cloud.ply yet (it is written when training ends)")
        return model / "point_cloud.ply"
    return model


def run_render_path(cfg: RenderConfig) -> Path:
    path = CameraPath.load(cfg.path)
    levels = cfg.lod.choice()
    model = read_splats(_model_file(cfg.model)).to(resolve_device(cfg.device))
    out = cfg.out if cfg.out.suffix else cfg.out / f"{cfg.path.stem}.mp4"
    with Progress(TextColumn("[bold]video"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console) as progress:
        task = progress.add_task("video", total=path.num_frames)
        render_video(model, path, out, backend=cfg.backend, levels=levels,
                     on_frame=lambda done, total: progress.update(task, completed=done))
    console.print(f"wrote {path.num_frames} frames ({path.width}x{path.height}, {path.fps:g} fps) to {out}")
    return out


@torch.no_grad()
def run_render(cfg: RenderConfig) -> list[Path]:
    if cfg.path is not None:
        return [run_render_path(cfg)]
    if not cfg.model.exists():
        raise file_error(cfg.model, "no such file or folder")
    if cfg.model.is_dir():
        record = read_run(cfg.model)
        scene = record.load_scene(cfg.scene and resolve_scene_path(cfg.scene), cfg.data_factor)
        if cfg.scene is None:  # the run's own cameras, at the poses it trained them with (--pose-opt)
            scene = record.camera_poses(scene).trained_scene()
        ply = _model_file(cfg.model)
    else:
        if cfg.scene is None:
            raise SplatkitError(f"{cfg.model}: rendering a model file needs --scene to give the cameras")
        scene, ply = load_scene(resolve_scene_path(cfg.scene), data_factor=cfg.data_factor or 1), cfg.model
    levels = cfg.lod.choice()
    model = _model_in_scene_frame(read_splats(ply), scene).to(resolve_device(cfg.device))
    ids = {"test": scene.test_ids, "train": scene.train_ids, "all": list(range(len(scene.cameras)))}[cfg.split]
    if not ids:
        raise SplatkitError(f"{cfg.model}: no {cfg.split} views to render (the run holds none out); "
                            "try --split train or --split all")
    written = []
    try:
        for i in ids:
            camera = scene.cameras[i]
            image = rasterize(levels.for_view(model, camera), camera,
                              background=scene.background or (0.0, 0.0, 0.0), backend=cfg.backend).rgb
            path = cfg.out / scene.output_names[i]
            save_png(path, to_uint8(image))
            written.append(path)
    except KeyboardInterrupt:
        raise SplatkitError(f"stopped after {len(written)} of {len(ids)} renders in {cfg.out} "
                            "(each written file is complete)") from None
    console.print(f"wrote {len(written)} renders to {cfg.out}")
    return written


def _extension(fmt: str) -> str:
    """What a file name of `fmt` ends with; a streamed SOG is a folder named after the model holding
    lod-meta.json (the engine finds it by that name) and its chunks."""
    ext = next(ext for ext, f in EXTENSIONS.items() if f == fmt)
    return f"-lod/{ext}" if fmt == "sog-lod" else ext


def _run_scene(record: RunRecord) -> Scene | None:
    """The run's scene, or None when it can no longer be read (the export goes on without its cameras)."""
    try:
        return record.load_scene()
    except SplatkitError:
        return None


def _file_to_export(frame: str, scene: Scene | None, to_normalized: Similarity, run: Path) -> Similarity:
    """How the model file's frame (the capture's) maps to the exported one."""
    if frame == "training":
        return to_normalized
    if frame == "upright":
        if scene is None:
            raise SplatkitError(f"{run}: --frame upright needs the run's scene cameras, and its scene cannot be read")
        # Turn the cameras' mean up to -y, the convention of COLMAP-style scenes that web players assume,
        # about the scene's centre (which goes to the origin); sizes stay in the capture's units.
        turn = Rotation.align_vectors([[0.0, -1.0, 0.0]], [up_from_cameras(scene.cameras)])[0]
        return Similarity(1.0, np.asarray(to_normalized.center, np.float64), turn.as_matrix())
    return Similarity()


def run_export(cfg: ExportConfig) -> Path:
    fmt = cfg.format or (format_from_extension(cfg.out) if cfg.out is not None else "compressed-ply")
    cfg = dataclasses.replace(cfg, format=fmt)
    record = read_run(cfg.model) if cfg.model.is_dir() else None
    source = _model_file(cfg.model)
    model = read_splats(source)
    if cfg.frame != "original" and record is None:
        raise SplatkitError(f"{cfg.model}: --frame {cfg.frame} needs a run folder (a lone file has no scene)")
    needs_view = cfg.player or cfg.lod_set or cfg.lod.levels or cfg.lod.budget
    scene = _run_scene(record) if record is not None and (cfg.frame == "upright" or needs_view) else None
    view = up = None  # the run's first held-out (else first) camera and the cameras' up, in the exported frame
    if record is not None:
        to_normalized = record.to_normalized
        file_to_export = _file_to_export(cfg.frame, scene, to_normalized, cfg.model)
        cameras_to_export = to_normalized.inverse().then(file_to_export)
        if cfg.format == "compact":  # the run's own latents, not a re-quantized float model
            model = record.final_quantized().transformed(cameras_to_export)
        elif not file_to_export.is_identity:
            model = model.transformed(file_to_export)
        if scene is not None:
            camera = scene.cameras[scene.test_ids[0] if scene.test_ids else 0]
            view = dataclasses.replace(camera, world_to_cam=cameras_to_export.apply_camera(camera.world_to_cam))
            up = cameras_to_export.rotation @ up_from_cameras(scene.cameras)
    name = (cfg.model.name if record is not None else source.name.split(".")[0]) + _extension(cfg.format)
    if cfg.format == "sog-lod" and (cfg.lod_set is not None or cfg.lod.choice().given):
        raise SplatkitError("a streamed SOG (--format sog-lod) holds every level and the player picks among them; "
                            "drop --lod-set, --level, --levels and --budget")
    if cfg.lod_set is not None and (cfg.lod.choice().given or cfg.out is not None or cfg.player is not None):
        raise SplatkitError("--lod-set writes a file per level into its folder; drop --level, --levels, --budget, "
                            "-o and --player (or --lod-set)")
    if cfg.player is not None and cfg.format == "compact":
        raise SplatkitError("the web players do not read splatkit's compact file; export SOG, .ply or .spz for "
                            "--player")
    if cfg.lod_set is not None:
        return _write_lod_set(cfg, model, view, name)
    out = cfg.out or (cfg.player or (source.parent / "export")) / name
    if cfg.player is not None and not out.resolve().is_relative_to(cfg.player.resolve()):
        raise SplatkitError(f"{out}: with --player the model is written inside the player folder {cfg.player} "
                            "(drop -o, or give a file name in that folder)")
    if cfg.player is not None and cfg.format == "spz" and cfg.spz_version != 3:
        raise SplatkitError(f"{out}: the web player reads SPZ version 3 (gzip); drop --spz-version 4")
    levels = cfg.lod.choice()
    if levels.given:
        model = _subset(model, levels.mask(_decoded(model), view))
    before = len(model)
    model = slimmed(model, out, sh_degree=cfg.sh_degree, min_opacity=cfg.prune_opacity)
    _write(model, out, cfg, pruned=before - len(model))
    if cfg.player is not None:
        from splatkit.io.player import write_player

        with console.status("writing the player page (the first time, npm fetches its engines)..."):
            page = write_player(cfg.player, out, view, fit_window=True, up=up)
        console.print(f"player page in {cfg.player}: serve that folder (e.g. `python -m http.server -d "
                      f"{cfg.player} 8000`) and open http://localhost:8000/{page}", highlight=False, soft_wrap=True)
    return out


def _decoded(model: Gaussians | QuantizedGaussians) -> Gaussians:
    return model.decoded() if isinstance(model, QuantizedGaussians) else model


def _subset(model: Gaussians | QuantizedGaussians, mask: torch.Tensor | None) -> Gaussians | QuantizedGaussians:
    return model if mask is None else model.subset(mask.to("cpu") if isinstance(model, QuantizedGaussians) else mask)


def _write(model: Gaussians | QuantizedGaussians, out: Path, cfg: ExportConfig, pruned: int = 0) -> int:
    """Write an export (a compact model as it is, anything else by its format) and say what it cost."""
    if isinstance(model, QuantizedGaussians):
        save_compact(model, out)
    else:
        write_model(model, out, cfg.format, spz_version=cfg.spz_version)
    size = stored_bytes(out, cfg.format)
    count = stored_count(model, cfg.format)
    stored_degree = 0 if cfg.format == "splat" else model.sh_degree  # .splat keeps the base colour only
    pruned_note = f" (pruned {pruned:,})" if pruned else ""
    console.print(f"wrote {count:,} splats{pruned_note}, SH degree {stored_degree}, {size / 1e6:.2f} MB "
                  f"({size / count:.1f} B/splat) to {out}", highlight=False, soft_wrap=True)
    return size


def _write_lod_set(cfg: ExportConfig, model: Gaussians | QuantizedGaussians, view: Camera | None, name: str
                   ) -> Path:
    """One file per level into `cfg.lod_set` and lod.json describing them (bands from the view's focal)."""
    g = _decoded(model)
    counts = level_counts(g)
    if not counts:
        raise SplatkitError(f"{cfg.model}: --lod-set needs a model with levels of detail (train with --lod)")
    floors = level_floors(g)
    focal = None if view is None else float(min(view.K[0, 0], view.K[1, 1]))
    stem, ext = name[:-len(_extension(cfg.format))], _extension(cfg.format)
    levels = []
    for level in counts:
        out = cfg.lod_set / f"{stem}-level{level}{ext}"
        chosen = slimmed(_subset(model, g.level == level), out, sh_degree=cfg.sh_degree,
                         min_opacity=cfg.prune_opacity)
        size = _write(chosen, out, cfg)
        band = band_edges(floors, min(counts), max(counts), focal)[level] if focal else None
        levels.append({"level": level, "file": out.name, "count": len(chosen), "bytes": size,
                       "floor": floors[level] if level < max(counts) else 0.0,
                       "band": None if band is None else [band[0], band[1] if band[1] != float("inf") else None]})
    manifest = {"format": cfg.format, "focal_px": focal, "screen_size_px": 1.0, "levels": levels}
    write_text_atomic(cfg.lod_set / "lod.json", json.dumps(manifest, indent=2))
    console.print(f"wrote {len(levels)} levels and lod.json to {cfg.lod_set}", highlight=False)
    return cfg.lod_set / "lod.json"


def run_convert(cfg: ConvertConfig) -> Path:
    fmt = cfg.format or format_from_extension(cfg.output)
    model = read_splats(cfg.input)
    model = slimmed(model, cfg.output, sh_degree=cfg.sh_degree, min_opacity=cfg.prune_opacity)
    write_model(model, cfg.output, fmt, spz_version=cfg.spz_version)
    size = stored_bytes(cfg.output, fmt)
    written = stored_count(model, fmt)
    note = f" (the finest of its levels; {fmt} holds one)" if written < len(model) else ""
    console.print(f"{cfg.input} ({detect_format(cfg.input)}) -> {cfg.output} ({fmt}): {written:,} splats{note}, "
                  f"{size / 1e6:.2f} MB", highlight=False, soft_wrap=True)
    return cfg.output


def run_partition(cfg: PartitionConfig) -> list[Path]:
    scene = load_scene(cfg.scene, test_every=cfg.test_every)
    if cfg.cameras_per_block is not None:
        rows, cols = grid_for(scene, cfg.cameras_per_block)
    else:
        try:
            rows, cols = (int(v) for v in cfg.blocks.lower().split("x"))
        except ValueError:
            raise SplatkitError(f"--blocks {cfg.blocks}: expected ROWSxCOLS, e.g. 2x2") from None
    blocks = partition(scene, rows, cols, cfg.margin, cfg.visibility)
    folders = write_blocks(blocks, cfg.scene, cfg.out)
    held_out = {scene.cameras[i].name for i in scene.test_ids}
    console.print(f"{cfg.scene}: {len(scene.cameras)} cameras, {len(scene.points):,} points -> {rows}x{cols} blocks "
                  f"in {cfg.out}", highlight=False)
    for block in blocks:
        train_views = sum(name not in held_out for name in block.cameras)
        console.print(f"  {block.name}: {train_views} training / {len(block.cameras) - train_views} held-out "
                      f"cameras, {block.point_count:,} points", highlight=False)
    return folders


def run_merge(cfg: MergeConfig) -> Path:
    parts, names, sources = [], [], set()
    for run in cfg.runs:
        record = read_run(run)
        if not (record.scene_path / BLOCK_FILE).is_file():
            raise file_error(run, f"trained {record.scene_path}, which is not a block (made by `splatkit partition`)")
        block = read_block(record.scene_path)
        ply = run / "point_cloud.ply"
        if not ply.is_file():
            raise file_error(run, "has no point_cloud.ply yet (train it to the end first)")
        parts.append((ply, block.region))
        names.append(block.name)
        sources.add((block.source, tuple(block.partition)))
    if len(sources) > 1:
        raise SplatkitError("the runs trained blocks of different partitions; merge the blocks of one")
    (source, partition_names), = sources
    twice = sorted({n for n in names if names.count(n) > 1})
    missing = [n for n in partition_names if n not in names]
    if twice or missing:
        raise SplatkitError(f"the runs must train each block of {source}'s partition once: "
                            + (f"{', '.join(twice)} twice" if twice else f"{', '.join(missing)} missing"))
    merged, counts = merge_blocks(parts)
    save_ply(merged, cfg.out)
    console.print(f"{len(parts)} blocks -> {cfg.out}: {len(merged):,} Gaussians ("
                  + ", ".join(f"{n} {c:,}" for n, c in zip(names, counts)) + ")", highlight=False)
    return cfg.out


def run_info(cfg: InfoConfig):
    info = describe(cfg.file)
    lo, hi = info.bounds
    blo, bhi = info.bulk

    def xyz(v) -> str:
        return "(" + ", ".join(f"{x:.3g}" for x in v) + ")"

    rows = [("format", info.format), ("splats", f"{info.count:,}"), ("SH degree", str(info.sh_degree)),
            ("file size", f"{info.file_bytes / 1e6:.3f} MB"), ("bytes per splat", f"{info.bytes_per_splat:.1f}"),
            ("bounds", f"{xyz(lo)} .. {xyz(hi)}"), ("bulk (1-99%)", f"{xyz(blo)} .. {xyz(bhi)}"),
            ("median opacity", f"{info.median_opacity:.3f}"), ("median size", f"{info.median_scale:.3g}")]
    if info.levels:
        rows.append(("levels", ", ".join(f"{level}: {count:,}" for level, count in info.levels.items())))
    if info.latents:
        rows.append(("integer codes", ", ".join(f"{name} {dim}->{width} ({values:,} values)"
                                          for name, (dim, width, values) in info.latents.items())))
    console.print(f"[bold]{info.path}[/]")
    for key, value in rows:
        console.print(f"  {key:>15}  {value}", highlight=False)
    return info


# Flags may follow a plug-in subcommand (`strategy:mcmc --strategy.cap-max 300000 --steps 7000`).
CASCADE = (tyro.conf.CascadeSubcommandArgs,)


def parse_train(args: list[str]) -> TrainConfig:
    """`splatkit train` flags, laid over defaults when there are some: on --resume the run's saved settings
    (tyro parses the flags again with the saved config as its defaults), so `--resume --steps 20000` trains
    further and `--resume --strategy.cap-max 500000` changes one setting of the saved strategy; with
    --quantize or --lod that preset's settings, so `--quantize --parameterisation.no-influence-prune` changes
    one of them."""
    cfg, unknown = tyro.cli(TrainConfig, args=args, prog="splatkit train", config=CASCADE, return_unknown_args=True)
    if cfg.quantize and cfg.lod:
        raise SplatkitError("--quantize and --lod each choose the parameterisation (quantized latents, levels "
                            "of detail); they do not combine yet: pick one")
    if cfg.resume and (cfg.run_dir() / "config.json").is_file():
        defaults = dataclasses.replace(read_run(cfg.run_dir()).config, scene=cfg.scene, out=cfg.out, resume=True)
    elif cfg.quantize or cfg.lod:
        defaults = (quantize_preset if cfg.quantize else lod_preset)(cfg)
    else:  # nothing to lay flags over (a resume without a run: train() says so); tyro reports unknown flags
        return tyro.cli(TrainConfig, args=args, prog="splatkit train", config=CASCADE) if unknown else cfg
    return tyro.cli(TrainConfig, args=_name_plugins(args, defaults), default=defaults, prog="splatkit train",
                    config=CASCADE)


def _name_plugins(args: list[str], defaults: TrainConfig) -> list[str]:
    """tyro reads a plug-in's flags only after its subcommand: `--strategy.x` alone means the defaults'
    strategy, so its name goes in front of the first such flag (plug-ins in the config's order)."""
    for field_name in ("parameterisation", "strategy"):
        given = [a.split("=")[0] for a in args]
        if any(a.startswith(f"--{field_name}.") for a in given) and \
                not any(a.startswith(f"{field_name}:") for a in given):
            first = next(i for i, a in enumerate(given) if a.startswith(f"--{field_name}."))
            args = [*args[:first], f"{field_name}:{getattr(defaults, field_name).name}", *args[first:]]
    return args


def run_train(cfg: TrainConfig) -> dict:
    watch = None
    if cfg.viewer:  # viser is imported only when asked for
        from splatkit.viewer.app import live_viewer

        watch = functools.partial(live_viewer, port=cfg.viewer_port)
    return train(cfg, watch=watch)


def run_view(cfg: ViewConfig) -> None:
    from splatkit.viewer.app import run_view as serve

    serve(cfg)


COMMANDS = {
    "process": (ProcessConfig, process),
    "train": (TrainConfig, run_train),
    "eval": (EvalConfig, run_eval),
    "render": (RenderConfig, run_render),
    "view": (ViewConfig, run_view),
    "export": (ExportConfig, run_export),
    "convert": (ConvertConfig, run_convert),
    "partition": (PartitionConfig, run_partition),
    "merge": (MergeConfig, run_merge),
    "info": (InfoConfig, run_info),
}


def parse(argv: list[str]):
    """The config dataclass of the subcommand `argv` names (tyro exits with its own message on bad flags)."""
    if argv[:1] == ["train"]:
        return parse_train(argv[1:])
    return tyro.extras.subcommand_cli_from_dict({name: cls for name, (cls, _) in COMMANDS.items()}, args=argv,
                                                config=CASCADE)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # SIGTERM (a service manager, `docker stop`, `kill`) stops a command as Ctrl-C does, through the same clean
    # path; it also replaces the handler pycolmap's glog installs on import, which dumps a native stack trace.
    signal.signal(signal.SIGTERM, _interrupt)
    cfg = None
    try:
        cfg = parse(argv)
        next(run for cls, run in COMMANDS.values() if isinstance(cfg, cls))(cfg)
    except SplatkitError as exc:
        # The message is plain text: no markup, no emoji codes (":b:" in "--levels a:b" is not an emoji).
        console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True, emoji=False)
        return 2
    except KeyboardInterrupt:
        hint = "; continue with --resume (the last checkpoint is kept)" if isinstance(cfg, TrainConfig) else \
            "; files are written atomically, so none is left half-written"
        console.print(f"stopped{hint}")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
