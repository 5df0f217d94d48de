"""The native build: never needed for import or the torch backend; a failed build is one clear error; a live
build is waited for, a killed one redone; each environment keeps its own build."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest
import torch

from splatkit.errors import SplatkitError
from splatkit.render import native_build

REPO = Path(__file__).resolve().parents[1]


def test_import_and_torch_backend_do_not_build(tmp_path):
    """A fresh cache stays empty: importing splatkit and rendering with `torch` compiles nothing."""
    code = (
        "import numpy as np, torch\n"
        "import splatkit.cli\n"
        "from splatkit.data.cameras import Camera\n"
        "from splatkit.model import init_from_points\n"
        "from splatkit.render import rasterize\n"
        "g = init_from_points(np.random.rand(50, 3).astype('float32') + [0, 0, 3], np.random.rand(50, 3))\n"
        "cam = Camera('c', 32, 24, np.array([[30., 0, 16], [0, 30, 12], [0, 0, 1]]), np.eye(4))\n"
        "print(float(rasterize(g, cam, backend='torch').alpha.sum()) > 0)\n"
    )
    env = {**os.environ, "SPLATKIT_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "True"
    assert not (tmp_path / "cache").exists()


def test_failed_build_is_one_clear_error_with_compiler_output(tmp_path, monkeypatch):
    broken = tmp_path / "cuda"
    shutil.copytree(native_build.CUDA_DIR, broken)
    source = broken / "cpu" / "rasterize_cpu.cpp"
    source.write_text(source.read_text() + "\nthis is not C++;\n")
    monkeypatch.setattr(native_build, "CUDA_DIR", broken)
    # Only the torch-free source, so the compiler fails in seconds instead of parsing torch's headers first.
    monkeypatch.setattr(native_build, "CPU_SOURCES", ("cpu/rasterize_cpu.cpp",))
    monkeypatch.setenv("SPLATKIT_CACHE", str(tmp_path / "cache"))
    native_build.load_extension.cache_clear()
    try:
        with pytest.raises(SplatkitError) as info:
            native_build.load_extension()
    finally:
        native_build.load_extension.cache_clear()
    message = str(info.value)
    assert message.startswith(f"{broken}: the native rasterizer failed to build")
    assert "rasterize_cpu.cpp" in message and "error" in message  # the compiler's own words come along


def _tools_path(folder: Path, *tools: str) -> str:
    """A PATH holding stand-ins for `tools`: unavailable_reason only looks them up."""
    folder.mkdir()
    for tool in tools:
        (folder / tool).write_text("#!/bin/sh\n")
        (folder / tool).chmod(0o755)
    return str(folder)


def test_unavailable_reason_names_what_is_missing(tmp_path, monkeypatch):
    """One line for `--backend auto` to print when it falls back to the torch reference, and what an explicit
    `--backend native` fails with instead of a build that cannot work. A build already in the cache needs no
    tools; ninja beside this Python (an unactivated venv) counts as installed."""
    monkeypatch.setenv("SPLATKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(native_build.sys, "executable", str(tmp_path / "python-without-ninja" / "python"))
    monkeypatch.setenv("PATH", _tools_path(tmp_path / "no-ninja", "c++"))
    assert native_build.unavailable_reason().startswith("ninja is not installed")
    monkeypatch.setattr(native_build.sys, "executable", str(_tools_path(tmp_path / "venv-bin", "ninja")) + "/python")
    assert native_build.unavailable_reason() is None
    monkeypatch.setenv("PATH", _tools_path(tmp_path / "bin", "c++", "ninja"))
    assert native_build.unavailable_reason() is None
    monkeypatch.setenv("CXX", "no-such-c++")
    assert "no C++ compiler (no-such-c++ is not on PATH" in native_build.unavailable_reason()
    built = native_build._built(native_build.native_arch())
    built.parent.mkdir(parents=True)
    built.touch()
    assert native_build.unavailable_reason() is None  # cached: no compiler needed
    monkeypatch.delenv("CXX")
    monkeypatch.setattr(native_build, "CUDA_DIR", tmp_path / "cuda")
    reason = native_build.unavailable_reason()
    assert reason.startswith("native sources missing: ") and str(tmp_path / "cuda" / "include") in reason
    assert "\n" not in reason
    native_build.load_extension.cache_clear()
    try:
        with pytest.raises(SplatkitError, match="cannot build the native rasterizer: native sources missing"):
            native_build.load_extension()
    finally:
        native_build.load_extension.cache_clear()


def test_each_environment_keeps_its_own_build(tmp_path, monkeypatch):
    """Torch's build.ninja names torch's and Python's folders and the compiler, so two environments sharing a
    build folder would recompile it at every switch: each gets its own tag. Venvs over one Python and one torch
    run the same commands and share one (an installed wheel reuses the checkout's build)."""
    base = native_build.source_hash()
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "another-venv"))
    assert native_build.source_hash() == base
    tags = {base}
    with monkeypatch.context() as m:
        m.setattr(torch, "__file__", str(tmp_path / "other-env" / "site-packages" / "torch" / "__init__.py"))
        tags.add(native_build.source_hash())
    with monkeypatch.context() as m:
        real = sysconfig.get_path
        m.setattr(sysconfig, "get_path", lambda name, *args, **kwargs: str(tmp_path / "python3.12") if name ==
                  "include" else real(name, *args, **kwargs))
        tags.add(native_build.source_hash())
    with monkeypatch.context() as m:
        m.setattr(torch, "compiled_with_cxx11_abi", lambda: not torch._C._GLIBCXX_USE_CXX11_ABI)
        tags.add(native_build.source_hash())
    with monkeypatch.context() as m:
        m.setenv("CXX", "clang++")
        tags.add(native_build.source_hash())
    assert len(tags) == 5
    assert native_build.source_hash() == base


