"""The 3DGS training loop. It reads top to bottom as the algorithm: pick a view, render, L1 + D-SSIM loss (plus
any plug-in's terms), backward, Adam step, and let the plug-ins grow/prune/relocate. The parameterisation and the
strategy plug in through the same hooks (`splatkit.train.plugin`); the loop never asks which ones run."""

from __future__ import annotations

import bisect
import contextlib
import hashlib
import json
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, ContextManager

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from splatkit.atomic import write_text_atomic
from splatkit.config_json import to_json
from splatkit.data import ImageStore, Scene, load_scene
from splatkit.data.demo_scene import demo_scene_path
from splatkit.errors import SplatkitError, file_error
from splatkit.io.ply import save_ply
from splatkit.model.gaussians import Gaussians, init_from_points
from splatkit.render import rasterize, resolve_backend, resolve_device
from splatkit.render.native_build import unavailable_reason as native_unavailable
from splatkit.train import checkpoint
from splatkit.train.coarse_to_fine import downsampled, resolution_scale
from splatkit.train.config import RUN_DEFINING, TrainConfig, run_plugins
from splatkit.train.evaluate import evaluate, keep_mask
from splatkit.train.gaussian_model import GaussianModel
from splatkit.train.metrics import ignore_masked, photometric_loss
from splatkit.train.distributed import OneProcess, join
from splatkit.train.plugin import SetupContext, StepInfo, View
from splatkit.train.poses import CameraPoses
from splatkit.train.poses import declare as declare_poses
from splatkit.train.run_record import read_run
from splatkit.train.sampler import ViewSampler

console = Console(stderr=True)
FINITE_CHECK_EVERY = 100  # steps between checks that every parameter is finite


def resolve_scene_path(scene: str) -> Path:
    """`demo` names the built-in demo scene (generated on first use); anything else is a path."""
    if scene == "demo":
        return demo_scene_path()
    path = Path(scene).expanduser()
    if not path.exists():
        raise SplatkitError(f"{path}: scene folder not found")
    return path.resolve()


def image_cache_dir(run_dir: Path, scene_path: Path) -> Path:
    """Processed (undistorted/downsampled) images are shared by all runs in the same runs folder."""
    # A stable digest (Python's hash() is salted per process, which would defeat the cache).
    key = hashlib.sha256(str(scene_path.resolve()).encode()).hexdigest()[:8]
    return run_dir.resolve().parent / ".cache" / f"{scene_path.name}-{key}"


