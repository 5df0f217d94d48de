"""Camera paths: interpolation through the keyframes, loops, frames, the JSON file (and its errors), the video
`splatkit render --path` writes, and the viewer tool that records paths in the model file's frame."""

from __future__ import annotations

import contextlib
import json
import math
from types import SimpleNamespace

import imageio.v2 as imageio
import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from splatkit.cli import main
from splatkit.data.scene import Similarity
from splatkit.errors import SplatkitError
from splatkit.io.ply import load_ply
from splatkit.render import rasterize
from splatkit.render.camera_path import CameraPath, Keyframe, render_video
from splatkit.train.evaluate import to_uint8
from splatkit.viewer.camera import ViewPose
from splatkit.viewer.path_tool import CameraPathTool
from splatkit.viewer.source import load_source

pytestmark = pytest.mark.xdist_group("tiny_scene")


def _wxyz(rotation: Rotation) -> np.ndarray:
    x, y, z, w = rotation.as_quat()
    return np.array([w, x, y, z])


def _orbit(n: int, radius: float = 3.0) -> list[Keyframe]:
    """Keyframes on a circle around the origin, each looking at it (OpenCV axes, z up in the world)."""
    keys = []
    for i in range(n):
        a = 2 * math.pi * i / n
        position = np.array([radius * math.cos(a), radius * math.sin(a), 1.0])
        forward = -position / np.linalg.norm(position)
        right = np.cross(forward, [0.0, 0.0, 1.0])
        right /= np.linalg.norm(right)
        R = np.stack([right, np.cross(forward, right), forward], axis=1)
        keys.append(Keyframe(position, _wxyz(Rotation.from_matrix(R)), 40.0 + 5 * i))
    return keys


def _pose(camera):
    c2w = camera.cam_to_world
    return c2w[:3, 3], Rotation.from_matrix(c2w[:3, :3]), math.degrees(2 * math.atan(0.5 * camera.height /
                                                                                        camera.K[1, 1]))


def test_path_passes_through_keyframes_smoothly():
    keys = _orbit(4)
    keys[2] = Keyframe(keys[2].position, -keys[2].wxyz, keys[2].fov_deg)  # same rotation, other sign
    path = CameraPath(keys, width=64, height=48, fps=10, seconds=3.1)  # 31 frames: keyframes at 0, 10, 20, 30
    cameras = path.cameras()
    assert len(cameras) == 31 and (cameras[0].width, cameras[0].height) == (64, 48)
    for frame, key in zip((0, 10, 20, 30), keys):
        position, rotation, fov = _pose(cameras[frame])
        np.testing.assert_allclose(position, key.position, atol=1e-9)
        assert (rotation.inv() * Rotation.from_quat(np.roll(key.wxyz, -1))).magnitude() < 1e-6
        assert fov == pytest.approx(key.fov_deg, abs=1e-6)
    # Smooth: no jumps in position or orientation between frames (the sign flip must not cause a spin).
    positions = np.stack([_pose(c)[0] for c in cameras])
    steps = np.linalg.norm(np.diff(positions, axis=0), axis=1)
    assert steps.max() < 1.6 * steps.mean()
    turns = [(_pose(a)[1].inv() * _pose(b)[1]).magnitude() for a, b in zip(cameras, cameras[1:])]
    assert max(turns) < math.radians(12)  # a quarter orbit per 10 frames is 9 degrees a frame


def test_looped_path_closes_without_a_doubled_frame():
    path = CameraPath(_orbit(4), width=32, height=32, fps=8, seconds=4, loop=True)
    positions = np.stack([_pose(c)[0] for c in path.cameras()])
    assert len(positions) == 32
    gaps = np.linalg.norm(np.diff(np.vstack([positions, positions[:1]]), axis=0), axis=1)
    assert gaps.min() > 0.3 * gaps.mean() and gaps.max() < 1.7 * gaps.mean()  # the wrap is like any step
    # A circle through 4 points: the periodic spline stays near radius 3 all the way round.
    radii = np.linalg.norm(positions[:, :2], axis=1)
    assert np.abs(radii - 3.0).max() < 0.15


def test_json_round_trip_and_errors(tmp_path):
    path = CameraPath(_orbit(3), width=320, height=240, fps=24, seconds=2.5, loop=True, background=(1, 0.5, 0))
    file = tmp_path / "path.json"
    path.save(file)
    again, want = CameraPath.load(file).to_json(), path.to_json()
    for a, b in zip(again.pop("keyframes"), want.pop("keyframes")):
        assert a.keys() == b.keys() and all(np.allclose(a[k], b[k], atol=1e-12) for k in a)
    assert again == want
    broken = {
        "not json": "{",
        "no keyframes": json.dumps({"keyframes": []}),
        "zero quaternion": json.dumps({"keyframes": [{"position": [0, 0, 0], "wxyz": [0, 0, 0, 0], "fov_deg": 50}]}),
        "odd size": json.dumps({**path.to_json(), "width": 321}),
        "missing field": json.dumps({"keyframes": [{"position": [0, 0, 0]}]}),
        "bad position": json.dumps({"keyframes": [{"position": [0, 0], "wxyz": [1, 0, 0, 0], "fov_deg": 50}]}),
    }
    for name, text in broken.items():
        bad = tmp_path / f"{name.replace(' ', '_')}.json"
        bad.write_text(text)
        with pytest.raises(SplatkitError) as info:
            CameraPath.load(bad)
        message = str(info.value)
        assert str(bad) in message and "\n" not in message, name
    with pytest.raises(SplatkitError, match="not found"):
        CameraPath.load(tmp_path / "missing.json")


