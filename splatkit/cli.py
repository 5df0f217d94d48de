"""`splatkit` command line: one tyro config dataclass per subcommand, each with a small handler."""

from __future__ import annotations

import functools
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

import torch
import tyro
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from splatkit.data import ImageStore, Scene, load_scene
from splatkit.errors import SplatkitError, file_error
from splatkit.io.ply import load_ply
from splatkit.model.gaussians import Gaussians
from splatkit.render import rasterize
from splatkit.render.camera_path import CameraPath, render_video
from splatkit.train.config import TrainConfig
from splatkit.train.evaluate import evaluate, save_png, to_uint8
from splatkit.train.trainer import console, image_cache_dir, resolve_scene_path, train
from splatkit.viewer.config import ViewConfig


@dataclass
class EvalConfig:
    """PSNR and SSIM of a trained run on its held-out views (per view and mean), with side-by-side PNGs."""

    run: tyro.conf.Positional[Path]
    """Run folder written by `splatkit train`."""
    backend: str = "auto"


@dataclass
class RenderConfig:
    """Render one PNG per camera of a scene from a trained run or a .ply model, or a camera path to a video."""

    model: tyro.conf.Positional[Path]
    """Run folder or INRIA .ply file."""
    path: Optional[Path] = None
    """Camera path JSON saved by the viewer's camera-path tool: render it to the video --out names (.mp4;
    a folder gets <path name>.mp4) instead of PNGs of the scene's cameras."""
    scene: Optional[str] = None
    """Scene whose cameras to render (default: the run's scene). Models are in the scene's original frame."""
    split: Literal["test", "train", "all"] = "test"
    out: Path = Path("renders")
    data_factor: Optional[int] = None
    """Image downsampling (default: the run's, else 1)."""
    backend: str = "auto"


def _read_run(run_dir: Path) -> dict:
    path = run_dir / "config.json"
    if not path.is_file():
        raise file_error(run_dir, "not a splatkit run folder (no config.json)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise file_error(path, f"corrupt run config ({exc})") from None


def _model_in_scene_frame(model: Gaussians, scene: Scene) -> Gaussians:
    t = scene.to_normalized
    return model.similarity_transformed(t.scale, t.center)


def run_eval(cfg: EvalConfig) -> dict:
    record = _read_run(cfg.run)
    settings = record["config"]
    scene = load_scene(Path(record["scene_path"]), data_factor=settings["data_factor"],
                       test_every=settings["test_every"])
    if not scene.test_ids:
        raise SplatkitError(f"{cfg.run}: the run has no held-out views (test_every=0)")
    images = ImageStore(scene.cameras, cache_dir=image_cache_dir(cfg.run, Path(record["scene_path"])),
                        background=scene.background)
    model = _model_in_scene_frame(load_ply(cfg.run / "point_cloud.ply"), scene)
    result = evaluate(model, scene, images, scene.test_ids, backend=cfg.backend,
                      side_by_side_dir=cfg.run / "eval")
    for view in result["views"]:
        console.print(f"{view['name']:>24}  PSNR {view['psnr']:6.2f}  SSIM {view['ssim']:.4f}")
    console.print(f"{'mean':>24}  PSNR {result['mean']['psnr']:6.2f}  SSIM {result['mean']['ssim']:.4f}")
    (cfg.run / "eval").mkdir(exist_ok=True)
    (cfg.run / "eval" / "metrics.json").write_text(json.dumps(result, indent=2))
    console.print(f"wrote {cfg.run / 'eval'}")
    return result


def _model_file(model: Path) -> Path:
    """The .ply of a run folder (in the capture's frame, as camera paths are), or the .ply given."""
    if not model.exists():
        raise file_error(model, "no such file or folder")
    if model.is_dir():
        _read_run(model)
        if not (model / "point_cloud.ply").is_file():
            raise file_error(model, "the run has no point_cloud.ply yet (it is written when training ends)")
        return model / "point_cloud.ply"
    return model


def run_render_path(cfg: RenderConfig) -> Path:
    path = CameraPath.load(cfg.path)
    model = load_ply(_model_file(cfg.model))
    out = cfg.out if cfg.out.suffix else cfg.out / f"{cfg.path.stem}.mp4"
    with Progress(TextColumn("[bold]video"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console) as progress:
        task = progress.add_task("video", total=path.num_frames)
        render_video(model, path, out, backend=cfg.backend,
                     on_frame=lambda done, total: progress.update(task, completed=done))
    console.print(f"wrote {path.num_frames} frames ({path.width}x{path.height}, {path.fps:g} fps) to {out}")
    return out


@torch.no_grad()
def run_render(cfg: RenderConfig) -> list[Path]:
    if cfg.path is not None:
        return [run_render_path(cfg)]
    if cfg.model.is_dir():
        record = _read_run(cfg.model)
        scene_name = cfg.scene or record["scene_path"]
        factor = cfg.data_factor or record["config"]["data_factor"]
        ply = cfg.model / "point_cloud.ply"
    else:
        if cfg.scene is None:
            raise SplatkitError(f"{cfg.model}: rendering a .ply needs --scene to give the cameras")
        scene_name, factor, ply = cfg.scene, cfg.data_factor or 1, cfg.model
    scene = load_scene(resolve_scene_path(scene_name), data_factor=factor)
    model = _model_in_scene_frame(load_ply(ply), scene)
    ids = {"test": scene.test_ids, "train": scene.train_ids, "all": list(range(len(scene.cameras)))}[cfg.split]
    written = []
    for i in ids:
        camera = scene.cameras[i]
        image = rasterize(model, camera, background=scene.background or (0.0, 0.0, 0.0), backend=cfg.backend).rgb
        path = cfg.out / f"{Path(camera.name).stem}.png"
        save_png(path, to_uint8(image))
        written.append(path)
    console.print(f"wrote {len(written)} renders to {cfg.out}")
    return written


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
    "train": (TrainConfig, run_train),
    "eval": (EvalConfig, run_eval),
    "render": (RenderConfig, run_render),
    "view": (ViewConfig, run_view),
}


def main(argv: list[str] | None = None) -> int:
    cfg = tyro.extras.subcommand_cli_from_dict({name: cls for name, (cls, _) in COMMANDS.items()}, args=argv)
    handler = next(run for cls, run in COMMANDS.values() if isinstance(cfg, cls))
    try:
        handler(cfg)
    except SplatkitError as exc:
        console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        console.print("interrupted; continue with --resume (the last checkpoint is kept)")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
