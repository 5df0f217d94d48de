"""The browser viewer without a browser: camera conversion, pacing, the per-client worker (with a fake
viser client), loading errors and the port check."""

from __future__ import annotations

import contextlib
import dataclasses
import socket
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy.spatial import cKDTree

from splatkit.cli import main
from splatkit.data import load_scene
from splatkit.errors import SplatkitError
from splatkit.io.formats import write_splats
from splatkit.io.ply import load_ply, save_ply
from splatkit.model.gaussians import Gaussians, init_from_points
from splatkit.model.levels import LevelChoice, level_counts
from splatkit.render import rasterize
from splatkit.train.gaussian_model import GaussianModel
from splatkit.train.learning_rates import LearningRates
from splatkit.train.parameterisations import Plain3DGS
from splatkit.viewer.app import check_port_free
from splatkit.viewer.camera import (camera_from_pose, frame_points, matrix_to_wxyz, pose_from_camera,
                                    robust_bounds, up_from_cameras, wxyz_to_matrix)
from splatkit.viewer.pacing import LatestSlot, RenderShare, SpeedMeter, choose_height
from splatkit.viewer.render import splat_arrays
from splatkit.viewer.session import ClientSession, SessionSettings
from splatkit.viewer.source import LiveSource, ModelSource, load_source

pytestmark = pytest.mark.xdist_group("tiny_scene")


def _model(scene):
    return init_from_points(scene.points, scene.colors, sh_degree=1, init_opacity=0.5)


# ---- camera conversion ------------------------------------------------------------------------------------
def test_quaternion_round_trip():
    R = wxyz_to_matrix(np.array([0.3, -0.5, 0.2, 0.7]) / np.linalg.norm([0.3, -0.5, 0.2, 0.7]))
    np.testing.assert_allclose(wxyz_to_matrix(matrix_to_wxyz(R)), R, atol=1e-12)


def test_viser_pose_renders_like_the_training_camera(tiny_scene):
    scene = load_scene(tiny_scene)
    model = _model(scene)
    for camera in scene.cameras[:3]:
        pose = pose_from_camera(camera)
        back = camera_from_pose(pose, camera.height)
        assert (back.width, back.height) == (camera.width, camera.height)
        np.testing.assert_allclose(back.world_to_cam, camera.world_to_cam, atol=1e-9)
        a = rasterize(model, camera, backend="torch").rgb
        b = rasterize(model, back, backend="torch").rgb
        assert a.abs().max() > 0.05  # the view sees something
        torch.testing.assert_close(a, b, atol=2e-4, rtol=0)


def test_up_and_framing(tiny_scene):
    scene = load_scene(tiny_scene)
    up = up_from_cameras(scene.cameras)
    assert abs(np.linalg.norm(up) - 1) < 1e-9
    # Every camera's own up (-y) agrees with the mean up.
    assert all(-c.cam_to_world[:3, 1] @ up > 0 for c in scene.cameras)
    points = np.concatenate([np.random.default_rng(0).normal(size=(1000, 3)), [[1e4, 1e4, 1e4]]])
    lo, hi = robust_bounds(points)
    assert np.all(hi < 3)  # the far outlier is ignored
    framing = frame_points(points, up=np.array([0.0, 0.0, 1.0]))
    view = framing.look_at - framing.position
    assert np.linalg.norm(framing.look_at) < 0.5 and view[2] < 0  # looks at the bulk, from above


# ---- pacing -----------------------------------------------------------------------------------------------
def test_choose_height_fits_the_budget_and_never_exceeds_max():
    # 1 Mpixel/s at 10 fps: 100k pixels a frame, 16:9 -> about 237 px tall.
    h = choose_height(1e6, 10.0, 16 / 9, max_height=1080)
    assert 200 <= h <= 240 and h * round(h * 16 / 9) <= 1e5 * 1.05
    assert choose_height(1e6, 30.0, 16 / 9, 1080) < h  # a higher target frame rate: smaller
    assert choose_height(1e12, 10.0, 1.0, max_height=720) == 720
    assert choose_height(1.0, 10.0, 1.0, max_height=720) == 64  # floor
    assert choose_height(None, 10.0, 1.0, max_height=100) == 100


