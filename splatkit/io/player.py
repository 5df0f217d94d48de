"""The web player in `apps/player/`: static pages that show one exported splat file from a camera given in
the URL, ready to host next to the file (e.g. for phones).

Two pages share one URL scheme: `index.html` (PlayCanvas engine: INRIA and compressed .ply, SOG bundled as
.sog or unbundled as meta.json and its images) and `spark.html` (Spark on three.js: .spz and .splat). The
engines are never committed: `apps/player/package.json` and its lock file name them, and `build_player` installs
them with `npm ci`, when they are missing, into a cache folder per lock file (never into an installed package).
`write_player` copies a page and its engine modules next to an exported model; `camera_query` turns a splatkit
`Camera` (OpenCV axes, in the model file's frame) into the page's URL parameters."""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import shutil
import subprocess
from pathlib import Path
from typing import Iterator
from urllib.parse import quote

import numpy as np
from scipy.spatial.transform import Rotation

from splatkit._resources import resource_dir, user_cache
from splatkit.atomic import atomic_path
from splatkit.data.cameras import Camera
from splatkit.errors import SplatkitError
from splatkit.io.formats import model_files

APP_DIR = resource_dir("apps/player")
NPM_FILES = ("package.json", "package-lock.json")
NPM_TIMEOUT = 600.0
SHARED_FILES = ("params.js", "player.css")
# Per engine: its page, the app's own files, and the npm build files copied beside them (source in the engine
# folder -> name the page imports). PlayCanvas reads .ply (INRIA and compressed) and SOG (.sog, meta.json); Spark
# on three.js reads .spz and .splat.
ENGINES = {
    "playcanvas": ("index.html", ("index.html", "main.js"),
                   {"node_modules/playcanvas/build/playcanvas.min.mjs": "playcanvas.mjs"}),
    "spark": ("spark.html", ("spark.html", "spark.js"),
              {"node_modules/@sparkjsdev/spark/dist/spark.module.min.js": "spark.module.js",
               "node_modules/three/build/three.module.min.js": "three.module.min.js",
               "node_modules/three/build/three.core.min.js": "three.core.min.js",
               "node_modules/three/examples/jsm/postprocessing/Pass.js": "Pass.js"}),
}


def engine_for(model_file: str | Path) -> str:
    """The player page for a model file: Spark for .spz and .splat (PlayCanvas reads neither without extra
    modules), PlayCanvas for .ply (INRIA and compressed) and SOG (a .sog bundle, or a meta.json and its images)."""
    return "spark" if Path(model_file).suffix.lower() in (".spz", ".splat") else "playcanvas"


def _app_files() -> list[str]:
    return sorted({*SHARED_FILES, *(f for _, files, _ in ENGINES.values() for f in files)})


def _locked_versions(app_dir: Path) -> dict[str, str] | None:
    """The lock file's version of each package named in package.json."""
    try:
        names = json.loads((app_dir / "package.json").read_text())["dependencies"]
        lock = json.loads((app_dir / "package-lock.json").read_text())["packages"]
        return {name: lock[f"node_modules/{name}"]["version"] for name in names}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _engine_dir(app_dir: Path) -> Path:
    """Where `npm ci` installs the engines of `app_dir`: one cache folder per package.json and lock file, shared
    by every copy of the app (a checkout, installed wheels), since site-packages may be read-only."""
    digest = hashlib.sha256()
    for name in NPM_FILES:
        digest.update((app_dir / name).read_bytes())
    return user_cache() / "player" / digest.hexdigest()[:16]


