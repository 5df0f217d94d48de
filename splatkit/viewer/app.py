"""The viewer server: checks the port, starts viser, frames each new client's camera and gives it a session.

`run_view` is the `splatkit view` handler; `start_live_viewer` is what `splatkit train --viewer` calls."""

from __future__ import annotations

import contextlib
import errno
import socket
import threading
import time
from typing import Iterator


from splatkit.errors import SplatkitError
from splatkit.render import resolve_backend, resolve_device
from splatkit.viewer.camera import frame_camera, frame_points, pose_from_camera, up_from_cameras, up_from_points
from splatkit.viewer.config import ViewConfig
from splatkit.viewer.pacing import RenderShare
from splatkit.viewer.session import ClientSession, SessionSettings, apply_framing
from splatkit.viewer.source import LiveSource, ModelSource, load_source


def check_port_free(host: str, port: int) -> None:
    """Fail with a one-line hint before starting, rather than letting viser silently move to another port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server itself will
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                reason = "is already in use" if exc.errno == errno.EADDRINUSE else "needs more privileges"
                raise SplatkitError(f"port {port} on {host} {reason}; pick another with --port "
                                    f"(e.g. --port {port + 1})") from None
            raise SplatkitError(f"cannot listen on {host}:{port} ({exc.strerror}); check --host") from None


def viewer_url(host: str, port: int) -> str:
    shown = "localhost" if host in ("127.0.0.1", "localhost", "::1") else (
        socket.gethostname() if host in ("0.0.0.0", "::", "") else host)
    return f"http://{shown}:{port}"


class Viewer:
    """A running viser server showing one `ModelSource` to any number of browser tabs."""

    def __init__(self, source: ModelSource, *, host: str = "127.0.0.1", port: int = 8080,
                 settings: SessionSettings | None = None, render_share: float = 1.0, log=print) -> None:
        import viser

        self.source, self.settings, self.log = source, settings or SessionSettings(), log
        self.share = RenderShare(render_share)
        means = source.means_numpy()
        self.up = up_from_cameras(source.cameras) if source.cameras else up_from_points(means)
        self.initial_wxyz = None  # exact orientation of the training camera the view starts from
        if source.cameras:
            self.initial = frame_camera(source.cameras[0], means, self.up)
            self.initial_wxyz = pose_from_camera(source.cameras[0]).wxyz
        else:
            self.initial = frame_points(means, self.up)
        self.sessions: dict[int, ClientSession] = {}
        self._lock = threading.Lock()
        check_port_free(host, port)
        self.server = viser.ViserServer(host=host, port=port, label="splatkit", verbose=False)
        if port != 0 and self.server.get_port() != port:  # lost a race: viser moved to another port
            self.server.stop()
            raise SplatkitError(f"port {port} on {host} is already in use; pick another with --port")
        self.host, self.port = host, self.server.get_port()  # port 0: the one the system picked
        self.server.scene.set_up_direction(tuple(float(v) for v in self.up))
        # New tabs open at the framed view (no jump from viser's default); each is then turned to the training
        # camera's exact orientation on connect.
        initial_camera = self.server.initial_camera
        initial_camera.up = self.initial.up
        initial_camera.fov = self.initial.fov
        initial_camera.position = self.initial.position
        initial_camera.look_at = self.initial.look_at
        self.server.on_client_connect(self._on_connect)
        self.server.on_client_disconnect(self._on_disconnect)

    @property
    def url(self) -> str:
        return viewer_url(self.host, self.port)

    def _on_connect(self, client) -> None:
        apply_framing(client, self.initial, self.initial_wxyz)
        session = ClientSession(client, self.source, self.settings, self.share, self.up, self.initial,
                                self.initial_wxyz, self.log)
        with self._lock:
            self.sessions[client.client_id] = session
            if isinstance(self.source, LiveSource):
                self.source.watching = len(self.sessions)

    def _on_disconnect(self, client) -> None:
        with self._lock:
            session = self.sessions.pop(client.client_id, None)
            if isinstance(self.source, LiveSource):
                self.source.watching = len(self.sessions)
        if session is not None:
            session.close()

    def stop(self) -> None:
        with self._lock:
            sessions, self.sessions = list(self.sessions.values()), {}
        for session in sessions:
            session.close()
        self.server.stop()


def run_view(cfg: ViewConfig) -> None:
    """`splatkit view`: load (errors before any server starts), serve, block until Ctrl-C."""
    source = load_source(cfg.model, resolve_device(cfg.device))
    settings = SessionSettings(mode=cfg.mode, backend=cfg.backend, max_height=cfg.max_height,
                               target_fps=cfg.target_fps, output_dir=cfg.output_dir)
    resolve_backend(cfg.backend, source.snapshot().gaussians.means.device)  # unknown backend: fail now
    viewer = Viewer(source, host=cfg.host, port=cfg.port, settings=settings)
    n = len(source.snapshot().gaussians)
    try:  # from here on a Ctrl-C or SIGTERM (raised as KeyboardInterrupt by the CLI) stops the server cleanly
        print(f"splatkit view: {n:,} Gaussians from {cfg.model}"
              + (f" with {len(source.cameras)} training cameras" if source.cameras else ""))
        print(f"splatkit view: open {viewer.url} in a browser (Ctrl-C to stop)", flush=True)
        if cfg.host in ("0.0.0.0", "::"):
            print("splatkit view: listening on all network interfaces; anyone who can reach this machine can view")
        while True:
            time.sleep(1.0)
    except KeyboardInterrupt:
        print("splatkit view: stopped")
    finally:
        viewer.stop()


@contextlib.contextmanager
def live_viewer(trainer, port: int = 8080, host: str = "127.0.0.1") -> Iterator[LiveSource]:
    """`splatkit train --viewer`: serve the run beside training, stopped when training ends."""
    viewer, source = start_live_viewer(trainer, port=port, host=host)
    started = time.perf_counter()
    try:
        yield source
    finally:
        source.finish()
        viewer.stop()
        wall = time.perf_counter() - started
        print(f"splatkit: the live viewer took {source.busy_seconds:.1f} s of {wall:.1f} s of training "
              f"({source.busy_seconds / max(wall, 1e-9):.1%}) for {source.renders} renders", flush=True)


def start_live_viewer(trainer, port: int = 8080, host: str = "127.0.0.1") -> tuple[Viewer, LiveSource]:
    """Serve a training run as it trains. Renders take at most ~10% of wall time, and only while a browser
    is connected; the trainer calls `source.after_step(...)` between steps (copies, stats, queued renders,
    pause)."""
    source = LiveSource(trainer)
    settings = SessionSettings(backend="auto", max_height=720, target_fps=8.0)  # the fastest backend, whatever trains
    viewer = Viewer(source, host=host, port=port, settings=settings, render_share=0.1)
    print(f"splatkit: live viewer at {viewer.url}", flush=True)
    return viewer, source