def test_speed_meter_and_render_share():
    meter = SpeedMeter()
    meter.add(1000, 0.1)
    assert meter.pixels_per_second == pytest.approx(10_000)
    share = RenderShare(0.1)
    share.spent(0.05, now=100.0)
    assert share.wait_time(now=100.0) == pytest.approx(0.45)  # 0.05 s render -> 0.45 s idle -> 10%
    assert RenderShare(1.0).wait_time() == 0.0


def test_latest_slot_newest_wins():
    slot: LatestSlot[int] = LatestSlot()
    assert slot.take(timeout=0.01) is None
    for pose in range(5):
        slot.put(pose)
    assert slot.take(timeout=0) == 4  # older poses never rendered
    assert slot.take(timeout=0.01) is None
    got = []
    consumer = threading.Thread(target=lambda: got.append(slot.take(timeout=5)))
    consumer.start()
    time.sleep(0.05)
    slot.put(7)
    consumer.join(5)
    assert got == [7]
    slot.close()
    assert slot.take(timeout=5) is None  # closing wakes a waiting worker at once


def test_splat_arrays(tiny_scene):
    model = _model(load_scene(tiny_scene))
    arrays = splat_arrays(model)
    n = len(model)
    assert arrays["covariances"].shape == (n, 3, 3) and arrays["opacities"].shape == (n, 1)
    s2 = model.activated_scales.numpy() ** 2
    np.testing.assert_allclose(np.trace(arrays["covariances"], axis1=1, axis2=2), s2.sum(1), rtol=1e-4)
    assert np.all(np.linalg.eigvalsh(arrays["covariances"].astype(np.float64)) > -1e-9)
    assert arrays["rgbs"].min() >= 0 and arrays["rgbs"].max() <= 1
    np.testing.assert_allclose(arrays["opacities"][:, 0], 0.5, atol=1e-5)


# ---- one client's worker, with a fake viser client -------------------------------------------------------
class _Handle:
    def __init__(self, value=None, options=()):
        self.value, self.options, self.label, self.content, self._callbacks = value, tuple(options), "", "", []

    def on_update(self, cb):
        self._callbacks.append(cb)
        return cb

    on_click = on_update

    def fire(self):
        for cb in self._callbacks:
            cb(SimpleNamespace(target=self))

    def remove(self):
        pass


class _FakeClient:
    def __init__(self):
        self.client_id = 1
        self.images: list[tuple[np.ndarray | None, dict]] = []
        self.notifications: list[tuple[str, str]] = []
        self.boxes: list[dict] = []
        self.camera = SimpleNamespace(on_update=lambda cb: setattr(self, "camera_cb", cb))

    def set_camera(self, camera, height):
        pose = pose_from_camera(camera)
        self.camera.__dict__.update(wxyz=pose.wxyz, position=pose.position, fov=pose.fov, aspect=pose.aspect,
                                    image_height=height)
        gui = SimpleNamespace(
            add_folder=lambda *a, **k: contextlib.nullcontext(),
            add_dropdown=lambda label, options, initial_value=None, **k: _Handle(initial_value, options),
            add_slider=lambda label, lo, hi, step, initial_value, **k: _Handle(initial_value),
            add_rgb=lambda label, initial_value, **k: _Handle(initial_value),
            add_button=lambda *a, **k: _Handle(),
            add_markdown=lambda content, **k: _Handle(content),
            add_number=lambda label, value, **k: _Handle(value),
            add_checkbox=lambda label, value, **k: _Handle(value),
            add_image=lambda image, **k: _Handle(image),
        )
        self.gui = gui
        self.scene = SimpleNamespace(
            set_background_image=lambda image, **k: self.images.append((image, k)),
            add_camera_frustum=lambda *a, **k: _Handle(),
            add_box=lambda name, **k: self.boxes.append(k) or _Handle(k),
            add_gaussian_splats=lambda *a, **k: _Handle(k),
        )

    def atomic(self):
        return contextlib.nullcontext()

    def add_notification(self, title, body, **k):
        self.notifications.append((title, body))
        return _Handle()


def _move(client, camera, height=36):
    pose = pose_from_camera(camera)
    client.camera_cb(SimpleNamespace(wxyz=pose.wxyz, position=pose.position, fov=pose.fov, aspect=pose.aspect,
                                     image_height=height))


def _wait_for(predicate, timeout=20.0):
    deadline = time.time() + timeout
    while time.time() < deadline and not predicate():
        time.sleep(0.02)
    assert predicate()


