"""The GUI's camera-path folder: keyframes from the current view, play them back in the browser, save the path
as JSON (the format `splatkit render --path` reads) and render it to an MP4 beside it."""

from __future__ import annotations

import math
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np

from splatkit.model.levels import LevelChoice
from splatkit.render.camera_path import CameraPath, Keyframe, render_video
from splatkit.viewer.camera import ViewPose, matrix_to_wxyz
from splatkit.viewer.source import ModelSource


class CameraPathTool:
    def __init__(self, client, source: ModelSource, output_dir: Path, backend: str,
                 current_pose: Callable[[], ViewPose | None], background: Callable[[], tuple[float, float, float]],
                 log=print, levels: Callable[[], LevelChoice] = LevelChoice) -> None:
        self.client, self.source, self.output_dir, self.backend = client, source, output_dir, backend
        self.current_pose, self.background, self.log, self.levels = current_pose, background, log, levels
        self.keyframes: list[Keyframe] = []  # in the frame shown
        self._markers: list = []
        self._busy = threading.Lock()  # one playback or video at a time
        gui = client.gui
        with gui.add_folder("Camera path", expand_by_default=False):
            self.count = gui.add_markdown("No keyframes")
            add = gui.add_button("Add keyframe (current view)")
            remove = gui.add_button("Remove last keyframe")
            clear = gui.add_button("Clear")
            self.seconds = gui.add_number("Duration (s)", 4.0, min=0.5, max=600.0, step=0.5)
            self.fps = gui.add_number("FPS", 30, min=1, max=120, step=1)
            self.video_height = gui.add_number("Video height", 720, min=64, max=4320, step=2)
            self.loop = gui.add_checkbox("Loop", False)
            play = gui.add_button("Play")
            save = gui.add_button("Save path (JSON)")
            render = gui.add_button("Render video (MP4)")
        add.on_click(lambda _: self.add_current())
        remove.on_click(lambda _: self._set_keyframes(self.keyframes[:-1]))
        clear.on_click(lambda _: self._set_keyframes([]))
        play.on_click(lambda _: self._in_background(self.play))
        save.on_click(lambda _: self.save())
        render.on_click(lambda _: self._in_background(self.render))

    # ---- keyframes ---------------------------------------------------------------------------------------
    def add_current(self) -> None:
        pose = self.current_pose()
        if pose is not None:
            self._set_keyframes(self.keyframes + [Keyframe(np.array(pose.position, np.float64),
                                                           np.array(pose.wxyz, np.float64),
                                                           math.degrees(pose.fov))])

    def _set_keyframes(self, keyframes: list[Keyframe]) -> None:
        self.keyframes = keyframes
        self.count.content = f"{len(keyframes)} keyframe{'s' if len(keyframes) != 1 else ''}" if keyframes \
            else "No keyframes"
        for marker in self._markers:
            marker.remove()
        scale = 0.05 * self._marker_scale()
        self._markers = [self.client.scene.add_camera_frustum(
            f"/camera_path/{i:03d}", fov=math.radians(k.fov_deg), aspect=16 / 9, scale=scale, wxyz=k.wxyz,
            position=k.position, color=(240, 140, 40)) for i, k in enumerate(keyframes)]

    def _marker_scale(self) -> float:
        means = self.source.means_numpy()
        return float(np.percentile(np.linalg.norm(means - np.median(means, 0), axis=1), 90)) if len(means) else 1.0

    def path(self) -> CameraPath:
        """The path as set in the GUI, in the frame shown; the video's aspect is the browser's."""
        pose = self.current_pose()
        aspect = pose.aspect if pose is not None else 16 / 9
        height = int(self.video_height.value) // 2 * 2
        width = max(16, round(height * aspect / 2) * 2)
        return CameraPath(list(self.keyframes), width=width, height=height, fps=float(self.fps.value),
                          seconds=float(self.seconds.value), loop=bool(self.loop.value),
                          background=self.background())

    # ---- actions -----------------------------------------------------------------------------------------
    def _in_background(self, action: Callable[[], None]) -> None:
        threading.Thread(target=action, daemon=True).start()

    def _needs_keyframes(self) -> bool:
        if self.keyframes:
            return False
        self.client.add_notification("Camera path", "add a keyframe first", auto_close_seconds=5.0)
        return True

    def play(self) -> None:
        """Move the browser's camera along the path in real time (the streamed view follows it)."""
        if self._needs_keyframes() or not self._busy.acquire(blocking=False):
            return
        try:
            path = self.path()
            start = time.perf_counter()
            for i, camera in enumerate(path.cameras()):
                c2w = camera.cam_to_world
                with self.client.atomic():
                    self.client.camera.fov = camera.fov_y
                    self.client.camera.wxyz = matrix_to_wxyz(c2w[:3, :3])
                    self.client.camera.position = c2w[:3, 3]
                time.sleep(max(0.0, start + (i + 1) / path.fps - time.perf_counter()))
        finally:
            self._busy.release()

    def save(self) -> Path | None:
        if self._needs_keyframes():
            return None
        file = self._output_name("json")
        self.path().transformed(self.source.to_file_frame).save(file)
        self.log(f"splatkit view: camera path saved to {file}")
        self.client.add_notification("Camera path saved", str(file), auto_close_seconds=8.0)
        return file

    def render(self) -> Path | None:
        """Save the path, then render its video from the model shown (beside it, same name)."""
        if self._needs_keyframes() or not self._busy.acquire(blocking=False):
            return None
        try:
            json_file = self.save()
            video = json_file.with_suffix(".mp4")
            note = self.client.add_notification("Rendering video", "starting...", loading=True,
                                                with_close_button=False)

            def progress(done: int, total: int) -> None:
                note.body = f"frame {done} / {total}"

            render_video(self.source.snapshot().gaussians, self.path(), video, backend=self.backend,
                         levels=self.levels(), on_frame=progress, run=self.source.compute)
            note.title, note.body, note.loading = "Video saved", str(video), False
            note.with_close_button, note.auto_close_seconds = True, 10.0
            self.log(f"splatkit view: video saved to {video}")
            return video
        except Exception as exc:  # reported in the browser; the viewer keeps running
            self.client.add_notification("Video failed", f"{type(exc).__name__}: {exc}", color="red")
            self.log(f"splatkit view: video failed: {exc}")
            return None
        finally:
            self._busy.release()

    def _output_name(self, extension: str) -> Path:
        folder = self.output_dir.expanduser()
        folder.mkdir(parents=True, exist_ok=True)
        return (folder / f"splatkit-{self.source.name}-path-{time.strftime('%Y%m%d-%H%M%S')}.{extension}").resolve()
