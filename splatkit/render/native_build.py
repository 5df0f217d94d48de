"""Builds (once) and loads the native rasterizer in `cuda/` with torch's C++-extension tooling and ninja.

The build is cached under `$SPLATKIT_CACHE/native/<tag>` (default ~/.cache/splatkit/native), so only the first
use pays the compile (about a minute on 2 cores). The tag hashes what the binary and torch's build.ninja depend
on: the sources, splatkit's and torch's versions, the CPU and target (-march), torch's installation (folder, C++
ABI, CUDA), Python's headers and extension ABI, and the compiler ($CXX). Two environments with their own torch
or Python thus keep their own builds instead of recompiling each other's; venvs over one Python and one torch
build the same binary and share it.

Builds of one folder take turns through an flock on `<tag>/build.lock`, which the kernel drops when its holder
dies, however it dies: a live build is waited for (at most $SPLATKIT_BUILD_WAIT seconds), and torch's own `lock`
left by a killed build, which torch would wait on for ever, is removed.
Nothing here runs at import: `load_extension()` is called on the first native render.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.machinery
import importlib.util
import os
import platform
import re
import shutil
import signal
import sys
import sysconfig
import threading
import time
from pathlib import Path
from types import ModuleType
from typing import Callable, Iterator

import torch

import splatkit
from splatkit._resources import resource_dir, user_cache
from splatkit.errors import SplatkitError, file_error

CUDA_DIR = resource_dir("cuda")
CPU_SOURCES = ("bindings/bindings.cpp", "cpu/rasterize_cpu.cpp", "cpu/loss_cpu.cpp",
               "cpu/adam_cpu.cpp")
CUDA_SOURCES = ("gpu/rasterize_cuda.cu", "gpu/loss_cuda.cu", "gpu/adam_cuda.cu")
CFLAGS = ["-O3", "-fopenmp", "-fno-math-errno", "-fno-trapping-math"]
# GCC fills only 256 bits of an AVX-512 register unless told otherwise; the blend loops run a 16-pixel tile row per
# 512-bit vector: blend forward 25%, backward 13% faster on an AVX-512 Xeon. x86 only; a no-op without AVX-512.
X86_CFLAGS = ["-mprefer-vector-width=512"]
# The CPU the kernels are compiled for, passed as -march: this one unless the variable names another, e.g.
# x86-64-v2 (no AVX, no FMA) to check that results do not hinge on this CPU's instruction set.
ARCH_ENV = "SPLATKIT_NATIVE_ARCH"
LOCK_NAME = "build.lock"  # our flock, beside torch's own `lock` (TORCH_LOCK) in the build folder
TORCH_LOCK = "lock"
WAIT_ENV = "SPLATKIT_BUILD_WAIT"  # seconds to wait for another process's build before giving up
DEFAULT_WAIT = 1200.0  # many times a CPU build on 2 cores; a CUDA build takes a few minutes
BUILD_MARK = "SPLATKIT_NATIVE_BUILD"  # in the environment of ninja and the compilers, naming their build folder
POLL_SECONDS = 0.2


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
    return [*CFLAGS, *(X86_CFLAGS if platform.machine().lower() in ("x86_64", "amd64") else []), f"-march={arch}"]


def _cxx() -> str:
    """The C++ compiler torch's builder runs (and names in build.ninja)."""
    return os.environ.get("CXX", "c++")


def _toolchain() -> list[str]:
    """What else the build compiles and links against, all written into torch's build.ninja, where a change
    makes ninja recompile: torch's folder (headers, libraries), C++ ABI and CUDA, Python's headers (those of the
    base installation, the same for every venv over it) and extension ABI, and the compiler."""
    from torch.utils.cpp_extension import CUDA_HOME

    return [str(Path(torch.__file__).resolve().parent), str(torch.compiled_with_cxx11_abi()),
            f"{torch.version.cuda} {CUDA_HOME}" if with_cuda() else "cpu",
            sysconfig.get_path("include", scheme="posix_prefix"), importlib.machinery.EXTENSION_SUFFIXES[0],
            _cxx()]


def source_hash(arch: str | None = None) -> str:
    """The build's tag; builds for different -march targets (default `native_arch()`) or environments never share
    one."""
    digest = hashlib.sha256()
    for path in sorted((CUDA_DIR / "include").rglob("*.h")) + sources():
        digest.update(path.relative_to(CUDA_DIR).as_posix().encode())
        digest.update(path.read_bytes())
    for part in (splatkit.__version__, torch.__version__, " ".join(cflags(arch or native_arch())), _cpu_signature(),
                 *_toolchain()):
        digest.update(part.encode() + b"\0")
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
    cxx = _cxx()
    if shutil.which(cxx) is None:
        return f"no C++ compiler ({cxx} is not on PATH: install g++ or clang, or set CXX)"
    if shutil.which("ninja", path=_tool_path()) is None:  # torch's extension builder runs it
        return "ninja is not installed (pip install ninja)"
    return None


def compiler_available() -> bool:
    return unavailable_reason() is None