def test_session_previews_while_moving_then_one_full_render(tiny_scene, tmp_path):
    scene = load_scene(tiny_scene)
    source = ModelSource(_model(scene), cameras=scene.cameras, name="tiny")
    client = _FakeClient()
    client.set_camera(scene.cameras[0], 200)
    settings = SessionSettings(backend="torch", target_fps=1e6, output_dir=tmp_path)  # forces tiny previews
    session = ClientSession(client, source, settings, RenderShare(), np.array([0, 0, 1.0]),
                            frame_points(scene.points, np.array([0, 0, 1.0])))
    try:
        def fulls():
            return [img for img, k in client.images if k.get("jpeg_quality") == 75]

        _wait_for(lambda: len(fulls()) == 1)  # the framed pose, once still
        session.speed.add(1000, 1.0)  # a slow machine: previews must drop to the minimum height
        seen = len(client.images)
        _move(client, scene.cameras[1], height=200)
        _wait_for(lambda: len(fulls()) == 2)
        (preview, preview_kwargs), (full, _) = client.images[seen:]
        assert preview_kwargs["jpeg_quality"] == 40 and preview.shape[0] == 64
        assert full.shape[0] == 200 and full.dtype == np.uint8
        # Outputs: depth and alpha render too; the GUI change triggers a full render.
        session.output.value = "Alpha"
        session.output.fire()
        _wait_for(lambda: len(fulls()) == 3)
        path = session.save_screenshot()
        assert path is not None and path.is_file() and client.notifications[-1][1] == str(path)
        # Splats mode: the background image is cleared and splats are sent instead.
        session.mode.value = "splats"
        session.mode.fire()
        _wait_for(lambda: session._splats is not None)
        assert client.images[-1][0] is None
    finally:
        session.close()


def test_cameras_are_listed_by_their_image_path_and_jumped_to(tiny_scene):
    """Cameras from several folders keep their folder in the viewer's list (names repeat across folders)."""
    scene = load_scene(tiny_scene)
    cameras = [dataclasses.replace(c, name=f"cam_{'ab'[k % 2]}/{k // 2}.png") for k, c in enumerate(scene.cameras)]
    source = ModelSource(_model(scene), cameras=cameras, name="tiny")
    client = _FakeClient()
    client.set_camera(cameras[0], 36)
    session = ClientSession(client, source, SessionSettings(backend="torch"), RenderShare(), np.array([0, 0, 1.0]),
                            frame_points(scene.points, np.array([0, 0, 1.0])))
    try:
        assert session.camera_choice.options == tuple(c.name for c in cameras)
        session.camera_choice.value = "cam_b/2.png"
        session.camera_choice.fire()
        np.testing.assert_allclose(client.camera.wxyz, pose_from_camera(cameras[5]).wxyz, atol=1e-9)
    finally:
        session.close()


def test_exposure_dropdown_previews_a_training_photos_exposure(tiny_scene):
    """A run trained with --exposure: the viewer shows the model as it is, and as a chosen training photo's
    learnt affine transform saw it."""
    scene = load_scene(tiny_scene)
    transform = torch.tensor([[0.5, 0.0, 0.0, 0.1], [0.0, 0.8, 0.0, 0.0], [0.0, 0.0, 1.2, -0.05]])
    name = scene.cameras[2].name
    source = ModelSource(_model(scene), cameras=scene.cameras, name="tiny", exposures={name: transform})
    client = _FakeClient()
    client.set_camera(scene.cameras[0], 36)
    session = ClientSession(client, source, SessionSettings(backend="torch"), RenderShare(), np.array([0, 0, 1.0]),
                            frame_points(scene.points, np.array([0, 0, 1.0])))

    def fulls():
        return [img for img, k in client.images if k.get("jpeg_quality") == 75]

    try:
        assert session.exposure.options == ("the model (mean)", name)
        _wait_for(lambda: len(fulls()) == 1)
        session.exposure.value = name
        session.exposure.fire()
        _wait_for(lambda: len(fulls()) == 2)
    finally:
        session.close()
    plain, exposed = (image.astype(np.float64) / 255 for image in fulls())
    expected = np.clip(plain * np.diagonal(transform[:, :3].numpy()) + transform[:, 3].numpy(), 0, 1)
    inside = plain < 1.0  # where the plain frame was not clipped, the transform of it is what is shown
    assert inside.mean() > 0.5
    # each frame rounds to 8 bits (half a step), the transform scales the plain one's error by its gain (<= 1.2);
    # 1e-6 covers float32 rounding before the 8-bit step
    np.testing.assert_array_less(np.abs(exposed - expected)[inside], (0.5 + 0.5 * 1.2) / 255 + 1e-6)