# Holds the build lock of the folder argv[1] as a build would, until killed.
HOLD = ("import sys, time\nfrom pathlib import Path\nfrom splatkit.render import native_build\n"
        "with native_build._build_lock(Path(sys.argv[1])):\n    print('held', flush=True)\n    time.sleep(600)\n")
# Waits for that lock under a SIGTERM handler that defers the signal, as training's does until its step ends.
WAIT = ("import signal, sys\nfrom pathlib import Path\nfrom splatkit.render import native_build\n"
        "signal.signal(signal.SIGTERM, lambda *args: print('deferred', flush=True))\n"
        "with native_build._build_lock(Path(sys.argv[1])):\n    print('acquired', flush=True)\n")


def _python(code: str, *args: object, cache: Path | None = None, **kwargs) -> subprocess.Popen:
    """`python -c code *args` with this checkout's splatkit, the default wait bound and, given, its own cache."""
    env = {**os.environ, "PYTHONPATH": str(REPO), **({"SPLATKIT_CACHE": str(cache)} if cache else {})}
    env.pop(native_build.WAIT_ENV, None)
    return subprocess.Popen([sys.executable, "-c", code, *map(str, args)], env=env, text=True, **kwargs)


def test_a_live_build_is_waited_for_within_a_bound_and_a_dead_one_frees_the_folder(tmp_path, monkeypatch, capsys):
    """A process building (holding the folder's flock) makes others wait, saying for which pid; after
    $SPLATKIT_BUILD_WAIT seconds they give up in one line. The wait ends on SIGTERM even under a handler that
    defers it. Once the holder dies (SIGKILL: no cleanup) the flock is free at once and torch's `lock` it left,
    which torch would wait on for ever, is removed, saying so."""
    monkeypatch.setenv("SPLATKIT_CACHE", str(tmp_path / "cache"))
    if native_build.unavailable_reason() is not None:
        pytest.skip(native_build.unavailable_reason())
    build_dir = native_build.cache_root() / native_build.source_hash()
    build_dir.mkdir(parents=True)
    holder = _python(HOLD, build_dir, stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline() == "held\n"
        waiting_for = f"another build of the native rasterizer (pid {holder.pid})"
        monkeypatch.setenv(native_build.WAIT_ENV, "0.5")
        native_build.load_extension.cache_clear()
        started = time.monotonic()
        with pytest.raises(SplatkitError) as info:
            native_build.load_extension()
        assert 0.5 <= time.monotonic() - started < 5
        assert str(info.value).startswith(f"{build_dir / native_build.LOCK_NAME}: gave up after 0.5 s waiting for "
                                          f"{waiting_for} to finish; ")
        assert "\n" not in str(info.value) and native_build.WAIT_ENV in str(info.value)
        assert f"splatkit: waiting for {waiting_for} to finish..." in capsys.readouterr().err

        waiter = _python(WAIT, build_dir, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert any(f"waiting for {waiting_for}" in line for line in waiter.stderr)  # stops reading there
        waiter.send_signal(signal.SIGTERM)
        assert waiter.wait(timeout=10) == -signal.SIGTERM
        assert waiter.stdout.read() == ""  # neither deferred nor acquired
    finally:
        holder.kill()
        holder.wait()
        native_build.load_extension.cache_clear()
    (build_dir / native_build.TORCH_LOCK).touch()  # as a killed build leaves it
    started = time.monotonic()
    with native_build._build_lock(build_dir) as interrupted:
        assert interrupted and not (build_dir / native_build.TORCH_LOCK).exists()
    assert time.monotonic() - started < 1
    assert f"{build_dir / 'lock'} was left by an interrupted build" in capsys.readouterr().err


def test_what_a_killed_build_left_running_is_waited_for(tmp_path, monkeypatch, capsys):
    """Killing the Python process alone leaves ninja and a compiler writing into the build folder; they carry
    its mark in their environment, and torch's stale `lock` stays until they are gone."""
    build_dir = tmp_path / "build"
    build_dir.mkdir()
    (build_dir / native_build.TORCH_LOCK).touch()
    left = subprocess.Popen(["sleep", "600"], env={**os.environ, native_build.BUILD_MARK: str(build_dir)})
    try:
        monkeypatch.setenv(native_build.WAIT_ENV, "0.3")
        with pytest.raises(SplatkitError, match=f"gave up after 0.3 s waiting for what an interrupted build left "
                                                f"running \\(pid {left.pid}\\) to finish"):
            with native_build._build_lock(build_dir):
                pass
        assert (build_dir / native_build.TORCH_LOCK).exists()
    finally:
        left.kill()
        left.wait()
    with native_build._build_lock(build_dir) as interrupted:
        assert interrupted and not (build_dir / native_build.TORCH_LOCK).exists()


@pytest.mark.xdist_group("native_build_killed")  # a full compile (about a minute): beside, not before, the others
def test_a_build_killed_midway_is_redone_by_the_next_run(tmp_path):
    """The user's report: a first build killed as it compiles (here the whole process group with SIGKILL, as a
    closed terminal: nothing cleans up) left torch's `lock`, and every later run waited on it for ever."""
    if native_build.unavailable_reason() is not None:
        pytest.skip(native_build.unavailable_reason())
    cache = tmp_path / "cache"
    code = "from splatkit.render.native_build import load_extension; print(load_extension().__file__)"
    first = _python(code, cache=cache, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list(cache.glob("native/*/build.ninja")):  # written under torch's `lock`, just before ninja starts
        assert first.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(1.5)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    (build_dir,) = (cache / "native").iterdir()
    assert (build_dir / native_build.TORCH_LOCK).exists() and not list(build_dir.glob("*.so"))
    second = _python(code, cache=cache, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = second.communicate(timeout=600)
    assert second.returncode == 0, err
    assert f"{build_dir / native_build.TORCH_LOCK} was left by an interrupted build" in err
    assert Path(out.strip()).parent == build_dir and not (build_dir / native_build.TORCH_LOCK).exists()