def test_similarity_moves_the_path_with_the_model(tiny_run):
    """Rendering the training-frame model along a path equals rendering the file's model along the same path
    mapped into the file's frame: what the viewer relies on when it saves paths."""
    source = load_source(tiny_run)  # training frame
    model_file = load_ply(tiny_run / "point_cloud.ply")
    centre = source.means_numpy().mean(0).astype(np.float64)
    keys = [Keyframe(k.position * 0.5 + centre, k.wxyz, 50.0) for k in _orbit(3, radius=2.0)]
    shown = CameraPath(keys, width=48, height=36, fps=2, seconds=1)
    in_file = shown.transformed(source.to_file_frame)
    assert not np.allclose(in_file.keyframes[0].position, shown.keyframes[0].position)
    for a, b in zip(shown.cameras(), in_file.cameras()):
        ra = rasterize(source.snapshot().gaussians, a, backend="torch").rgb
        rb = rasterize(model_file, b, backend="torch").rgb
        assert torch.abs(ra - rb).max() < 2e-3


def test_render_path_cli_writes_the_video(tiny_run, tmp_path, capsys):
    model = load_ply(tiny_run / "point_cloud.ply")
    centre = model.means.mean(0).double().numpy()
    keys = [Keyframe(k.position + centre, k.wxyz, 60.0) for k in _orbit(3, radius=1.5)]
    path = CameraPath(keys, width=64, height=48, fps=6, seconds=1.5)
    path.save(tmp_path / "orbit.json")
    assert main(["render", str(tiny_run), "--path", str(tmp_path / "orbit.json"), "--out", str(tmp_path),
                 "--backend", "torch"]) == 0
    video = tmp_path / "orbit.mp4"
    frames = [np.asarray(f) for f in imageio.get_reader(video)]
    assert len(frames) == path.num_frames == 9 and frames[0].shape == (48, 64, 3)
    expected = [to_uint8(rasterize(model, c, backend="torch").rgb) for c in path.cameras()]
    for got, want in zip(frames, expected):
        mse = np.mean((got.astype(np.float64) - want) ** 2)
        assert 10 * math.log10(255**2 / max(mse, 1e-10)) > 28  # H.264 at quality 8 on a 64x48 frame
    assert not list(tmp_path.glob(".*"))  # no temporary file left behind
    capsys.readouterr()
    # Errors: one line naming the file.
    (tmp_path / "bad.json").write_text("[]")
    assert main(["render", str(tiny_run), "--path", str(tmp_path / "bad.json"), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "bad.json" in err and "not a camera path" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(SplatkitError, match=r"\.mp4"):
        render_video(model, path, tmp_path / "video.gif")


class _Handle(SimpleNamespace):
    def on_click(self, cb):
        self.cb = cb

    on_update = on_click

    def remove(self):
        self.removed = True


def test_viewer_tool_records_keyframes_in_the_file_frame(tiny_run, tmp_path):
    source = load_source(tiny_run)
    camera = source.cameras[0]
    c2w = camera.cam_to_world
    pose = ViewPose(_wxyz(Rotation.from_matrix(c2w[:3, :3])), c2w[:3, 3], math.radians(50.0), 4 / 3)
    notes = []
    gui = SimpleNamespace(add_folder=lambda *a, **k: contextlib.nullcontext(),
                          add_markdown=lambda content, **k: _Handle(content=content),
                          add_button=lambda label, **k: _Handle(label=label),
                          add_number=lambda label, value, **k: _Handle(value=value),
                          add_checkbox=lambda label, value, **k: _Handle(value=value))
    client = SimpleNamespace(gui=gui, scene=SimpleNamespace(add_camera_frustum=lambda *a, **k: _Handle()),
                             add_notification=lambda title, body, **k: notes.append(body) or _Handle())
    tool = CameraPathTool(client, source, tmp_path, "torch", current_pose=lambda: pose,
                          background=lambda: (0.0, 0.0, 0.0), log=lambda *a: None)
    assert tool.save() is None and notes[-1] == "add a keyframe first"
    tool.add_current()
    tool.add_current()
    assert tool.count.content == "2 keyframes"
    saved = CameraPath.load(tool.save())
    expected = source.to_file_frame.scale * (c2w[:3, 3] - source.to_file_frame.center)
    np.testing.assert_allclose(saved.keyframes[0].position, expected, atol=1e-9)
    assert saved.keyframes[0].fov_deg == pytest.approx(50.0)
    assert saved.height == 720 and saved.width == 960  # the browser's 4:3
    # The saved path is in the frame of the run's point_cloud.ply: Similarity maps the training frame there.
    record = json.loads((tiny_run / "config.json").read_text())
    back = Similarity.from_json(record["to_normalized"])
    np.testing.assert_allclose(back.scale * (saved.keyframes[0].position - back.center), c2w[:3, 3], atol=1e-9)


def test_a_turning_similarity_turns_the_path_with_the_model(tiny_run):
    """With a rotation in the map (an upright export), the path turns with the model: same pictures."""
    model = load_ply(tiny_run / "point_cloud.ply")
    turn = Similarity(1.5, model.means.double().numpy().mean(0), Rotation.from_rotvec([0.3, -0.8, 1.2]).as_matrix())
    centre = model.means.double().numpy().mean(0)
    keys = [Keyframe(k.position + centre, k.wxyz, 50.0) for k in _orbit(3, radius=3.0)]
    path = CameraPath(keys, width=48, height=36, fps=2, seconds=1)
    for a, b in zip(path.cameras(), path.transformed(turn).cameras()):
        ra = rasterize(model, a, backend="torch").rgb
        rb = rasterize(model.transformed(turn), b, backend="torch").rgb
        assert float(ra.std()) > 0.01 and torch.abs(ra - rb).max() < 2e-3