def test_first_native_frame_says_the_rasterizer_is_compiling(tiny_scene, monkeypatch):
    """On a fresh machine the first native frame compiles the rasterizer (about a minute): the tab says so
    meanwhile instead of staying blank, and the note goes once the build is done."""
    from splatkit.render import native_build
    from splatkit.viewer import session as session_module

    scene = load_scene(tiny_scene)
    client = _FakeClient()
    client.set_camera(scene.cameras[0], 36)
    events: list = []

    class _Notice(_Handle):
        def remove(self):
            events.append("removed")

    def add_notification(title, body, **kwargs):
        events.append((title, kwargs.get("loading")))
        return _Notice()

    client.add_notification = add_notification
    monkeypatch.setattr(session_module, "resolve_backend", lambda name, device: "native")
    monkeypatch.setattr(native_build, "needs_build", lambda arch=None: True)
    monkeypatch.setattr(native_build, "load_extension", lambda arch=None: events.append("built"))
    settings = SessionSettings(backend="torch")  # the frames themselves: no real build in this test
    session = ClientSession(client, ModelSource(_model(scene), cameras=scene.cameras, name="tiny"), settings,
                            RenderShare(), np.array([0, 0, 1.0]), frame_points(scene.points, np.array([0, 0, 1.0])))
    try:
        _wait_for(lambda: len(client.images) >= 2)
    finally:
        session.close()
    assert events == [("Compiling the native rasterizer", True), "built", "removed"]  # once, before the first frame


class _FakeTrainer:
    """What LiveSource reads of a Trainer: its model, scene, run folder, step and config."""

    def __init__(self, scene) -> None:
        self.model = GaussianModel(Plain3DGS())
        Plain3DGS().create(self.model, _model(scene), LearningRates(), scene_extent=1.0)
        self.scene, self.run_dir, self.step, self.cfg = scene, Path("run"), 3, SimpleNamespace(steps=10)
        self.plugins, self.states, self.last_error = {}, {}, None

    @property
    def gaussians(self):
        return self.model.gaussians()


def test_live_source_copies_only_when_watched_and_pauses(tiny_scene):
    scene = load_scene(tiny_scene)
    trainer = _FakeTrainer(scene)
    live = LiveSource(trainer, interval=0.0)
    live.after_step(trainer, {"loss": 0.5, "psnr": 20.0}, 4.0)
    assert live.snapshot().version == 0 and live.stats.step == 3  # nobody watching: no copy
    live.watching = 1
    with torch.no_grad():
        trainer.model.params["means"] += 1.0
    live.after_step(trainer, {"loss": 0.5, "psnr": 20.0}, 4.0)
    snap = live.snapshot()
    assert snap.version == 1 and torch.equal(snap.gaussians.means, trainer.model.params["means"].detach())
    assert snap.gaussians.means.data_ptr() != trainer.model.params["means"].data_ptr()
    live.paused.set()
    done = threading.Event()
    worker = threading.Thread(target=lambda: (live.after_step(trainer, {}, 0.0), done.set()))
    worker.start()
    time.sleep(0.2)
    assert not done.is_set()  # training waits while paused
    live.paused.clear()
    worker.join(5)
    assert done.is_set()


def test_live_view_draws_lpm_zones_and_the_last_error_map(tiny_scene):
    from splatkit.train.strategies import LPMStrategy
    from splatkit.train.strategies.zones import Zone

    scene = load_scene(tiny_scene)
    trainer = _FakeTrainer(scene)
    trainer.plugins = {"strategy": LPMStrategy()}
    trainer.states = {"strategy": {"_zones": [Zone(np.array([0.0, 0, 0]), np.array([1.0, 2, 3]))], "base": {}}}
    trainer.last_error = torch.linspace(0, 1, 36 * 48).reshape(36, 48)
    live = LiveSource(trainer, interval=0.0)
    live.watching = 1
    live.after_step(trainer, {"loss": 0.5, "psnr": 20.0}, 4.0)
    client = _FakeClient()
    client.set_camera(scene.cameras[0], 36)
    session = ClientSession(client, live, SessionSettings(backend="torch"), RenderShare(), np.array([0, 0, 1.0]),
                            frame_points(scene.points, np.array([0, 0, 1.0])))
    try:
        _wait_for(lambda: len(client.boxes) == 1)
        assert client.boxes[0]["dimensions"] == (1.0, 2.0, 3.0) and client.boxes[0]["position"] == (0.5, 1.0, 1.5)
        assert client.boxes[0]["wireframe"] and not session.error_image.visible
        session.show_error.value = True
        _wait_for(lambda: session.error_image.visible)
        image = session.error_image.image
        assert image.shape == (36, 48, 3) and image[0, 0, 0] == 0 and image[-1, -1, 0] == 255
    finally:
        session.close()


