"""Where the viewer's Gaussians come from: a .ply, a run folder (with its scene's cameras), or a training run
in progress. Every source hands out immutable snapshots (Gaussians + a version number) under a lock."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TypeVar

import numpy as np
import torch

from splatkit.data.cameras import Camera
from splatkit.data.scene import Scene, Similarity
from splatkit.errors import SplatkitError, file_error
from splatkit.io.formats import read_splats
from splatkit.model.gaussians import Gaussians
from splatkit.train import checkpoint
from splatkit.train.exposure import named_exposures
from splatkit.train.run_record import RunRecord, read_run

T = TypeVar("T")


@dataclass
class Snapshot:
    gaussians: Gaussians
    version: int


@dataclass
class TrainingStats:
    step: int = 0
    total_steps: int = 0
    loss: float = float("nan")
    psnr: float = float("nan")
    num_gaussians: int = 0
    steps_per_second: float = 0.0


class ModelSource:
    """A fixed model, optionally with the scene it was trained on (cameras in the same frame).

    `to_file_frame` maps the frame shown to that of the model's file (a run is shown in its training frame,
    its point_cloud.ply is in the capture's), so saved camera paths fit the file."""

    live = False

    def __init__(self, gaussians: Gaussians, *, cameras: list[Camera] | None = None, name: str = "model",
                 background: tuple[float, float, float] | None = None,
                 to_file_frame: Similarity | None = None, exposures: dict[str, torch.Tensor] | None = None) -> None:
        self.to_file_frame = to_file_frame or Similarity()
        self.exposures = exposures or {}  # training photos' transforms by name (--exposure), for previews
        self._lock = threading.Lock()
        self._snapshot = Snapshot(gaussians, 0)
        self.cameras = cameras or []
        self.name = name
        self.background = background
        self.stats = TrainingStats(num_gaussians=len(gaussians))
        self.paused = threading.Event()

    def snapshot(self) -> Snapshot:
        with self._lock:
            return self._snapshot

    def publish(self, gaussians: Gaussians) -> None:
        with self._lock:
            self._snapshot = Snapshot(gaussians, self._snapshot.version + 1)

    def means_numpy(self) -> np.ndarray:
        return self.snapshot().gaussians.means.detach().cpu().numpy()

    def compute(self, work: Callable[[], T]) -> T:
        """Run a render's heavy work where it competes with nothing: here, at once on the calling thread."""
        return work()


def _load_run_scene(record: RunRecord, run_dir: Path) -> Scene | None:
    """The run's scene for its cameras; without it (moved or deleted) the model is still shown."""
    try:
        return record.load_scene()
    except SplatkitError as exc:
        print(f"splatkit view: showing {run_dir} without its cameras ({exc})")
        return None


def load_source(path: Path, device: torch.device | str = "cpu") -> ModelSource:
    """Load a .ply or a run folder; every problem is a one-line `SplatkitError`, raised before any server starts.

    A run folder's model is shown in the training (normalised) frame, where its scene's cameras are; a run
    still training has no point_cloud.ply yet, so its newest checkpoint is shown instead."""
    path = Path(path).expanduser()
    if not path.exists():
        raise file_error(path, "no such file or folder")
    if not path.is_dir():
        return ModelSource(read_splats(path).to(device), name=path.name)  # any format splatkit reads
    record = read_run(path)
    ply = path / "point_cloud.ply"
    checkpoints = checkpoint.list_checkpoints(path / "checkpoints")
    scene = _load_run_scene(record, path)
    to_file_frame = None  # the model is shown in its file's frame unless moved into the training frame
    exposures = named_exposures(record.checkpoint_model(checkpoints[-1]), scene) \
        if record.config.exposure and checkpoints and scene is not None else {}
    if ply.is_file():
        model = read_splats(ply)
        if scene is not None:
            t = scene.to_normalized
            model = model.transformed(t)
            to_file_frame = t.inverse()
    elif checkpoints:
        model = record.checkpoint_gaussians(checkpoints[-1])
        if scene is None:
            print(f"splatkit view: {path} has no point_cloud.ply yet; showing {checkpoints[-1].name}")
        to_file_frame = record.to_normalized.inverse()
    else:
        raise file_error(path, "the run has no point_cloud.ply and no checkpoint yet")
    if len(model) == 0:
        raise file_error(path, "the model has no Gaussians")
    return ModelSource(model.to(device), cameras=scene.cameras if scene else None, name=path.name,
                       background=scene.background if scene else None, to_file_frame=to_file_frame,
                       exposures=exposures)


