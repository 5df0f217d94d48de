"""A wheel built from the tree carries what splatkit reads at run time (the native sources, the web player), and
installed into a fresh environment away from the checkout it trains with the native backend and writes a
`--player` export."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from splatkit.io.player import APP_DIR, NPM_FILES, _app_files, _engine_ready
from splatkit.render import native_build

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.xdist_group("packaging")


def _tree_files() -> list[str]:
    """The checkout's files as git sees them (tracked, and new ones not ignored): no node_modules or build output."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                                capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: no source tree to build a wheel from")
    return [name for name in listed.split("\0") if name and (REPO / name).is_file()]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built from a copy of the tree (setuptools writes build/ and egg-info beside the sources), with a
    node_modules/ in the player as an old checkout has after `npm ci`: it must stay out of the wheel."""
    src = tmp_path_factory.mktemp("src")
    for name in _tree_files():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, src / name)
    stray = src / "apps" / "player" / "node_modules" / "playcanvas" / "package.json"
    stray.parent.mkdir(parents=True)
    stray.write_text("{}")
    dist = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "-w", str(dist), str(src)], check=True, capture_output=True, timeout=300)
    return next(dist.glob("splatkit-*.whl"))


def test_wheel_carries_the_native_sources_and_the_player(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    files = _tree_files()
    expected = {name for name in files if name.startswith("splatkit/") and name.endswith(".py")}
    expected |= {"splatkit/" + name for name in files if name.startswith("cuda/")}  # include/, cpu/, gpu/
    expected |= {f"splatkit/apps/player/{name}" for name in (*_app_files(), *NPM_FILES)}
    assert sorted(expected - names) == []
    assert [name for name in names if "node_modules" in name] == []


@pytest.mark.slow
def test_installed_wheel_trains_natively_and_writes_a_player(wheel, tiny_scene, tmp_path):
    if native_build.unavailable_reason() is not None:
        pytest.skip(native_build.unavailable_reason())
    if not _engine_ready(APP_DIR) and shutil.which("npm") is None:
        pytest.skip("npm is not installed, so the player's engines cannot be fetched")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    # The dependencies (and pip) come from this environment without a download. A path in a .pth file is only
    # appended to sys.path: the .pth files there, the checkout's editable finder among them, do not run.
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    # --ignore-installed: pip sees this environment's splatkit on sys.path and must leave it alone.
    subprocess.run([python, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", "--ignore-installed",
                    str(wheel)], check=True, capture_output=True, timeout=300)

    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    work = tmp_path / "work"  # a working directory outside the checkout
    work.mkdir()

    def run(*args) -> subprocess.CompletedProcess:
        result = subprocess.run([str(a) for a in args], cwd=work, env=env, capture_output=True, text=True,
                                timeout=900)
        assert result.returncode == 0, result.stdout + result.stderr
        return result

    probe = run(python, "-c", "import splatkit; from splatkit.render import native_build as nb; "
                "from splatkit.io import player; print(splatkit.__file__, nb.CUDA_DIR, player.APP_DIR, "
                "nb.source_hash(), sep='\\n')").stdout.splitlines()
    assert all(Path(path).resolve().is_relative_to(site.resolve() / "splatkit") for path in probe[:3]), probe
    # SPLATKIT_CACHE is left as it is, so a build of byte-identical sources (e.g. the checkout's) spares a minute's
    # compile. That still checks the installed files: the tag hashes them, so a missing or changed one would
    # mean another tag and a fresh build from them.
    tag = probe[3]
    prebuilt = (native_build.cache_root() / tag / f"splatkit_native_{tag}.so").is_file()

    out = tmp_path / "run"
    trained = run(venv / "bin" / "splatkit", "train", tiny_scene, "--out", out, "--steps", "5",
                  "--backend", "native")
    assert "backend native" in trained.stdout + trained.stderr
    assert json.loads((out / "config.json").read_text())["config"]["backend"] == "native"
    assert (out / "point_cloud.ply").is_file() and (out / "metrics.json").is_file()
    assert (native_build.cache_root() / tag / f"splatkit_native_{tag}.so").is_file()
    if prebuilt:  # built from another folder, loaded from this one without a rebuild
        assert "building the native rasterizer" not in trained.stderr

    site_dir = tmp_path / "site"
    run(venv / "bin" / "splatkit", "export", out, "--player", site_dir)
    assert {"index.html", "main.js", "params.js", "player.css", "playcanvas.mjs", "run.compressed.ply"} <= \
        {p.name for p in site_dir.iterdir()}
    assert not list(venv.rglob("node_modules")), "npm wrote into the installed package"