def test_live_source_renders_on_the_training_thread(tiny_scene):
    """A viewer thread's render waits for the training thread's next step boundary and runs there (never beside
    a step, which would oversubscribe the cores); while paused it runs at once; after training, on the caller."""
    scene = load_scene(tiny_scene)
    trainer = _FakeTrainer(scene)
    live = LiveSource(trainer)
    results: list = []
    viewer_thread = threading.Thread(target=lambda: results.append(live.compute(threading.current_thread)))
    viewer_thread.start()
    time.sleep(0.2)
    assert not results  # no step boundary yet
    live.after_step(trainer, {}, 0.0)
    viewer_thread.join(5)
    assert results == [threading.current_thread()]  # ran on the "training" thread
    errors: list = []

    def ask_failing_render() -> None:
        try:
            live.compute(lambda: 1 / 0)
        except ZeroDivisionError as exc:  # the failure reaches the viewer thread that asked, not training
            errors.append(exc)

    failing = threading.Thread(target=ask_failing_render)
    failing.start()
    time.sleep(0.1)
    live.after_step(trainer, {}, 0.0)
    failing.join(5)
    assert len(errors) == 1
    live.paused.set()  # while paused, training waits in after_step and serves renders as they come
    training = threading.Thread(target=lambda: live.after_step(trainer, {}, 0.0))
    training.start()
    assert live.compute(threading.current_thread) is training
    live.paused.clear()
    training.join(5)
    live.finish()
    assert live.compute(threading.current_thread) is threading.current_thread()


# ---- loading and CLI errors -------------------------------------------------------------------------------
def test_load_run_folder_in_training_frame(tiny_run):
    source = load_source(tiny_run)
    assert len(source.cameras) == 10 and len(source.snapshot().gaussians) > 0


