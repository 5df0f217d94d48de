"""Camera paths: keyframes saved by the viewer, a smooth interpolation through them, and their video.

The JSON file (written by the viewer's camera-path tool, read by `splatkit render --path`) is in the frame of
the model file (a run's `point_cloud.ply`, i.e. the capture's own frame), so a path fits the model whether it
is opened as a run folder or as the .ply. Poses are camera-to-world with OpenCV axes (x right, y down, z
forward), rotations as wxyz quaternions, fields of view vertical in degrees:

    {"version": 1, "width": 1280, "height": 720, "fps": 30, "seconds": 4.0, "loop": false,
     "background": [0, 0, 0],
     "keyframes": [{"position": [x, y, z], "wxyz": [w, x, y, z], "fov_deg": 50.0}, ...]}

Positions and fields of view follow a cubic spline through the keyframes, rotations a C2-smooth rotation
spline (scipy's `RotationSpline`), keyframes evenly spaced in time; a looped path closes back on the first.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from scipy.interpolate import CubicSpline
from scipy.spatial.transform import Rotation, RotationSpline

from splatkit.atomic import atomic_path, write_text_atomic
from splatkit.data.cameras import Camera
from splatkit.data.scene import Similarity
from splatkit.errors import SplatkitError, file_error
from splatkit.model.gaussians import Gaussians
from splatkit.model.levels import LevelChoice

PATH_VERSION = 1


@dataclass
class Keyframe:
    position: np.ndarray  # (3,) camera centre
    wxyz: np.ndarray  # (4,) camera-to-world rotation
    fov_deg: float  # vertical


@dataclass
class CameraPath:
    keyframes: list[Keyframe] = field(default_factory=list)
    width: int = 1280
    height: int = 720
    fps: float = 30.0
    seconds: float = 4.0
    loop: bool = False
    background: tuple[float, float, float] = (0.0, 0.0, 0.0)

    @property
    def num_frames(self) -> int:
        return max(1, round(self.seconds * self.fps))

    def transformed(self, similarity: Similarity) -> "CameraPath":
        """The same path in another frame: `similarity` moves the positions and turns the orientations;
        fields of view keep."""
        R = np.asarray(similarity.rotation, np.float64)
        turn = Rotation.from_matrix(R)
        keys = [Keyframe(similarity.scale * R @ (k.position - similarity.center),
                         (turn * Rotation.from_quat(_xyzw(k.wxyz))).as_quat()[[3, 0, 1, 2]], k.fov_deg)
                for k in self.keyframes]
        return dataclasses.replace(self, keyframes=keys)

    def to_json(self) -> dict:
        return {"version": PATH_VERSION, "width": int(self.width), "height": int(self.height),
                "fps": float(self.fps), "seconds": float(self.seconds), "loop": bool(self.loop),
                "background": [float(v) for v in self.background],
                "keyframes": [{"position": [float(v) for v in k.position], "wxyz": [float(v) for v in k.wxyz],
                               "fov_deg": float(k.fov_deg)} for k in self.keyframes]}

    def save(self, path: Path) -> None:
        write_text_atomic(path, json.dumps(self.to_json(), indent=2))

    @classmethod
    def load(cls, path: Path) -> "CameraPath":
        path = Path(path)
        if not path.is_file():
            raise file_error(path, "camera path not found")
        try:
            d = json.loads(path.read_text())
            if not isinstance(d, dict) or not isinstance(d.get("keyframes"), list):
                raise file_error(path, "not a camera path (expected a JSON object with a list of keyframes)")
            keyframes = [Keyframe(_vector(k["position"], 3), _unit_quaternion(k["wxyz"]), float(k["fov_deg"]))
                         for k in d["keyframes"]]
            result = cls(keyframes, width=int(d.get("width", 1280)), height=int(d.get("height", 720)),
                         fps=float(d.get("fps", 30.0)), seconds=float(d.get("seconds", 4.0)),
                         loop=bool(d.get("loop", False)),
                         background=tuple(float(v) for v in d.get("background", (0.0, 0.0, 0.0))))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise file_error(path, f"not a JSON camera path ({exc})") from None
        except (KeyError, TypeError, ValueError) as exc:
            raise file_error(path, f"malformed camera path ({type(exc).__name__}: {exc})") from None
        problem = result.problem()
        if problem:
            raise file_error(path, problem)
        return result

    def problem(self) -> str | None:
        """What makes this path unrenderable, or None."""
        if not self.keyframes:
            return "the camera path has no keyframes"
        if not (16 <= self.width <= 8192 and 16 <= self.height <= 8192):
            return f"video size {self.width}x{self.height} is outside 16..8192"
        if self.width % 2 or self.height % 2:
            return f"video size {self.width}x{self.height} must be even (H.264 needs it)"
        if not (0 < self.fps <= 240 and 0 < self.seconds <= 3600):
            return f"fps {self.fps} or duration {self.seconds} s is out of range"
        if not all(0.1 < k.fov_deg < 179.0 for k in self.keyframes):
            return "a keyframe's field of view is outside 0.1..179 degrees"
        if not all(np.isfinite(k.position).all() for k in self.keyframes):
            return "a keyframe position is not finite"
        return None

    def cameras(self) -> list[Camera]:
        """One camera per video frame along the smooth path."""
        keys = self.keyframes + ([self.keyframes[0]] if self.loop and len(self.keyframes) > 1 else [])
        frames = self.num_frames
        if len(keys) == 1:
            positions = np.repeat(keys[0].position[None], frames, 0)
            rotations = Rotation.from_quat(np.repeat(_xyzw(keys[0].wxyz)[None], frames, 0))
            fovs = np.full(frames, keys[0].fov_deg)
        else:
            times = np.arange(len(keys), dtype=np.float64)
            # A looped video ends one frame short of its start, so it repeats without a doubled frame.
            t = np.linspace(0.0, times[-1], frames, endpoint=not self.loop)
            boundary = "periodic" if self.loop else "natural"
            positions = CubicSpline(times, np.stack([k.position for k in keys]), bc_type=boundary)(t)
            fovs = CubicSpline(times, [k.fov_deg for k in keys], bc_type=boundary)(t)
            quats = np.stack([_xyzw(k.wxyz) for k in keys])
            for i in range(1, len(quats)):  # the shorter way round between neighbours
                if quats[i] @ quats[i - 1] < 0:
                    quats[i] = -quats[i]
            rotations = RotationSpline(times, Rotation.from_quat(quats))(t)
        matrices = rotations.as_matrix()
        return [Camera.from_pose(f"frame_{i:05d}", matrices[i], positions[i], math.radians(fovs[i]), self.width,
                                 self.height) for i in range(frames)]


def _vector(values, n: int) -> np.ndarray:
    v = np.asarray(values, np.float64)
    if v.shape != (n,):
        raise ValueError(f"expected {n} numbers, got {list(np.shape(v))}")
    return v


def _unit_quaternion(values) -> np.ndarray:
    q = _vector(values, 4)
    norm = float(np.linalg.norm(q))
    if not math.isfinite(norm) or norm < 1e-8:
        raise ValueError("a rotation quaternion is zero or not finite")
    return q / norm


def _xyzw(wxyz: np.ndarray) -> np.ndarray:
    return np.array([wxyz[1], wxyz[2], wxyz[3], wxyz[0]])


@torch.no_grad()
def render_video(gaussians: Gaussians, path: CameraPath, out: Path, *, backend: str = "auto",
                 on_frame: Callable[[int, int], None] | None = None,
                 run: Callable[[Callable[[], Any]], Any] = lambda work: work(),
                 levels: LevelChoice = LevelChoice()) -> Path:
    """Render every frame of `path` and encode an H.264 MP4 (imageio's ffmpeg) at `out`, atomically.
    `on_frame(done, total)` reports progress; `run(work)` is where each frame's render runs (beside live
    training: on the training thread, between steps); `levels` picks a model's levels of detail per frame."""
    from splatkit.render import rasterize

    if path.problem():
        raise SplatkitError(f"cannot render the camera path: {path.problem()}")
    if out.suffix.lower() not in (".mp4", ".mov", ".mkv"):
        raise SplatkitError(f"{out}: the video must be an .mp4, .mov or .mkv file")
    if importlib.util.find_spec("imageio_ffmpeg") is None:  # the ffmpeg binary imageio writes video with
        raise SplatkitError("writing video needs imageio-ffmpeg: pip install imageio-ffmpeg")
    import imageio.v2 as imageio

    cameras = path.cameras()
    with atomic_path(out, suffix=out.suffix) as tmp:
        # yuv420p: what phones and browsers play.
        writer = imageio.get_writer(tmp, format="FFMPEG", mode="I", fps=path.fps, codec="libx264", quality=8,
                                    pixelformat="yuv420p", macro_block_size=1, ffmpeg_log_level="error")
        try:
            for i, camera in enumerate(cameras):
                image = run(lambda: rasterize(levels.for_view(gaussians, camera), camera, background=path.background,
                                              backend=backend).rgb)
                writer.append_data((image.clamp(0, 1).cpu().numpy() * 255 + 0.5).astype(np.uint8))
                if on_frame:
                    on_frame(i + 1, len(cameras))
        finally:
            writer.close()
    return out
