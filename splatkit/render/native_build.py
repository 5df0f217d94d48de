"""Builds (once) and loads the native rasterizer in `cuda/` with torch's C++-extension tooling and ninja.

The build is cached per splatkit version, source hash, torch version and CPU, under `$SPLATKIT_CACHE/native`
(default ~/.cache/splatkit/native), so only the first use pays the compile (about a minute on 2 cores).
Nothing here runs at import: `load_extension()` is called on the first native render.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import platform
import shutil
import sys
from pathlib import Path
from types import ModuleType

import torch

import splatkit
from splatkit._resources import resource_dir, user_cache
from splatkit.errors import SplatkitError

CUDA_DIR = resource_dir("cuda")
CPU_SOURCES = ("bindings/bindings.cpp", "cpu/rasterize_cpu.cpp")
CUDA_SOURCES = ("gpu/rasterize_cuda.cu",)
CFLAGS = ["-O3", "-fopenmp", "-fno-math-errno", "-fno-trapping-math", "-march=native"]


def cache_root() -> Path:
    return user_cache() / "native"


def _cpu_signature() -> str:
    """-march=native code must not be reused on a different CPU (e.g. a shared home directory)."""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        flags = ""
    return platform.machine() + flags


def with_cuda() -> bool:
    """Build the CUDA kernels too only where torch sees a GPU (the CPU wheel cannot link CUDA code)."""
    from torch.utils.cpp_extension import CUDA_HOME

    return torch.cuda.is_available() and CUDA_HOME is not None


def sources() -> list[Path]:
    return [CUDA_DIR / s for s in CPU_SOURCES + (CUDA_SOURCES if with_cuda() else ())]


def source_hash() -> str:
    digest = hashlib.sha256()
    for path in sorted((CUDA_DIR / "include").rglob("*.h")) + sources():
        digest.update(path.relative_to(CUDA_DIR).as_posix().encode())
        digest.update(path.read_bytes())
    for part in (splatkit.__version__, torch.__version__, " ".join(CFLAGS), _cpu_signature()):
        digest.update(part.encode())
    return digest.hexdigest()[:16]


def unavailable_reason() -> str | None:
    """Why the native rasterizer cannot be built here, in one line; None when the compiler, ninja and the
    sources are all there (whether they compile only the build tells)."""
    cxx = os.environ.get("CXX", "c++")
    if shutil.which(cxx) is None:
        return f"no C++ compiler ({cxx} is not on PATH: install g++ or clang, or set CXX)"
    if shutil.which("ninja") is None:  # torch's extension builder runs it from PATH
        return "ninja is not on PATH (pip install ninja, and run splatkit from that environment)"
    missing = [str(path) for path in (CUDA_DIR / "include", *sources()) if not path.exists()]
    if missing:
        return f"native sources missing: {', '.join(missing)}"
    return None


def compiler_available() -> bool:
    return unavailable_reason() is None


@functools.cache
def load_extension() -> ModuleType:
    """The compiled extension, building it first if this source/torch/CPU combination has not been built yet."""
    reason = unavailable_reason()
    if reason is not None:
        raise SplatkitError(f"cannot build the native rasterizer: {reason}")
    from torch.utils import cpp_extension

    tag = source_hash()
    build_dir = cache_root() / tag
    build_dir.mkdir(parents=True, exist_ok=True)
    name = f"splatkit_native_{tag}"
    built = build_dir / f"{name}.so"
    if built.is_file():
        # The tag hashes the sources' contents, not their folder; ninja would rebuild when the same sources
        # come from another folder (a checkout, then an installed wheel), as its commands name the paths.
        spec = importlib.util.spec_from_file_location(name, built)
        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
            return module
        except ImportError:  # half-written by a build in progress elsewhere: torch waits for that build
            pass
    else:
        print("splatkit: building the native rasterizer (first use only, about a minute)...", file=sys.stderr,
              flush=True)
    try:
        cuda_flags = ["-DSPLATKIT_WITH_CUDA"] if with_cuda() else []
        return cpp_extension.load(
            name=name,
            sources=[str(path) for path in sources()],
            extra_include_paths=[str(CUDA_DIR / "include")],
            extra_cflags=CFLAGS + cuda_flags,
            extra_cuda_cflags=["-O3", "-std=c++17", *cuda_flags],
            extra_ldflags=["-fopenmp"],
            build_directory=str(build_dir),
            verbose=False,
        )
    except Exception as exc:  # the compiler's output is in the message: show it, not a deep traceback
        raise SplatkitError(f"{CUDA_DIR}: the native rasterizer failed to build:\n{exc}") from None
