"""One browser tab: its GUI, its training-camera frustums, and its render worker.

The worker owns a `LatestSlot`: camera updates and GUI changes drop a token in it and the newest one wins, so
a pose that arrives while a frame renders replaces any older pose still waiting. While the camera moves the
worker renders at the height `choose_height` picks for the target frame rate (JPEG quality 40); once the
camera has been still for `SETTLE_SECONDS` it renders once at full resolution (quality 75)."""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from splatkit.errors import SplatkitError
from splatkit.model.levels import LevelChoice, level_counts, single_level
from splatkit.render import native_build, resolve_backend
from splatkit.viewer.camera import Framing, ViewPose, camera_from_pose, frame_camera, pose_from_camera
from splatkit.viewer.pacing import LatestSlot, RenderShare, SpeedMeter, choose_height
from splatkit.viewer.path_tool import CameraPathTool
from splatkit.viewer.render import OUTPUTS, render_image, splat_arrays
from splatkit.viewer.source import ModelSource

SETTLE_SECONDS = 0.2
MOVING_QUALITY, STILL_QUALITY = 40, 75
SPLAT_REFRESH_SECONDS = 2.0  # live training: resend the browser's splats at most this often
POLL_SECONDS = 0.25
MODEL_EXPOSURE = "the model (mean)"  # the exposure dropdown's first entry: no transform
TRAINING_STATS_SECONDS = 0.5


@dataclass
class SessionSettings:
    mode: str = "streamed"
    backend: str = "auto"
    max_height: int = 1080
    target_fps: float = 12.0
    output_dir: Path = Path(".")  # screenshots, camera paths and videos


def apply_framing(client, framing: Framing, wxyz: np.ndarray | None = None) -> None:
    with client.atomic():
        client.camera.up_direction = framing.up
        client.camera.fov = framing.fov
        client.camera.position = framing.position
        client.camera.look_at = framing.look_at
        if wxyz is not None:
            client.camera.wxyz = wxyz