def needs_build(arch: str | None = None) -> bool:
    """Whether `load_extension` will compile first (nothing built for this tag yet): a caller can say so before
    the minute's wait (the viewer does, in its GUI)."""
    return not _built(arch or native_arch()).is_file()


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
    built = _built(arch)
    build_dir, name = built.parent, built.stem
    # A finished build is loaded as it is, without a lock or ninja: the tag hashes the sources' contents, not
    # their folder, and ninja would rebuild when the same sources come from another folder (a checkout, then an
    # installed wheel), as its commands name the paths. Torch's `lock` there means a build under way or killed.
    if built.is_file() and not (build_dir / TORCH_LOCK).exists():
        module = _import(name, built)
        if module is not None:
            return module
    build_dir.mkdir(parents=True, exist_ok=True)
    with _build_lock(build_dir) as interrupted:
        if built.is_file() and not interrupted:  # finished by the build just waited for
            module = _import(name, built)
            if module is not None:
                return module
        if not interrupted:  # which said so already
            print("splatkit: building the native rasterizer (first use only, about a minute)...", file=sys.stderr,
                  flush=True)
        return _build(name, arch, build_dir)


def _import(name: str, path: Path) -> ModuleType | None:
    """The built extension at `path`; None where it does not load (half-written, or broken)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except ImportError:
        return None
    return module


def _build(name: str, arch: str, build_dir: Path) -> ModuleType:
    """Compile (what ninja finds out of date) and load, under the caller's `_build_lock`."""
    from torch.utils import cpp_extension

    os.environ["PATH"] = _tool_path()  # torch runs ninja from PATH
    os.environ[BUILD_MARK] = str(build_dir)  # inherited by ninja and the compilers: see `_left_running`
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
    finally:
        os.environ.pop(BUILD_MARK, None)


@contextlib.contextmanager
def _build_lock(build_dir: Path) -> Iterator[bool]:
    """Hold the one right to build in `build_dir` for the block; yields whether a killed build had left torch's
    `lock` there (removed now, saying so: torch would wait on it for ever).

    The right is an flock, which the kernel drops when its holder dies, however it dies: a held one is a live
    build, waited for. As every build takes it first, torch's `lock` found by its holder is stale; what the
    killed build left running (ninja, a compiler: killing Python alone leaves them) is waited for first."""
    import fcntl  # POSIX, like the build itself (.so, -march, /proc)

    path = build_dir / LOCK_NAME
    with open(path, "a+") as file:  # closing it drops the flock

        def acquired() -> bool:
            try:
                fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            return True

        _wait_until(acquired, lambda: f"another build of the native rasterizer (pid {_holder(path)})", path)
        file.truncate(0)
        file.write(f"{os.getpid()}\n")  # for the message of whoever waits
        file.flush()
        stale = build_dir / TORCH_LOCK
        interrupted = stale.exists()
        if interrupted:
            _wait_until(lambda: _left_running(build_dir) is None,
                        lambda: f"what an interrupted build left running (pid {_left_running(build_dir)})", stale)
            stale.unlink(missing_ok=True)
            print(f"splatkit: {stale} was left by an interrupted build of the native rasterizer; removed it, "
                  "building again (about a minute)...", file=sys.stderr, flush=True)
        yield interrupted


def _holder(path: Path) -> str:
    """The pid the lock's holder wrote into it ("?" until it has)."""
    try:
        return path.read_text().strip() or "?"
    except OSError:
        return "?"


def _left_running(build_dir: Path) -> int | None:
    """The pid of a process of an earlier build of `build_dir` still running (the mark in its environment),
    or None (also without /proc, as on macOS)."""
    mark = f"{BUILD_MARK}={build_dir}".encode()
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if int(proc.name) != os.getpid() and mark in (proc / "environ").read_bytes().split(b"\0"):
                return int(proc.name)
        except OSError:  # ended meanwhile, or another user's
            continue
    return None


def _wait_bound() -> float:
    value = os.environ.get(WAIT_ENV) or str(DEFAULT_WAIT)
    try:
        return float(value)
    except ValueError:
        raise SplatkitError(f"${WAIT_ENV}={value!r} is not a number of seconds") from None


def _wait_until(done: Callable[[], bool], what: Callable[[], str], path: Path) -> None:
    """Return once `done()` holds, having said on stderr what it waits for; a SplatkitError naming `path` after
    $SPLATKIT_BUILD_WAIT seconds. It polls, so Ctrl-C and SIGTERM end the wait (see `_signals_as_default`)."""
    if done():
        return
    bound = _wait_bound()
    deadline = time.monotonic() + bound
    with _signals_as_default():  # before saying so: a signal sent on reading the line must end the wait
        print(f"splatkit: waiting for {what()} to finish...", file=sys.stderr, flush=True)
        while not done():
            if time.monotonic() >= deadline:
                raise file_error(path, f"gave up after {bound:g} s waiting for {what()} to finish; let it finish "
                                       f"or end it, then run again (${WAIT_ENV} sets the wait in seconds)")
            time.sleep(POLL_SECONDS)


@contextlib.contextmanager
def _signals_as_default() -> Iterator[None]:
    """Ctrl-C and SIGTERM act at once for the block, also under a handler that defers them (training's, until
    its step ends: a step waiting here would never end)."""
    if threading.current_thread() is not threading.main_thread():  # handlers belong to the main thread
        yield
        return
    previous = {signal.SIGINT: signal.signal(signal.SIGINT, signal.default_int_handler),
                signal.SIGTERM: signal.signal(signal.SIGTERM, signal.SIG_DFL)}
    try:
        yield
    finally:
        for sig, handler in previous.items():  # None: a handler set outside Python (glog's), not restorable
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)


load_extension.cache_clear = _load_extension.cache_clear  # forget every loaded build (tests that swap sources)