class LiveSource(ModelSource):
    """A training run's current Gaussians. The training thread calls `after_step` between steps: it copies
    the parameters when a client is watching (at most every `interval` seconds), records the stats, runs the
    renders the viewer has queued, and waits there while the GUI's pause button is down.

    Renders run on the training thread, between steps, because two threads each running parallel kernels on
    the same cores oversubscribe them: a render on its own thread cost training several times its own time."""

    live = True

    def __init__(self, trainer, interval: float = 0.5) -> None:
        super().__init__(self._copy(trainer), cameras=trainer.scene.cameras, name=trainer.run_dir.name,
                         background=trainer.scene.background, to_file_frame=trainer.scene.to_normalized.inverse(),
                         exposures=named_exposures(trainer.model, trainer.scene))
        self.interval = interval
        self.watching = 0  # number of clients connected; nothing is copied without one
        self._last_copy = time.perf_counter()
        self.stats = TrainingStats(step=trainer.step, total_steps=trainer.cfg.steps,
                                   num_gaussians=len(trainer.model))
        self.boxes: list[tuple[np.ndarray, np.ndarray]] = []  # the plug-ins' 3D boxes (LPM's error zones)
        self.error_map: torch.Tensor | None = None  # (H, W) L1 error of the last training step's view
        self.busy_seconds = 0.0  # time the training thread spent on the viewer (copies, renders)
        self.renders = 0
        self._jobs: list[tuple[Callable[[], object], Future]] = []
        self._jobs_changed = threading.Condition()
        self._finished = False

    @staticmethod
    def _copy(trainer) -> Gaussians:
        with torch.no_grad():
            return Gaussians.from_dict({k: v.clone() for k, v in trainer.gaussians.as_dict().items()})

    def after_step(self, trainer, stats: dict[str, float], steps_per_second: float,
                   stop_requested=lambda: False) -> None:
        self.stats = TrainingStats(step=trainer.step, total_steps=trainer.cfg.steps, loss=stats.get("loss", 0.0),
                                   psnr=stats.get("psnr", 0.0), num_gaussians=len(trainer.model),
                                   steps_per_second=steps_per_second)
        now = time.perf_counter()
        if self.watching and (now - self._last_copy >= self.interval or self.paused.is_set()):
            self.publish(self._copy(trainer))
            self.exposures = named_exposures(trainer.model, trainer.scene)
            self._last_copy = now
            self.boxes = [box for key, plugin in trainer.plugins.items() for box in plugin.boxes(trainer.states[key])]
            self.error_map = trainer.last_error
        self._run_jobs()
        if not self.paused.is_set():  # what the viewer took from training (pauses are the user's choice)
            self.busy_seconds += time.perf_counter() - now
        while self.paused.is_set() and not stop_requested():
            with self._jobs_changed:
                self._jobs_changed.wait_for(lambda: self._jobs, timeout=0.05)
            self._run_jobs()

    def compute(self, work: Callable[[], T]) -> T:
        """Hand `work` to the training thread, which runs it between two steps, and wait for its result.
        Once training has finished it runs here."""
        future: Future | None = Future()
        with self._jobs_changed:
            if self._finished:
                future = None
            else:
                self._jobs.append((work, future))
                self._jobs_changed.notify()
        return work() if future is None else future.result()

    def finish(self) -> None:
        """Training is over: run what is queued here and let later renders run on their own threads."""
        with self._jobs_changed:
            self._finished = True
        self._run_jobs()

    def _run_jobs(self) -> None:
        with self._jobs_changed:
            jobs, self._jobs = self._jobs, []
        self.renders += len(jobs)
        for work, future in jobs:
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(work())
                except BaseException as exc:  # handed to the viewer thread that asked, which reports it
                    future.set_exception(exc)