class Trainer:
    """Owns the model (parameters, optimisers, per-Gaussian buffers), the plug-ins' states and the random
    generator of one run, on the device the config names."""

    def __init__(self, cfg: TrainConfig, scene: Scene, images: ImageStore, run_dir: Path,
                 processes: OneProcess | None = None) -> None:
        self.cfg, self.scene, self.images, self.run_dir = cfg, scene, images, run_dir
        self.processes = processes or OneProcess()
        views = cfg.batch_size * self.processes.world_size
        if views > len(scene.train_ids):
            raise SplatkitError(f"--batch-size {cfg.batch_size} x {self.processes.world_size} processes: "
                                f"{views} views per step, but the scene has {len(scene.train_ids)} training views")
        self.device = resolve_device(cfg.device)
        self.backend = resolve_backend(cfg.backend, self.device, render_needs(cfg))
        self.fused_loss = cfg.fused_loss and self.backend == "native"  # the loss kernel ships with the rasterizer
        self.extent = scene.extent * 1.1
        self.plugins = run_plugins(cfg)
        self.model = GaussianModel(cfg.parameterisation, self.device, native_adam=self.backend == "native")
        init = init_from_points(
            scene.points, scene.colors, sh_degree=cfg.sh_degree, seed=cfg.seed,
            init_opacity=cfg.strategy.init_opacity if cfg.init_opacity is None else cfg.init_opacity,
            init_scale=cfg.strategy.init_scale if cfg.init_scale is None else cfg.init_scale)
        cfg.parameterisation.create(self.model, init, cfg.lr, self.extent)
        if cfg.pose_opt:
            declare_poses(self.model, len(scene.cameras), cfg.pose_lr, cfg.pose_lr_final)
        self.poses = CameraPoses(scene, self.model, eval_steps=cfg.pose_eval_steps)
        latest = checkpoint.list_checkpoints(self.checkpoint_dir)[-1:] if cfg.resume else []
        ctx = SetupContext(scene, images, self.model, run_dir, cfg.steps, self.extent, cfg.seed,
                           resumed=bool(latest), lr=cfg.lr)
        self.states = {key: plugin.setup(ctx) for key, plugin in self.plugins.items()}
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.sampler = ViewSampler(scene.train_ids)
        # One thread decodes the next step's photos while this step trains (PIL and OpenCV release the GIL), so
        # with more photos than --max-cached-images a step waits on disk only at an epoch's start.
        self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="splatkit-images")
        self.image_wait_s = 0.0  # seconds steps spent waiting for photos, since the last log line
        self.phases = cfg.parameterisation.phases(cfg.steps)  # step counts; one phase unless e.g. FLoD levels
        self.phase_starts = [sum(self.phases[:i]) for i in range(len(self.phases))]
        self.step = 0
        self._last_scored: tuple[torch.Tensor, torch.Tensor] | None = None  # the step's first (render, photo)
        if latest:
            self._restore(latest[0])

    @property
    def checkpoint_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    @property
    def gaussians(self) -> Gaussians:
        """The current model, detached, in raw INRIA form (training frame, on the training device)."""
        return self.model.gaussians()

    def _restore(self, path: Path) -> None:
        state = _upgrade(checkpoint.load_checkpoint(path))
        names = {key: plugin.name for key, plugin in self.plugins.items()}
        if state["plugin_names"] != names:
            raise file_error(path, f"written by plug-ins {state['plugin_names']}, not {names}; "
                                   "start a new run with another --out")
        try:
            self.model.load_state_dict(state)
        except KeyError as exc:
            raise file_error(path, f"{exc.args[0]} (written by another splatkit version or plug-in); "
                                   "start a new run with another --out") from None
        for key, saved in state["plugins"].items():  # derived entries ("_...") stay as setup() made them
            self.states[key].update(saved)
        self.step = state["step"]
        self.generator = state["generator"]
        self.sampler.load_state_dict(state.get("views", {"order": []}))  # older checkpoints: a new epoch
        torch.set_rng_state(state["torch_rng"])

    def save_checkpoint(self) -> Path:
        self._check_finite()
        payload = {**self.model.state_dict(), "plugins": _checkpointed(self.states), "generator": self.generator,
                   "plugin_names": {key: plugin.name for key, plugin in self.plugins.items()},
                   "torch_rng": torch.get_rng_state(), "views": self.sampler.state_dict()}
        return checkpoint.save_checkpoint(self.checkpoint_dir, self.step, payload)

    def _check_finite(self, loss: torch.Tensor | None = None, params: bool = True) -> None:
        # A sum is finite exactly when every element is (or it overflowed, which is divergence too), and
        # summing is ~20x cheaper than an element-wise isfinite over millions of values.
        bad = [k for k, v in self.model.params.items() if not torch.isfinite(v.detach().sum())] if params else []
        if loss is not None and not torch.isfinite(loss):
            bad.insert(0, "loss")
        if bad:
            kept = checkpoint.list_checkpoints(self.checkpoint_dir)
            where = f"the last good checkpoint is {kept[-1]}" if kept else "no checkpoint was written yet"
            raise SplatkitError(f"training diverged at step {self.step}: non-finite {', '.join(bad)}; {where}")

    def _hook(self, name: str, info: StepInfo) -> None:
        for key, plugin in self.plugins.items():
            getattr(plugin, name)(self.model, self.states[key], info)

    def train_step(self) -> dict[str, float]:
        cfg, step = self.cfg, self.step
        phase = bisect.bisect_right(self.phase_starts, step) - 1
        start, length = self.phase_starts[phase], self.phases[phase]
        self.model.set_progress((step - start) / max(1, length))
        batch = self.sampler.next(cfg.batch_size * self.processes.world_size, self.generator)
        mine = self.processes.my_slots(cfg.batch_size)
        upcoming = self.sampler.upcoming(len(batch))
        for slot in mine if upcoming else ():
            self._reader.submit(self.images.__getitem__, upcoming[slot])  # decoded into the store's cache
        backgrounds = torch.rand(len(batch), 3, generator=self.generator).tolist() if cfg.random_background \
            else [self.scene.background or (0.0, 0.0, 0.0)] * len(batch)
        views, losses, first = [], [], None
        for slot in mine:
            index = batch[slot]
            camera = self.scene.cameras[index]
            waited = time.perf_counter()
            target, keep = self._photo(index)
            self.image_wait_s += time.perf_counter() - waited
            camera, target, keep = downsampled(camera, target, keep, self.resolution_scale(step))
            # Each view its own graph (see the backward below), of the Gaussians as its photo saw them (--appearance)
            gaussians = self._through("seen", index, self.model.activated())
            first = gaussians if first is None else first
            render = rasterize(gaussians, camera, sh_degree=min(step // cfg.sh_degree_interval, cfg.sh_degree),
                               background=tuple(backgrounds[slot]), backend=self.backend,
                               viewmat=self.poses.viewmat(index))
            rgb = self._through("photographed", index, render.rgb)  # as the photo saw it (--exposure)
            rgb, target = ignore_masked(rgb, target, keep)  # masked pixels: no error, no gradient
            if not views:
                self._last_scored = (rgb.detach(), target)
            views.append(View(camera, index, slot, target, render))
            losses.append(photometric_loss(rgb, target, keep, cfg.ssim_lambda, self.fused_loss))
        info = StepInfo(step, cfg.steps, views, batch, first, self.extent, phase=phase, phase_start=start,
                        phase_steps=length, gather=self.processes.gather)
        self._hook("pre_backward", info)
        extra = {name: term for key, plugin in self.plugins.items()
                 for name, term in plugin.losses(self.model, self.states[key], info).items()}
        # The loss averages the views. Each view's term runs backward on its own graph, in slot order: the
        # gradients then sum as a distributed run's all-reduce sums them (bitwise alike for two views).
        terms = [loss / len(views) for loss, _ in losses]
        terms[0] = terms[0] + sum(extra.values())
        loss = sum(term.detach() for term in terms)
        # The loss every step; the parameters every FINITE_CHECK_EVERY steps and before every checkpoint, so no
        # checkpoint holds a non-finite value (a rendered Gaussian gone non-finite makes the next loss so).
        self._check_finite(loss, params=step % FINITE_CHECK_EVERY == 0)
        for term in terms:
            term.backward()
        self.processes.average_gradients(list(self.model.params.values()))
        self._hook("post_backward", info)
        self.model.fold_statistics(self.processes.sum_)
        self.model.step(self._visible(views) if cfg.visible_adam else None)
        count = len(self.model)
        self._hook("after_step", info)
        self.step += 1
        if len(self.model) != count or self.step % cfg.log_every == 0:
            self.processes.check_identical(self.model.params, self.step)
        return {"loss": float(loss), "psnr": sum(p for _, p in losses) / len(losses),
                **{name: term.item() for name, term in extra.items()}}

    @property
    def last_error(self) -> torch.Tensor | None:
        """(H, W) per-pixel L1 error summed over RGB of the last step's first view (0 where masked), detached, for
        the live viewer; computed when asked, not every step."""
        if self._last_scored is None:
            return None
        rgb, target = self._last_scored
        return (rgb - target).abs().sum(dim=-1)

    def _through(self, hook: str, index: int, value: Any) -> Any:
        """`value` through every plug-in's `hook` for training camera `index` (seen, photographed), in order."""
        for key, plugin in self.plugins.items():
            value = getattr(plugin, hook)(self.model, self.states[key], index, value)
        return value

    def _visible(self, views: list[View]) -> torch.Tensor:
        """(N,) bool: the Gaussians some view of this step rendered, in any process."""
        seen = sum((v.render.radii > 0).all(dim=-1).to(torch.int32) for v in views)
        self.processes.sum_(seen)
        return seen > 0

    def _photo(self, index: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Camera `index`'s photo and mask on the training device (read through the image store's cache)."""
        return torch.from_numpy(self.images[index]).to(self.device), keep_mask(self.images, index, self.device)

    def close(self) -> None:
        """Stop reading ahead."""
        self._reader.shutdown(wait=True, cancel_futures=True)

    def resolution_scale(self, step: int) -> float:
        """Image size of `step` as a fraction of full size (below 1 only while coarse-to-fine rises)."""
        cfg = self.cfg
        return resolution_scale(step, cfg.steps, cfg.coarse_to_fine_start, cfg.coarse_to_fine_until) \
            if cfg.coarse_to_fine else 1.0

    def evaluate(self, side_by_side_dir: Path | None = None) -> dict:
        """Held-out metrics; with refined poses, after fitting the held-out poses (the result's `poses` says so)."""
        scene, note = self.poses.for_evaluation(self.gaussians, self.images, self.backend)
        result = evaluate(self.gaussians, scene, self.images, scene.test_ids, backend=self.backend,
                          side_by_side_dir=side_by_side_dir)
        return result if note is None else {**result, "poses": note}

    def export_ply(self) -> Path:
        """The model in the scene's original (e.g. COLMAP) frame."""
        back = self.scene.to_normalized.inverse()
        path = self.run_dir / "point_cloud.ply"
        save_ply(self.gaussians.to("cpu").transformed(back), path)
        return path


def _checkpointed(states: dict[str, dict]) -> dict[str, dict]:
    """Plug-in states without their derived entries (keys starting with "_"), at any depth of nested dicts."""
    def strip(state: dict) -> dict:
        return {k: strip(v) if isinstance(v, dict) else v for k, v in state.items() if not str(k).startswith("_")}

    return {key: strip(state) for key, state in states.items()}


def _upgrade(state: dict[str, Any]) -> dict[str, Any]:
    """Checkpoints written before plug-ins (ADC only, no buffers): ADC's generator moves under `plugins`; its
    gradient accumulators, which restart at every refinement anyway, start at zero."""
    if "plugins" in state:
        return state
    adc = {k: v for k, v in state.get("strategy", {}).items() if isinstance(v, torch.Generator)}
    return {**state, "plugins": {"parameterisation": {}, "strategy": adc}, "buffers": {},
            "plugin_names": {"parameterisation": "3dgs", "strategy": "adc"}}


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("ETA"),
        TimeRemainingColumn(), TextColumn("{task.fields[stats]}"), console=console,
    )


def prepare(cfg: TrainConfig) -> tuple[TrainConfig, Scene, ImageStore, Path]:
    """Check everything a run needs before anything is written (settings, device, backend; on --resume, that the
    settings which define the run are unchanged), load the scene and its image store, and make the run folder."""
    check_settings(cfg)
    run_dir = cfg.run_dir()
    config_path = run_dir / "config.json"
    scene_path = resolve_scene_path(cfg.scene)
    if cfg.resume:
        if not config_path.is_file():
            raise SplatkitError(f"{run_dir}: nothing to resume (no config.json); start it without --resume")
        saved = read_run(run_dir)
        _refuse_changes(config_path, saved.config, cfg, saved.scene_path, scene_path)
    elif checkpoint.list_checkpoints(run_dir / "checkpoints"):
        raise SplatkitError(f"{run_dir}: a run already lives here; add --resume to continue it or pick another --out")
    scene = load_scene(scene_path, data_factor=cfg.data_factor, test_every=cfg.test_every,
                       pointmap_init=cfg.init)
    images = open_images(cfg, scene, run_dir, scene_path)
    run_dir.mkdir(parents=True, exist_ok=True)
    return cfg, scene, images, run_dir


def open_images(cfg: TrainConfig, scene: Scene, run_dir: Path, scene_path: Path) -> ImageStore:
    """The run's photos (and masks) as training and evaluation read them, cached beside the run."""
    return ImageStore(scene.cameras, cache_dir=image_cache_dir(run_dir, scene_path), background=scene.background,
                      max_cached=cfg.max_cached_images, alpha_as_mask=cfg.alpha_as_mask)


def check_settings(cfg: TrainConfig) -> None:
    """One line for a setting no run can use, before anything is loaded or written."""
    if cfg.init_opacity is not None and not 0 < cfg.init_opacity < 1:
        raise SplatkitError(f"--init-opacity {cfg.init_opacity}: must be in (0, 1)")
    if cfg.batch_size < 1:
        raise SplatkitError(f"--batch-size {cfg.batch_size}: must be at least 1")
    if cfg.threads < 0:
        raise SplatkitError(f"--threads {cfg.threads}: must be 0 (automatic) or more")
    if cfg.init_scale is not None and not cfg.init_scale > 0:
        raise SplatkitError(f"--init-scale {cfg.init_scale}: must be positive")
    if not 0 < cfg.coarse_to_fine_start <= 1:
        raise SplatkitError(f"--coarse-to-fine-start {cfg.coarse_to_fine_start}: must be in (0, 1]")
    if not 0 <= cfg.coarse_to_fine_until <= 1:
        raise SplatkitError(f"--coarse-to-fine-until {cfg.coarse_to_fine_until}: must be in [0, 1]")
    for flag, name, preset in (("quantize", "eagles", "quantize_preset"), ("lod", "flod", "lod_preset")):
        if getattr(cfg, flag) and cfg.parameterisation.name != name:
            raise SplatkitError(f"--{flag} trains parameterisation:{name}, not {cfg.parameterisation.name} "
                                f"(from Python, build the config with splatkit.train.config.{preset})")
    for plugin in run_plugins(cfg).values():
        plugin.validate()
    if cfg.visible_adam and (reason := native_unavailable()) is not None:
        raise SplatkitError(f"--visible-adam steps Adam in the native extension, which is unavailable: {reason}")
    resolve_backend(cfg.backend, resolve_device(cfg.device), render_needs(cfg))


def render_needs(cfg: TrainConfig) -> frozenset[str]:
    """The optional render outputs the run's plug-ins read."""
    return cfg.parameterisation.render_needs() | cfg.strategy.render_needs()


def write_run_record(cfg: TrainConfig, scene: Scene, run_dir: Path) -> None:
    """config.json: the settings, the resolved scene path and the map into the training frame (atomic)."""
    record = {"config": to_json(cfg), "scene_path": str(resolve_scene_path(cfg.scene)),
              "to_normalized": scene.to_normalized.to_json()}
    write_text_atomic(run_dir / "config.json", json.dumps(record, indent=2))


def _truncate_log(path: Path, step: int) -> None:
    """Forget logged steps after `step` (a resume from an older checkpoint repeats them)."""
    if not path.is_file():
        return
    lines = path.read_text().splitlines()
    kept = [line for line in lines if _logged_step(line) <= step]
    if len(kept) != len(lines):
        write_text_atomic(path, "".join(line + "\n" for line in kept))


def _logged_step(line: str) -> int:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return 1 << 62  # a torn last line (a killed process): dropped


def _setting(cfg: TrainConfig, dotted: str) -> Any:
    value: Any = cfg
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


def _refuse_changes(config_path: Path, saved: TrainConfig, cfg: TrainConfig, saved_scene: Path,
                    scene_path: Path) -> None:
    """One line naming the first run-defining setting a resume would change (the scene compares by path)."""
    if saved_scene != scene_path:
        raise file_error(config_path, f"--resume cannot change scene ({saved_scene} -> {scene_path}); "
                                      "train it into another --out")
    for name in RUN_DEFINING:
        before, after = _setting(saved, name), _setting(cfg, name)
        if before != after:
            raise file_error(config_path, f"--resume cannot change {name} ({before!r} -> {after!r}); "
                                          "train it into another --out")


def start(cfg: TrainConfig, processes: OneProcess | None = None) -> Trainer:
    """A trainer for a new run or a resumed one, its config.json written (only now: a refused resume leaves the
    saved settings as they were) and its log cut back to the step it resumes from (by process 0 of a
    distributed run: `processes`)."""
    processes = processes or OneProcess()
    cfg, scene, images, run_dir = prepare(cfg)
    trainer = Trainer(cfg, scene, images, run_dir, processes)
    if trainer.step > cfg.steps:
        raise SplatkitError(f"{run_dir}: the run is already at step {trainer.step}; --steps {cfg.steps} would "
                            "end it before that (give at least that many)")
    if cfg.resume and trainer.step == 0:
        console.print(f"splatkit: {run_dir} has no checkpoint yet; starting it again from step 0")
    if processes.is_main:
        write_run_record(cfg, scene, run_dir)
        _truncate_log(run_dir / "metrics.jsonl", trainer.step)
    return trainer


def train(cfg: TrainConfig, *, show_progress: bool = True,
          watch: Callable[[Trainer], ContextManager[Any]] | None = None) -> dict:
    """Run (or resume) training; returns the final held-out metrics, also written to <run>/metrics.json.

    `watch(trainer)` (e.g. the live viewer, supplied by the CLI so this layer never imports it) is entered around
    the loop; what it yields, if not None, is called as `after_step(trainer, stats, steps_per_s, stop_requested)`.
    Under torchrun every process trains (`splatkit.train.distributed`); process 0 alone prints, watches, writes
    the run folder and evaluates, and the others return an empty dict.
    """
    processes = join(resolve_device(cfg.device), cfg.threads)
    console.quiet = not processes.is_main
    trainer = None
    try:
        trainer = start(cfg, processes)
        return _train(trainer, show_progress and processes.is_main, watch if processes.is_main else None)
    finally:
        if trainer is not None:
            trainer.close()
        processes.close()
        console.quiet = False


def _train(trainer: Trainer, show_progress: bool, watch: Callable[[Trainer], ContextManager[Any]] | None) -> dict:
    cfg, scene, run_dir, processes = trainer.cfg, trainer.scene, trainer.run_dir, trainer.processes
    main = processes.is_main
    log_path = run_dir / "metrics.jsonl"
    masked = sum(c.mask_path is not None for c in scene.cameras)
    console.print(f"splatkit: {len(scene.train_ids)} training / {len(scene.test_ids)} held-out views"
                  + (f" ({masked} with masks)" if masked else "") + f", {len(trainer.model):,} Gaussians, "
                  f"strategy {cfg.strategy.name}, parameterisation {cfg.parameterisation.name}, "
                  f"{trainer.device.type} backend {trainer.backend}, "
                  + (f"{processes.world_size} processes x {cfg.batch_size} view{'s' * (cfg.batch_size > 1)} per step, "
                     if cfg.batch_size * processes.world_size > 1 else "")
                  + f"run folder {run_dir}" + (f", resuming at step {trainer.step}" if trainer.step else ""))
    views_per_step = cfg.batch_size * processes.world_size
    smoothed: dict[str, float] = {}
    started, start_step = time.perf_counter(), trainer.step
    # train_s in the log: seconds this process has trained, without the held-out evaluations (evaluating)
    logged, evaluating = started, 0.0
    with _progress() if show_progress else _NullProgress() as progress, _StopRequests() as stop, \
            (watch(trainer) if watch else contextlib.nullcontext()) as live, \
            (open(log_path, "a") if main else contextlib.nullcontext(_NullLog())) as log:
        task = progress.add_task("train", total=cfg.steps, completed=trainer.step, stats="")
        while trainer.step < cfg.steps:
            if processes.any(stop.requested):  # Ctrl-C / SIGTERM between steps: keep every finished step
                if not main:
                    raise SplatkitError(f"process {processes.rank} stopped at step {trainer.step} with process 0, "
                                        "which keeps the checkpoint")
                path = trainer.save_checkpoint()
                launcher = " under the same torchrun" if processes.world_size > 1 else ""
                raise SplatkitError(f"stopped at step {trainer.step}; checkpoint {path}; continue with "
                                    f"`splatkit train {cfg.scene} --out {run_dir} --resume`{launcher}")
            stats = trainer.train_step()
            smoothed = {k: 0.9 * smoothed.get(k, v) + 0.1 * v for k, v in stats.items()}
            step = trainer.step
            n = len(trainer.model)
            rate = (step - start_step) / (time.perf_counter() - started)
            line = f"loss {smoothed['loss']:.4f}  PSNR {smoothed['psnr']:.2f}  #G {n:,}  {rate:.1f} it/s" + \
                (f"  {rate * views_per_step:.1f} views/s" if views_per_step > 1 else "")
            progress.update(task, completed=step, stats=line)
            if live is not None:  # publishes a copy for the browser; waits here while paused
                live.after_step(trainer, smoothed, rate, lambda: stop.requested)
            if step % cfg.log_every == 0 or step == cfg.steps:
                figures = {name: value for key, plugin in trainer.plugins.items()
                           for name, value in plugin.log(trainer.model, trainer.states[key]).items()}
                now = time.perf_counter()
                wait_share, trainer.image_wait_s, logged = trainer.image_wait_s / (now - logged), 0.0, now
                log.write(json.dumps({"step": step, **stats, **figures, "num_gaussians": n, "steps_per_s": rate,
                                      "views_per_s": rate * views_per_step, "image_wait_share": wait_share,
                                      "train_s": now - started - evaluating, **processes.traffic()}) + "\n")
                log.flush()
                if show_progress and not console.is_terminal:  # logs and CI get a plain line instead
                    console.print(f"step {step}/{cfg.steps}  {line}", highlight=False)
            if main and step in cfg.eval_steps and step != cfg.steps and scene.test_ids:
                began = time.perf_counter()
                result = trainer.evaluate()
                log.write(json.dumps({"step": step, "eval": result["mean"], "train_s": began - started - evaluating})
                          + "\n")
                evaluating += time.perf_counter() - began
            if main and (step % cfg.checkpoint_every == 0 or step == cfg.steps):
                trainer.save_checkpoint()
    return _finish(trainer) if main else {}


def _finish(trainer: Trainer) -> dict:
    """Export the model and the trained cameras, score the held-out views, write metrics.json."""
    scene, run_dir = trainer.scene, trainer.run_dir
    ply_path = trainer.export_ply()
    trainer.poses.save(run_dir / "cameras.json")
    result = trainer.evaluate(run_dir / "eval") if scene.test_ids else {"mean": {}, "views": []}
    metrics = {"step": trainer.step, "num_gaussians": len(trainer.model), **result["mean"],
               "masked": result.get("masked", False), **{k: result[k] for k in ("poses", "protocol") if k in result},
               "views": result["views"]}
    write_text_atomic(run_dir / "metrics.json", json.dumps(metrics, indent=2))
    summary = f"PSNR {metrics['psnr']:.2f} dB, SSIM {metrics['ssim']:.3f} on {len(scene.test_ids)} held-out views" \
        if scene.test_ids else "no held-out views"
    if "poses" in metrics:
        summary += f" ({metrics['poses']})"
    console.print(f"splatkit: done. {metrics['num_gaussians']:,} Gaussians -> {ply_path}; {summary}")
    return metrics


class _NullLog:
    """The metrics log of a process that does not write the run folder."""

    def write(self, text: str) -> None:
        return None

    def flush(self) -> None:
        return None


class _StopRequests:
    """Turns the first Ctrl-C or SIGTERM into a request the loop honours between steps (so the checkpoint it
    writes is a consistent state); a second Ctrl-C interrupts at once."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        console.print("splatkit: stopping after this step (Ctrl-C again to abort at once)...")

    def __enter__(self) -> "_StopRequests":
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class _NullProgress:
    def __enter__(self) -> "_NullProgress":
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def add_task(self, *args: object, **kwargs: object) -> int:
        return 0

    def update(self, *args: object, **kwargs: object) -> None:
        return None