def error_image(error) -> np.ndarray:
    """(H, W) error map -> uint8 (H, W, 3) grey image, white at its 99th percentile and above."""
    values = error.detach().float().cpu().numpy()
    top = max(float(np.percentile(values, 99)), 1e-6)
    grey = (np.clip(values / top, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1)


def _level_options(counts: dict[int, int]) -> list[str]:
    """The Levels dropdown: each level, then selective ranges up to the finest (coarse far, fine near)."""
    finest = max(counts)
    return [f"level {level}" for level in counts] + [f"selective {a}:{finest}" for a in counts if a < finest]


class ClientSession:
    def __init__(self, client, source: ModelSource, settings: SessionSettings, share: RenderShare,
                 up: np.ndarray, initial: Framing, initial_wxyz: np.ndarray | None = None, log=print) -> None:
        self.client, self.source, self.settings, self.share, self.up = client, source, settings, share, up
        self.initial, self.initial_wxyz, self.log = initial, initial_wxyz, log
        self.slot: LatestSlot[str] = LatestSlot()
        self.speed = SpeedMeter()
        self.sent_times: collections.deque[float] = collections.deque(maxlen=60)
        self.latencies: collections.deque[float] = collections.deque(maxlen=60)  # camera change -> image sent
        self.last_full: np.ndarray | None = None
        self._pose: ViewPose | None = None
        self._pose_time = 0.0
        self._last_sent_pose_time = -1.0
        self.frames_sent = 0
        self._splats = None
        self._splat_version = -1
        self._splat_time = 0.0
        self._backend_checked = False
        self.drawn_count: int | None = None  # Gaussians in the last image or splat set (a level choice's)
        self._build_gui()
        self._add_frustums()
        client.camera.on_update(self._on_camera)
        self._on_camera(client.camera)  # the pose just framed; viser reports only later changes to us
        self._thread = threading.Thread(target=self._run, name=f"splatkit-view-{client.client_id}", daemon=True)
        self._thread.start()
        if source.live:  # its own beat: renders may wait seconds for their share of the CPU, the stats must not
            threading.Thread(target=self._tick_training, name=f"splatkit-stats-{client.client_id}",
                             daemon=True).start()

    # ---- GUI -------------------------------------------------------------------------------------------
    def _build_gui(self) -> None:
        gui, src = self.client.gui, self.source
        degree = src.snapshot().gaussians.sh_degree
        bg = tuple(int(round(255 * v)) for v in (src.background or (0.0, 0.0, 0.0)))
        with gui.add_folder("View"):
            self.mode = gui.add_dropdown("Render mode", ("streamed", "splats"), initial_value=self.settings.mode,
                                         hint="streamed: rendered here and sent as images; splats: drawn by "
                                              "the browser (SH degree 0 colours)")
            self.output = gui.add_dropdown("Output", OUTPUTS, initial_value="RGB")
            exposed = tuple(src.exposures)  # training photos with a learnt exposure (--exposure)
            self.exposure = gui.add_dropdown("Exposure of", (MODEL_EXPOSURE, *exposed), initial_value=MODEL_EXPOSURE,
                                             visible=bool(exposed), hint="RGB as a training photo's learnt exposure "
                                             "saw it; the model itself keeps the photos' mean exposure")
            self.sh_degree = gui.add_slider("SH degree", 0, max(degree, 1), 1, degree, disabled=degree == 0)
            self.background = gui.add_rgb("Background", bg)
            self.max_height = gui.add_slider("Max resolution", 64, 2160, 8,
                                             min(2160, max(64, self.settings.max_height)))
            self.show_cameras = gui.add_checkbox("Training cameras", True, visible=bool(src.cameras))
            # Labelled by the image's path in the scene (cam_a/5.jpg), which stays unique across folders.
            names = [c.name for c in src.cameras or []]
            self.camera_choice = gui.add_dropdown("Go to camera", names or ("none",), visible=bool(names),
                                                  initial_value=names[0] if names else "none")
            self.reset_view = gui.add_button("Reset view")
            self.screenshot = gui.add_button("Screenshot (PNG)")
        self._build_levels_gui()
        with gui.add_folder("Stats"):
            self.stats_text = gui.add_markdown(self._stats_markdown())
        self.path_tool = CameraPathTool(self.client, src, self.settings.output_dir, self.settings.backend,
                                        current_pose=lambda: self._pose, background=self._background,
                                        log=self.log, levels=self.level_choice)
        if src.live:
            with gui.add_folder("Training"):
                self.train_text = gui.add_markdown(self._training_markdown())
                self.pause = gui.add_button("Pause training")
                self.pause.on_click(lambda _: self._toggle_pause())
                self.show_zones = gui.add_checkbox("Error zones (LPM)", True,
                                                   hint="3D zones where the last refinement found error")
                self.show_error = gui.add_checkbox("Last step's error map", False)
                self.error_image = gui.add_image(np.zeros((8, 8, 3), np.uint8), label="Error map", visible=False)
                self._zone_handles: list = []
                self._drawn: tuple = (None, None)  # the boxes list and error map shown, by identity
        for handle in (self.output, self.exposure, self.sh_degree, self.background, self.max_height):
            handle.on_update(lambda _: self.slot.put("refresh"))
        self.mode.on_update(lambda _: self.slot.put("mode"))
        self.show_cameras.on_update(lambda _: self._show_frustums(bool(self.show_cameras.value)))
        self.camera_choice.on_update(lambda _: self.jump_to(names.index(self.camera_choice.value)) if names else None)
        self.reset_view.on_click(lambda _: apply_framing(self.client, self.initial, self.initial_wxyz))
        self.screenshot.on_click(lambda _: self.save_screenshot())

    def _build_levels_gui(self) -> None:
        """For a model with levels of detail (FLoD): which levels to draw, and a splat budget."""
        self.levels = self.budget = None
        counts = level_counts(self.source.snapshot().gaussians)
        if not counts:
            return
        with self.client.gui.add_folder("Levels of detail"):
            self.levels = self.client.gui.add_dropdown("Levels", _level_options(counts),
                                                       initial_value=f"level {max(counts)}",
                                                       hint="one level, or selective a:b (fine near, coarse far)")
            self.budget = self.client.gui.add_number("Budget (splats)", 0, min=0, step=1000,
                                                     hint="the finest selective set within this many splats per "
                                                          "view; 0: off")
        for handle in (self.levels, self.budget):
            handle.on_update(lambda _: self.slot.put("refresh"))

    def level_choice(self) -> LevelChoice:
        """What the GUI asks to draw of a model with levels (a plain model: all of it)."""
        if self.levels is None:
            return LevelChoice()
        if int(self.budget.value) > 0:
            return LevelChoice(budget=int(self.budget.value))
        kind, value = self.levels.value.split(" ")
        if kind == "level":
            return LevelChoice(level=int(value))
        coarsest, finest = value.split(":")
        return LevelChoice(levels=(int(coarsest), int(finest)))

    def _drawn_model(self, snapshot, camera):
        """The Gaussians to draw from `camera`: the GUI's level choice, or the finest level when it cannot be
        met (a budget below the coarsest level, a level a live run has not reached yet)."""
        try:
            return self.level_choice().for_view(snapshot.gaussians, camera)
        except SplatkitError as exc:
            self.log(f"splatkit view: {exc}; showing the finest level")
            return single_level(snapshot.gaussians)

    def _stats_markdown(self) -> str:
        now = time.perf_counter()
        fps = sum(1 for t in self.sent_times if now - t <= 1.0)
        n = self.drawn_count if self.drawn_count is not None else len(self.source.snapshot().gaussians)
        latency = f", latency {1000 * float(np.median(self.latencies)):.0f} ms" if self.latencies else ""
        return (f"**Gaussians** {n:,}  \n**Render** {1000 * self.speed.last_seconds:.0f} ms, {fps} fps{latency}")

    def _training_markdown(self) -> str:
        s = self.source.stats
        state = "paused" if self.source.paused.is_set() else "running"
        counts = level_counts(self.source.snapshot().gaussians)
        level = f"  \n**Training level** {max(counts)}" if counts else ""
        return (f"**Step** {s.step:,} / {s.total_steps:,} ({state})  \n**Loss** {s.loss:.4f}  "
                f"**PSNR** {s.psnr:.2f}  \n**Gaussians** {s.num_gaussians:,}  **Speed** {s.steps_per_second:.1f} it/s"
                + level)

    def _toggle_pause(self) -> None:
        if self.source.paused.is_set():
            self.source.paused.clear()
            self.pause.label = "Pause training"
        else:
            self.source.paused.set()
            self.pause.label = "Resume training"
        self.train_text.content = self._training_markdown()

    def _add_frustums(self) -> None:
        cameras = self.source.cameras
        self._frustums, self._hidden = [], None
        if not cameras:
            return
        centers = np.stack([c.center for c in cameras])
        spread = float(np.linalg.norm(centers - centers.mean(0), axis=1).max()) if len(cameras) > 1 else 1.0
        scale = max(0.04 * spread, 1e-3)
        for i, camera in enumerate(cameras):
            pose = pose_from_camera(camera)
            handle = self.client.scene.add_camera_frustum(
                f"/cameras/{i:04d}", fov=pose.fov, aspect=pose.aspect, scale=scale, wxyz=pose.wxyz,
                position=pose.position, color=(90, 140, 220))
            handle.on_click(lambda _, i=i: self.jump_to(i))
            self._frustums.append(handle)
        self._hide_frustum(0)  # the view opens at camera 0, whose frustum would frame the whole picture

    def _show_frustums(self, show: bool) -> None:
        for i, handle in enumerate(self._frustums):
            handle.visible = show and i != self._hidden

    def _hide_frustum(self, index: int) -> None:
        """Hide the frustum of the camera the view is at (showing the one hidden before)."""
        if self._hidden is not None:
            self._frustums[self._hidden].visible = bool(self.show_cameras.value)
        self._frustums[index].visible = False
        self._hidden = index

    def jump_to(self, index: int) -> None:
        camera = self.source.cameras[index]
        framing = frame_camera(camera, self.source.means_numpy(), self.up)
        apply_framing(self.client, framing, pose_from_camera(camera).wxyz)
        self._hide_frustum(index)

    def save_screenshot(self) -> Path | None:
        if self.last_full is None:
            self.client.add_notification("Screenshot", "nothing rendered yet (streamed mode only)",
                                         auto_close_seconds=5.0)
            return None
        from PIL import Image

        folder = self.settings.output_dir.expanduser()
        folder.mkdir(parents=True, exist_ok=True)
        path = (folder / f"splatkit-{self.source.name}-{time.strftime('%Y%m%d-%H%M%S')}.png").resolve()
        Image.fromarray(self.last_full).save(path)
        self.log(f"splatkit view: screenshot saved to {path}")
        self.client.add_notification("Screenshot saved", str(path), auto_close_seconds=8.0)
        return path

    # ---- rendering -------------------------------------------------------------------------------------
    def _on_camera(self, camera) -> None:
        self._pose = ViewPose(np.array(camera.wxyz), np.array(camera.position), float(camera.fov),
                              float(camera.aspect))
        self._full_height = int(camera.image_height)
        self._pose_time = time.perf_counter()
        self.slot.put("move")

    def close(self) -> None:
        self.slot.close()

    def _run(self) -> None:
        shown_version, need_full = -1, False
        while not self.slot.closed:
            wait = max(0.0, SETTLE_SECONDS - (time.perf_counter() - self._pose_time)) if need_full else POLL_SECONDS
            token = self.slot.take(timeout=wait)
            if self.slot.closed:
                break
            try:
                if token == "mode" or (self.mode.value == "splats") != (self._splats is not None):
                    self._switch_mode()
                if self.mode.value == "splats":
                    self._refresh_splats()
                    self._update_text()
                    continue
                if self._pose is None:
                    continue
                snapshot = self.source.snapshot()
                if token == "move":
                    self._render(snapshot, preview=True)
                    need_full = True
                elif token is not None or snapshot.version != shown_version or (
                        need_full and time.perf_counter() - self._pose_time >= SETTLE_SECONDS):
                    self._render(snapshot, preview=False)
                    need_full = False
                shown_version = snapshot.version
                self._update_text()
            except Exception as exc:  # a render failure must not kill the tab's worker silently
                self.log(f"splatkit view: render failed: {type(exc).__name__}: {exc}")
                time.sleep(0.5)

    def _update_text(self) -> None:
        self.stats_text.content = self._stats_markdown()

    def _tick_training(self) -> None:
        while not self.slot.closed:
            self.train_text.content = self._training_markdown()
            self._update_overlays()
            self._update_level_options()
            time.sleep(TRAINING_STATS_SECONDS)

    def _update_level_options(self) -> None:
        """A live FLoD run gains levels as it trains: offer them, and keep showing the one being trained when
        that was shown."""
        if self.levels is None:
            return
        options = _level_options(level_counts(self.source.snapshot().gaussians))
        if tuple(options) != tuple(self.levels.options):
            following = self.levels.value == [o for o in self.levels.options if o.startswith("level")][-1]
            self.levels.options = options
            if following:
                self.levels.value = [o for o in options if o.startswith("level")][-1]
            self.slot.put("refresh")

    def _update_overlays(self) -> None:
        """Draw the plug-ins' boxes (LPM's zones) as wireframes and the last step's error map, when asked for."""
        boxes = self.source.boxes if self.show_zones.value else []
        error = self.source.error_map if self.show_error.value else None
        if boxes is not self._drawn[0]:
            for handle in self._zone_handles:
                handle.remove()
            self._zone_handles = [
                self.client.scene.add_box(f"/zones/{k}", color=(255, 90, 30), dimensions=tuple(hi - lo),
                                          position=tuple((lo + hi) / 2), wireframe=True)
                for k, (lo, hi) in enumerate(boxes)]
        if error is not None and error is not self._drawn[1]:
            self.error_image.image = error_image(error)
        self.error_image.visible = error is not None
        self._drawn = (boxes, error)

    def _render(self, snapshot, preview: bool) -> None:
        if not self._backend_checked:
            self._backend_checked = True
            self._build_native(snapshot.gaussians.means.device)
        time.sleep(self.share.wait_time())
        pose, pose_time = self._pose, self._pose_time  # the newest, even if it arrived while waiting
        full = max(16, min(int(self.max_height.value), getattr(self, "_full_height", 1080)))
        height = min(full, choose_height(self.speed.pixels_per_second, self.settings.target_fps, pose.aspect,
                                         full)) if preview else full
        camera = camera_from_pose(pose, height)
        background = self._background()
        output, sh_degree = self.output.value, int(self.sh_degree.value)
        exposure = self.source.exposures.get(self.exposure.value)  # None: the model's own (mean) exposure

        drawn = self._drawn_model(snapshot, camera)
        self.drawn_count = len(drawn)

        def timed_render() -> tuple[np.ndarray, float]:
            started = time.perf_counter()
            image = render_image(drawn, camera, output=output, sh_degree=sh_degree,
                                 background=background, backend=self.settings.backend, exposure=exposure)
            return image, time.perf_counter() - started

        image, seconds = self.source.compute(timed_render)  # beside training: between its steps
        self.speed.add(camera.width * camera.height, seconds)
        self.share.spent(seconds)
        self.client.scene.set_background_image(image, format="jpeg",
                                               jpeg_quality=MOVING_QUALITY if preview else STILL_QUALITY)
        self.sent_times.append(time.perf_counter())
        self.frames_sent += 1
        if pose_time > self._last_sent_pose_time:  # the first image of a new pose
            self.latencies.append(self.sent_times[-1] - pose_time)
            self._last_sent_pose_time = pose_time
        if not preview:
            self.last_full = image

    def _build_native(self, device: torch.device) -> None:
        """Compile the native rasterizer before the first frame where it renders and is not built yet (about a
        minute, once per machine), saying so in the tab, which would otherwise stay blank meanwhile."""
        if resolve_backend(self.settings.backend, device) != "native" or not native_build.needs_build():
            return
        notice = self.client.add_notification("Compiling the native rasterizer", "First use only, about a minute...",
                                              loading=True, with_close_button=False)
        try:
            self.source.compute(native_build.load_extension)  # beside training: between its steps, as renders
        finally:
            notice.remove()

    def _background(self) -> tuple[float, float, float]:
        return tuple(float(c) / 255.0 for c in self.background.value)

    def _switch_mode(self) -> None:
        if self.mode.value == "splats":
            self.client.scene.set_background_image(None)
            self._splat_version = -1
            self._refresh_splats(force=True)
        else:
            if self._splats is not None:
                self._splats.remove()
                self._splats = None
            self.slot.put("refresh")

    def _refresh_splats(self, force: bool = False) -> None:
        snapshot = self.source.snapshot()
        if snapshot.version == self._splat_version and not force:
            return
        if not force and time.perf_counter() - self._splat_time < SPLAT_REFRESH_SECONDS:
            return
        camera = camera_from_pose(self._pose, 64) if self._pose is not None else None
        drawn = self._drawn_model(snapshot, camera)
        self.drawn_count = len(drawn)
        arrays = splat_arrays(drawn)
        self._splats = self.client.scene.add_gaussian_splats("/splats", **arrays)
        self._splat_version, self._splat_time = snapshot.version, time.perf_counter()
