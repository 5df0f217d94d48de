"""The native build: never needed for import or the torch backend; a failed build is one clear error."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

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