def _installed_version(engine_dir: Path, name: str) -> str | None:
    try:
        return json.loads((engine_dir / "node_modules" / name / "package.json").read_text())["version"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


@contextlib.contextmanager
def _install_lock(engine_dir: Path) -> Iterator[None]:
    """Serialise `npm ci` between processes (parallel test workers) where the platform allows."""
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; installs are rare enough
        yield
        return
    with open(engine_dir / ".install.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _engine_ready(app_dir: Path) -> bool:
    """Every locked package is installed at its locked version and every build file is there."""
    locked, engine_dir = _locked_versions(app_dir), _engine_dir(app_dir)
    return bool(locked) and all(_installed_version(engine_dir, n) == v for n, v in locked.items()) and \
        all((engine_dir / src).is_file() for _, _, builds in ENGINES.values() for src in builds)


def build_player(app_dir: Path = APP_DIR) -> Path:
    """Make sure the player's npm dependencies are installed (`npm ci` when they are missing or differ from
    the lock file) and return the folder they are in, which holds the `ENGINES` build files."""
    app_dir = Path(app_dir)
    missing = [name for name in (*_app_files(), *NPM_FILES) if not (app_dir / name).is_file()]
    if missing:
        raise SplatkitError(f"{app_dir}: not the splatkit player (missing {', '.join(missing)})")
    engine_dir = _engine_dir(app_dir)
    if _engine_ready(app_dir):
        return engine_dir
    npm = shutil.which("npm")
    if npm is None:
        raise SplatkitError("npm not found: install Node.js (which brings npm) to build the web player")
    engine_dir.mkdir(parents=True, exist_ok=True)
    with _install_lock(engine_dir):
        if not _engine_ready(app_dir):  # another process may have installed it meanwhile
            for name in NPM_FILES:
                shutil.copyfile(app_dir / name, engine_dir / name)
            try:
                proc = subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=engine_dir, capture_output=True,
                                      text=True, timeout=NPM_TIMEOUT)
            except subprocess.TimeoutExpired:
                raise SplatkitError(f"npm ci in {engine_dir} took over {NPM_TIMEOUT:.0f} s (no network?)") from None
            except OSError as exc:
                raise SplatkitError(f"cannot run npm ({exc.strerror})") from None
            if proc.returncode != 0:
                lines = [ln.strip() for ln in (proc.stderr + proc.stdout).splitlines()
                         if ln.strip() and "Unknown user config" not in ln]
                errors = [ln for ln in lines if "ERR" in ln] or lines
                detail = errors[-1] if errors else f"exit code {proc.returncode}"
                raise SplatkitError(f"npm ci in {engine_dir} failed: {detail}")
    if not _engine_ready(app_dir):
        raise SplatkitError(f"npm ci in {engine_dir} did not install what package-lock.json names")
    return engine_dir


def _numbers(values) -> str:
    return ",".join(f"{float(v):.9g}" for v in values)


def camera_query(camera: Camera, *, fit_window: bool = False, background: tuple[float, float, float] | None = None,
                 up: np.ndarray | None = None, near: float | None = None, far: float | None = None) -> str:
    """The player's URL parameters for `camera` (OpenCV axes, already in the model file's frame): its centre,
    camera-to-world rotation, vertical fov and image size, plus full intrinsics when the principal point is
    off-centre or the pixels are not square. The canvas is exactly the camera's image, or with `fit_window`
    fills the browser window at the same vertical field of view (for people rather than tests)."""
    w2c = np.asarray(camera.world_to_cam, np.float64)
    if w2c.shape != (4, 4) or not np.isfinite(w2c).all():
        raise SplatkitError(f"camera {camera.name!r}: world_to_cam must be a finite 4x4 matrix")
    c2w = np.linalg.inv(w2c)
    K = np.asarray(camera.K, np.float64)
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    xyzw = Rotation.from_matrix(c2w[:3, :3]).as_quat(canonical=True)  # w >= 0
    params = [("pos", _numbers(c2w[:3, 3])), ("quat", _numbers(xyzw)), ("fov", f"{math.degrees(camera.fov_y):.9g}")]
    centred = abs(cx - 0.5 * camera.width) < 1e-3 and abs(cy - 0.5 * camera.height) < 1e-3
    if not centred or abs(fx - fy) > 1e-6 * max(abs(fy), 1.0):
        params.append(("k", _numbers((fx, fy, cx, cy))))
    params += [("w", str(int(camera.width))), ("h", str(int(camera.height)))]
    if fit_window:
        params.append(("fit", "1"))
    if background is not None:
        params.append(("bg", _numbers(background)))
    if up is not None:  # the axis the page's orbit control turns about
        params.append(("up", _numbers(np.asarray(up, np.float64) / max(np.linalg.norm(up), 1e-12))))
    if near is not None:
        params.append(("near", f"{near:.9g}"))
    if far is not None:
        params.append(("far", f"{far:.9g}"))
    return "&".join(f"{key}={value}" for key, value in params)


def _copy_atomic(src: Path, dst: Path) -> None:
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


def write_player(out_dir: Path, model_file: Path, camera: Camera | None = None, *, fit_window: bool = False,
                 background: tuple[float, float, float] | None = None, up: np.ndarray | None = None,
                 engine: str | None = None, app_dir: Path = APP_DIR) -> str:
    """Put the player page and its scripts beside `model_file` in `out_dir`, copying the model there when it
    lives elsewhere (an unbundled SOG's meta.json with its images), and return the page's relative URL showing
    it from `camera` (without one the page frames the model's bounds itself); `fit_window` fills the browser
    window instead of a canvas of the camera's size (see `camera_query`). `engine` is "playcanvas" (index.html)
    or "spark" (spark.html); by default `engine_for(model_file)`. Every file is replaced atomically, and nothing
    is written if npm fails."""
    out_dir, model_file = Path(out_dir), Path(model_file)
    engine = engine or engine_for(model_file)
    if engine not in ENGINES:
        raise SplatkitError(f"unknown player engine {engine!r}; choose from {', '.join(ENGINES)}")
    if not model_file.is_file():
        raise SplatkitError(f"{model_file}: no such model file")
    if engine == "spark" and model_file.name.lower().endswith(".spz"):
        with model_file.open("rb") as f:
            if f.read(2) != b"\x1f\x8b":
                raise SplatkitError(f"{model_file}: the Spark player reads gzip SPZ (versions 2 and 3) only; "
                                    "export with --spz-version 3")
    page, own_files, builds = ENGINES[engine]
    engine_dir = build_player(app_dir)
    copies = {app_dir / name: name for name in (*own_files, *SHARED_FILES)}
    copies.update({engine_dir / src: name for src, name in builds.items()})
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        relative = model_file.resolve().relative_to(out_dir.resolve())
    except ValueError:
        relative = Path(model_file.name)
        # An unbundled SOG is its meta.json and the images it names beside it, a streamed SOG its lod-meta.json
        # and chunk folders (the page fetches those too).
        for src in model_files(model_file):
            name = src.relative_to(model_file.parent).as_posix()
            if name in copies.values():
                raise SplatkitError(f"{src}: the name clashes with the player's own files") from None
            copies[src] = name
    try:
        for src, name in copies.items():
            _copy_atomic(src, out_dir / name)
    except OSError as exc:
        raise SplatkitError(f"{out_dir}: cannot write the player ({exc.strerror or exc})") from None
    query = f"file={quote(relative.as_posix(), safe='/')}"
    if camera is not None:
        query += "&" + camera_query(camera, fit_window=fit_window, background=background, up=up)
    elif background is not None:
        query += f"&bg={_numbers(background)}"
    return f"{page}?{query}"
