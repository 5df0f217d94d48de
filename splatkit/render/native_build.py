"""Builds (once) and loads the native rasterizer in `cuda/` with torch's C++-extension tooling and ninja.

The build is cached per splatkit version, source hash, torch version, CPU and target (-march), under
`$SPLATKIT_CACHE/native` (default ~/.cache/splatkit/native), so only the first use pays the compile (about a
minute on 2 cores).
Nothing here runs at import: `load_extension()` is called on the first native render.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import platform
import re
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
CFLAGS = ["-O3", "-fopenmp", "-fno-math-errno", "-fno-trapping-math"]
# The CPU the kernels are compiled for, passed as -march: this one unless the variable names another, e.g.
# x86-64-v2 (no AVX, no FMA) to check that results do not hinge on this CPU's instruction set.
ARCH_ENV = "SPLATKIT_NATIVE_ARCH"


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


def native_arch() -> str:
    """The -march target: $SPLATKIT_NATIVE_ARCH, else `native`."""
    return os.environ.get(ARCH_ENV) or "native"


def cflags(arch: str) -> list[str]:
    return [*CFLAGS, f"-march={arch}"]


def source_hash(arch: str | None = None) -> str:
    """The build's tag; builds for different -march targets (default `native_arch()`) never share one."""
    digest = hashlib.sha256()
    for path in sorted((CUDA_DIR / "include").rglob("*.h")) + sources():
        digest.update(path.relative_to(CUDA_DIR).as_posix().encode())
        digest.update(path.read_bytes())
    for part in (splatkit.__version__, torch.__version__, " ".join(cflags(arch or native_arch())), _cpu_signature()):
        digest.update(part.encode())
    return digest.hexdigest()[:16]


def _built(arch: str) -> Path:
    tag = source_hash(arch)
    return cache_root() / tag / f"splatkit_native_{tag}.so"


def _tool_path() -> str:
    """PATH plus the folder of this Python, where pip puts `ninja` (a venv run without activating it)."""
    return os.pathsep.join([os.environ.get("PATH", ""), str(Path(sys.executable).parent)])


def unavailable_reason(arch: str | None = None) -> str | None:
    """Why the native rasterizer can be neither loaded from the cache nor built here, in one line; None when it
    is built already, or the sources, a compiler and ninja are all there (whether they compile the build tells)."""
    missing = [str(path) for path in (CUDA_DIR / "include", *sources()) if not path.exists()]
    if missing:
        return f"native sources missing: {', '.join(missing)}"
    if _built(arch or native_arch()).is_file():
        return None
    cxx = os.environ.get("CXX", "c++")
    if shutil.which(cxx) is None:
        return f"no C++ compiler ({cxx} is not on PATH: install g++ or clang, or set CXX)"
    if shutil.which("ninja", path=_tool_path()) is None:  # torch's extension builder runs it
        return "ninja is not installed (pip install ninja)"
    return None


def compiler_available() -> bool:
    return unavailable_reason() is None


def load_extension(arch: str | None = None) -> ModuleType:
    """The compiled extension for -march=`arch` (default `native_arch()`, read on every call), building it first
    if this source/torch/CPU/arch combination has not been built yet. Builds for two targets have their own
    folders and module names, so both can be loaded in one process."""
    return _load_extension(arch or native_arch())


@functools.cache
def _load_extension(arch: str) -> ModuleType:
    reason = unavailable_reason(arch)
    if reason is not None:
        raise SplatkitError(f"cannot build the native rasterizer: {reason}")
    if not re.fullmatch(r"[\w.+-]+", arch):  # one compiler flag, never several
        raise SplatkitError(f"${ARCH_ENV}={arch!r} is not a -march target (e.g. native, x86-64-v2, znver4)")
    from torch.utils import cpp_extension

    tag = source_hash(arch)
    build_dir = cache_root() / tag
    build_dir.mkdir(parents=True, exist_ok=True)
    name = f"splatkit_native_{tag}"
    built = _built(arch)
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
    os.environ["PATH"] = _tool_path()  # torch runs ninja from PATH
    try:
        cuda_flags = ["-DSPLATKIT_WITH_CUDA"] if with_cuda() else []
        return cpp_extension.load(
            name=name,
            sources=[str(path) for path in sources()],
            extra_include_paths=[str(CUDA_DIR / "include")],
            extra_cflags=cflags(arch) + cuda_flags,
            extra_cuda_cflags=["-O3", "-std=c++17", *cuda_flags],
            extra_ldflags=["-fopenmp"],
            build_directory=str(build_dir),
            verbose=False,
        )
    except Exception as exc:  # the compiler's output is in the message: show it, not a deep traceback
        raise SplatkitError(f"{CUDA_DIR}: the native rasterizer failed to build:\n{exc}") from None


load_extension.cache_clear = _load_extension.cache_clear  # forget every loaded build (tests that swap sources)