def test_view_reads_every_splat_format(tiny_run, tmp_path, capsys):
    model = load_ply(tiny_run / "point_cloud.ply")
    for name, fmt in [("m.compressed.ply", "compressed-ply"), ("m.spz", "spz"), ("m.splat", "splat")]:
        write_splats(model, tmp_path / name, fmt)
        shown = load_source(tmp_path / name).snapshot().gaussians
        assert len(shown) == len(model)
        gaps, _ = cKDTree(model.means.numpy()).query(shown.means.numpy())  # the formats may reorder splats
        assert gaps.max() < 0.05, (fmt, gaps.max())
    bad = tmp_path / "bad.spz"
    bad.write_bytes(b"\x1f\x8b\x08\x00garbage")
    assert main(["view", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "bad.spz" in err and len(err.strip().splitlines()) == 1


def test_view_missing_and_corrupt_files(tmp_path, capsys):
    assert main(["view", str(tmp_path / "nope.ply")]) == 2
    err = capsys.readouterr().err
    assert "nope.ply" in err and "no such file" in err and len(err.strip().splitlines()) == 1
    bad = tmp_path / "bad.ply"
    bad.write_bytes(b"ply\nformat binary_little_endian 1.0\nelement vertex 10\nproperty float x\nend_header\n\x00")
    assert main(["view", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "bad.ply" in err and len(err.strip().splitlines()) == 1
    assert main(["view", str(tmp_path)]) == 2  # a folder that is not a run
    assert "not a splatkit run folder" in capsys.readouterr().err


def test_view_busy_port(tmp_path, tiny_scene, capsys):
    ply = tmp_path / "model.ply"
    save_ply(_model(load_scene(tiny_scene)), ply)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        port = sock.getsockname()[1]
        with pytest.raises(SplatkitError, match="--port"):
            check_port_free("127.0.0.1", port)
        assert main(["view", str(ply), "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert f"port {port}" in err and "--port" in err


def test_real_server_two_websocket_clients_get_their_own_renders(tiny_scene):
    """A real viser server; two websocket clients speaking its protocol report different cameras."""
    import msgspec
    import viser
    from websockets.sync.client import connect

    from splatkit.viewer.app import Viewer

    scene = load_scene(tiny_scene)
    source = ModelSource(_model(scene), cameras=scene.cameras, name="tiny")
    viewer = Viewer(source, port=0, settings=SessionSettings(backend="torch"), log=lambda *a: None)
    sockets = []
    try:
        for i, camera in enumerate(scene.cameras[:2]):
            ws = connect(f"ws://127.0.0.1:{viewer.port}", subprotocols=[f"viser-v{viser.__version__}"],
                         max_size=None)
            sockets.append(ws)
            pose = pose_from_camera(camera)
            ws.send(msgspec.msgpack.encode({
                "type": "ViewerCameraMessage", "wxyz": pose.wxyz.tolist(), "position": pose.position.tolist(),
                "fov": pose.fov, "near": 0.01, "far": 100.0, "image_height": 36 + 12 * i,
                "image_width": round((36 + 12 * i) * pose.aspect), "look_at": [0.0, 0.0, 0.0],
                "up_direction": [0.0, 0.0, 1.0]}))
        _wait_for(lambda: len(viewer.sessions) == 2
                  and all(s.last_full is not None for s in viewer.sessions.values()))
        heights = sorted(s.last_full.shape[0] for s in viewer.sessions.values())
        assert heights == [36, 48]  # each tab rendered its own camera at its own size
        sockets[0].close()
        _wait_for(lambda: len(viewer.sessions) == 1)
    finally:
        for ws in sockets:
            ws.close()
        viewer.stop()


def test_a_model_with_levels_offers_levels_selective_sets_and_a_budget(tiny_scene):
    """Three levels of the same Gaussians, sized at FLoD-like floors: the view starts at the finest, draws one
    level or a selective range when chosen, keeps within a budget, and labels what it draws in the stats."""
    scene = load_scene(tiny_scene)
    base = _model(scene)
    n = len(base)
    levels = []
    for level, floor, every in ((1, 0.2, 4), (2, 0.05, 2), (3, 0.0, 1)):  # coarser levels hold fewer
        g = base.subset(torch.arange(0, n, every))
        g.scales = torch.log(torch.exp(g.scales) + floor)
        levels.append(g.as_dict() | {"level": torch.full((len(g),), level)})
    model = Gaussians.from_dict({k: torch.cat([d[k] for d in levels]) for k in levels[0]})
    source = ModelSource(model, cameras=scene.cameras, name="lod")
    client = _FakeClient()
    client.set_camera(scene.cameras[0], 36)
    session = ClientSession(client, source, SessionSettings(backend="torch"), RenderShare(), np.array([0, 0, 1.0]),
                            frame_points(scene.points, np.array([0, 0, 1.0])))
    try:
        assert session.levels.options == ("level 1", "level 2", "level 3", "selective 1:3", "selective 2:3")
        _wait_for(lambda: session.drawn_count == n)  # the finest level alone
        session.levels.value = "level 1"
        session.levels.fire()
        _wait_for(lambda: len(client.images) >= 2)
        assert session.level_choice() == LevelChoice(level=1) and session.drawn_count == len(range(0, n, 4))
        session.levels.value = "selective 1:3"
        session.levels.fire()
        camera = camera_from_pose(session._pose, 36)
        expected = len(LevelChoice(levels=(1, 3)).for_view(model, camera))
        assert len(level_counts(LevelChoice(levels=(1, 3)).for_view(model, camera))) > 1  # bands mix levels
        _wait_for(lambda: session.drawn_count == expected)
        session.levels.value = "level 3"
        session.budget.value = expected  # fits the selective set 1:3 (and maybe a finer one), not the finest level
        session.budget.fire()
        _wait_for(lambda: session.drawn_count <= expected)
        assert f"**Gaussians** {session.drawn_count:,}" in session._stats_markdown()
        session.budget.value = 1  # nothing fits: the finest level, with a line saying why
        session.budget.fire()
        _wait_for(lambda: session.drawn_count == n)
    finally:
        session.close()
