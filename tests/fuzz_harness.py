"""Property-based fuzzing of every splatkit reader: seeds cut from the real captures and splat files in
../shared/datasets, structure-aware mutations drawn by hypothesis, and child processes that run each case under
a memory and a time limit.

tests/test_fuzz_readers.py runs a few hundred derandomized cases per reader (hypothesis shrinks a failure to
its smallest mutation); scripts/fuzz_readers.py runs 10,000+ per reader and prints a table. Cases run in a child
process because pycolmap is C++: an abort or a segfault there must be reported, not take the run down with it.

A case's outcome is `error` (a one-line `SplatkitError` naming a path), `accepted` (a result that passes the
reader's sanity check) or `crash`: any other exception, a warning, a native death, a hang, running out of the
memory limit, a message that is not one line naming a file, or an accepted result that is not sane.
"""

from __future__ import annotations

import gzip
import io
import json
import math
import multiprocessing
import os
import resource
import shutil
import struct
import tempfile
import time
import traceback
import warnings
import zipfile
import zlib
from dataclasses import dataclass, field, replace
from functools import cache
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any, Callable, NamedTuple

import numpy as np
from hypothesis import strategies as st

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
MEMORY_LIMIT = 4 << 30  # RLIMIT_AS of a worker: imports take ~1.3 GiB of address space, a case gets the rest
CASE_TIMEOUT = 30.0  # seconds; a case takes milliseconds, so one that runs this long is a hang
STARTUP_TIMEOUT = 300.0  # seconds for a worker to import torch, pycolmap and splatkit

# ------------------------------------------------------------------------------------------------ cases


@dataclass(frozen=True)
class Tree:
    """The files a case gives its reader: bytes by relative path, each tagged with the kind of structure it has
    (which mutations understand it), plus symlinks to real photos too big to copy and empty folders."""

    files: dict[str, bytes]
    kinds: dict[str, str]
    links: dict[str, str] = field(default_factory=dict)
    folders: frozenset[str] = frozenset()

    def materialise(self, root: Path) -> None:
        for rel, data in self.files.items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(data)
        for rel, target in self.links.items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).symlink_to(target)
        for rel in self.folders:
            (root / rel).mkdir(parents=True, exist_ok=True)


@dataclass(frozen=True)
class Seed:
    """A real file (or scene folder) cut down to a few records, and what the reader is given: `entry` (a path
    relative to the case folder, "." for the folder itself) and, for scenes, `data_factor`."""

    name: str
    reader: str
    tree: Tree
    entry: str = "."
    data_factor: int = 1


@dataclass(frozen=True)
class Case:
    seed: Seed
    tree: Tree
    steps: tuple[str, ...]

    def __repr__(self) -> str:  # what hypothesis prints for a failing case: the seed and the mutations, not bytes
        return f"Case(seed={self.seed.name!r}, steps={list(self.steps)!r})"


@dataclass(frozen=True)
class Outcome:
    kind: str  # "error", "accepted" or "crash"
    detail: str


# ------------------------------------------------------------------------------------------------ readers


def _check_scene(scene: Any, case: Case) -> str | None:
    from splatkit.data.checks import ROTATION_TOLERANCE

    if not scene.cameras:
        return "scene has no cameras"
    for cam in scene.cameras:
        if not (isinstance(cam.width, int) and isinstance(cam.height, int) and cam.width >= 1 and cam.height >= 1):
            return f"camera {cam.name!r} has size {cam.width!r}x{cam.height!r}"
        K, w2c = np.asarray(cam.K), np.asarray(cam.world_to_cam)
        if K.shape != (3, 3) or not np.isfinite(K).all() or not (K[0, 0] > 0 and K[1, 1] > 0):
            return f"camera {cam.name!r} has K {K.tolist()}"
        R = w2c[:3, :3] if w2c.shape == (4, 4) else np.zeros((3, 3))
        if (not np.isfinite(w2c).all() or not np.allclose(w2c[3], [0, 0, 0, 1])
                or np.abs(R @ R.T - np.eye(3)).max() > ROTATION_TOLERANCE or np.linalg.det(R) < 0):
            return f"camera {cam.name!r} has a world_to_cam that is not a finite rigid transform: {w2c.tolist()}"
        if cam.image_path is None or not Path(cam.image_path).is_file():
            return f"camera {cam.name!r} has no image file ({cam.image_path})"
    points, colors = np.asarray(scene.points), np.asarray(scene.colors)
    if points.ndim != 2 or points.shape[1:] != (3,) or len(points) == 0 or not np.isfinite(points).all():
        return f"points are not a non-empty finite (N, 3) array: shape {points.shape}"
    if colors.shape != points.shape or not (np.isfinite(colors).all() and colors.min() >= 0 and colors.max() <= 1):
        return f"colours are not (N, 3) in [0, 1]: shape {colors.shape}"
    ids = sorted(scene.train_ids + scene.test_ids)
    if ids != list(range(len(scene.cameras))):
        return "train and test ids do not partition the cameras"
    return None


def _check_gaussians(g: Any, case: Case) -> str | None:
    """Finite, raw and activated. A format's own loader may return 0 splats: read_splats is what refuses those."""
    import torch

    return None if g.is_finite() and bool(torch.isfinite(g.activated_scales).all()) else "non-finite values"


def _check_info(info: Any, case: Case) -> str | None:
    numbers = [*info.bounds, *info.bulk, info.median_opacity, info.median_scale]
    if info.count < 1 or not all(np.isfinite(np.asarray(v, np.float64)).all() for v in numbers):
        return f"describe() reports {info}"
    return None


def _check_mask(mask: Any, case: Case) -> str | None:
    if not (isinstance(mask, np.ndarray) and mask.dtype == np.uint8 and mask.ndim == 2 and mask.size
            and set(np.unique(mask)) <= {0, 255}):
        return f"mask is not a uint8 HxW array of 0 and 255: {getattr(mask, 'dtype', type(mask))} {np.shape(mask)}"
    return None


def _load_scene(path: Path, case: Case) -> Any:
    from splatkit.data import load_scene

    return load_scene(path, data_factor=case.seed.data_factor)


def _load_as_seeded(path: Path, case: Case) -> Any:
    """The seed format's own loader, called directly: detection may route a mutated file elsewhere."""
    from splatkit.io.formats import READERS as FORMAT_READERS

    return FORMAT_READERS[case.seed.reader](path)


def _describe(path: Path, case: Case) -> Any:
    """What `splatkit info` does: detect the format, read_splats, summarise."""
    from splatkit.io.export import describe

    return describe(path)


def _read_mask(path: Path, case: Case) -> Any:
    from splatkit.data.masks import read_mask

    return read_mask(path)


def _probe(path: Path, case: Case) -> Any:
    """Misbehaves as its file says: how the harness's own test checks that each kind of failure is caught."""
    from splatkit.errors import SplatkitError

    behaviour = (path / "behaviour").read_text()
    if behaviour == "abort":
        os.abort()
    if behaviour == "hang":
        time.sleep(3600)
    if behaviour == "unclear":
        raise SplatkitError("an error\nover two lines")
    return bytearray(8 << 30) if behaviour == "memory" else None


Call = tuple[Callable[[Path, Case], Any], Callable[[Any, Case], str | None]]
SCENE_CALLS: tuple[Call, ...] = ((_load_scene, _check_scene),)
SPLAT_CALLS: tuple[Call, ...] = ((_load_as_seeded, _check_gaussians), (_describe, _check_info))
# reader -> the calls a case makes, each with the sanity check of what it returns
READERS: dict[str, tuple[Call, ...]] = {
    "colmap-bin": SCENE_CALLS, "colmap-txt": SCENE_CALLS, "transforms-json": SCENE_CALLS, "pointmaps": SCENE_CALLS,
    "ply": SPLAT_CALLS, "compressed-ply": SPLAT_CALLS, "spz": SPLAT_CALLS, "splat": SPLAT_CALLS,
    "sog": SPLAT_CALLS, "sog-meta": SPLAT_CALLS, "sog-lod": SPLAT_CALLS, "compact": SPLAT_CALLS,
    "masks": ((_read_mask, _check_mask),),  # splatkit.data.masks: fuzzed once that module exists
    "probe": ((_probe, lambda result, case: None),),  # not a reader: the harness's self-test
}


def available_readers() -> list[str]:
    """The readers that can be fuzzed here: masks only once splatkit.data.masks exists."""
    import importlib.util

    has_masks = importlib.util.find_spec("splatkit.data.masks") is not None
    return [r for r in READERS if r != "probe" and (r != "masks" or has_masks)]


def _one_line_naming_a_path(message: str) -> bool:
    head, sep, problem = message.partition(": ")
    return "\n" not in message and "\r" not in message and bool(sep and problem) and os.path.isabs(head)


def run_case(case: Case, root: Path) -> Outcome:
    """Materialise `case` under `root` (emptied first) and run its reader's calls: a crash in any of them is the
    outcome, else the last call's (the answer the command would give)."""
    from splatkit.errors import SplatkitError

    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    case.tree.materialise(root)
    path = (root / case.seed.entry).resolve()
    outcome = Outcome("accepted", "")
    for call, check in READERS[case.seed.reader]:
        where = call.__name__
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # a reader should not even warn about hostile bytes
                result = call(path, case)
        except SplatkitError as exc:
            if not _one_line_naming_a_path(str(exc)):
                return Outcome("crash", f"{where}: unclear error message {str(exc)!r}")
            outcome = Outcome("error", str(exc))
        except Exception as exc:  # the whole point: anything but a SplatkitError is a failure
            frame = traceback.extract_tb(exc.__traceback__)[-1]
            return Outcome("crash", f"{where}: {type(exc).__name__}: {exc} "
                                    f"(at {Path(frame.filename).name}:{frame.lineno})".replace("\n", " "))
        else:
            problem = check(result, case)
            if problem is not None:
                return Outcome("crash", f"{where}: accepted but not sane: {problem}")
            outcome = Outcome("accepted", "")
    return outcome


# ------------------------------------------------------------------------------------------------ runner


def _serve(conn: Connection, root: Path, memory: int, log: Path) -> None:
    """A worker: cases in, outcomes out, until it receives None."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(fd, 1)  # pycolmap's glog lines and abort messages go to the log, read back when the worker dies
    os.dup2(fd, 2)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    import importlib

    import cv2
    import torch

    for module in ("splatkit.data", "splatkit.io.export"):  # imported now, not in the first case's time
        importlib.import_module(module)
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    conn.send("ready")
    while (case := conn.recv()) is not None:
        conn.send(run_case(case, root / "case"))


class _Worker:
    def __init__(self, root: Path, memory: int) -> None:
        self.root, self.log = root, root / "worker.log"
        ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: no forked torch/pycolmap state
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_serve, args=(child, root, memory, self.log), daemon=True)
        self.process.start()
        child.close()
        self.ready = False

    def wait_ready(self) -> None:
        """Block until the worker has imported everything, so that startup is not counted against a case."""
        if not self.ready and self.conn.poll(STARTUP_TIMEOUT):
            self.ready = self.conn.recv() == "ready"
        if not self.ready:
            raise RuntimeError(f"fuzz worker did not start: {self.death()}")

    def death(self) -> str:
        self.process.join(5)
        code = self.process.exitcode
        how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        tail = self.log.read_text(errors="replace")[-400:].replace("\n", " ") if self.log.exists() else ""
        return f"worker died ({how}); its last output: {tail.strip()!r}"

    def stop(self) -> None:
        """Ask an idle worker to exit; kill it if it does not."""
        if self.process.is_alive():
            self.conn.send(None)
            self.process.join(5)
        self.kill()

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join()
        self.conn.close()


Done = Callable[[Case, Outcome], None]


class Runner:
    """Runs cases in `jobs` worker processes, each under RLIMIT_AS = `memory` and `timeout` seconds per case.

    A worker that dies (native abort, segfault, out of memory) or hangs is reported as a crash for its case and
    replaced. `submit` returns at once unless every worker is busy; `done(case, outcome)` is called as cases
    finish; `drain` waits for all of them.
    """

    def __init__(self, jobs: int = 1, timeout: float = CASE_TIMEOUT, memory: int = MEMORY_LIMIT) -> None:
        self.timeout, self.memory = timeout, memory
        self.tmp = Path(tempfile.mkdtemp(prefix="splatkit-fuzz-")).resolve()
        self.idle = [self._start(i) for i in range(jobs)]
        self.busy: dict[_Worker, tuple[Case, Done, float]] = {}

    def _start(self, index: int) -> _Worker:
        root = self.tmp / f"worker{index}"
        root.mkdir(exist_ok=True)
        return _Worker(root, self.memory)

    def _replace(self, worker: _Worker) -> _Worker:
        """A fresh worker for one that died or hangs."""
        worker.kill()
        return _Worker(worker.root, self.memory)

    def submit(self, case: Case, done: Done) -> None:
        while not self.idle:
            self._collect()
        worker = self.idle.pop()
        worker.wait_ready()
        worker.conn.send(case)
        self.busy[worker] = (case, done, time.monotonic() + self.timeout)

    def drain(self) -> None:
        while self.busy:
            self._collect()

    def run(self, case: Case) -> Outcome:
        result: list[Outcome] = []
        self.submit(case, lambda _, outcome: result.append(outcome))
        self.drain()
        return result[0]

    def _collect(self) -> None:
        """Wait for at least one busy worker to answer, die or time out."""
        first_deadline = min(deadline for _, _, deadline in self.busy.values())
        ready = wait([w.conn for w in self.busy], timeout=max(0.0, first_deadline - time.monotonic()))
        now = time.monotonic()
        for worker, (case, done, deadline) in list(self.busy.items()):
            if worker.conn in ready:
                try:
                    outcome, fresh = worker.conn.recv(), worker
                except (EOFError, OSError):
                    outcome = Outcome("crash", worker.death())
                    fresh = self._replace(worker)
            elif now >= deadline:
                outcome = Outcome("crash", f"hang: no answer within {self.timeout:g} s")
                fresh = self._replace(worker)
            else:
                continue
            del self.busy[worker]
            self.idle.append(fresh)
            done(case, outcome)

    def close(self) -> None:
        for worker in self.idle:
            worker.stop()
        for worker in self.busy:
            worker.kill()
        shutil.rmtree(self.tmp, ignore_errors=True)


# ------------------------------------------------------------------------------------------------ structure


class Field(NamedTuple):
    name: str
    offset: int
    fmt: str  # a struct format: byte order and one code, e.g. "<I"; or "z", a NUL-terminated name


class Layout(NamedTuple):
    """Where a binary file's numbers are, which byte spans are whole records, and the field counting them."""

    fields: list[Field]
    records: list[tuple[int, int]]
    count: Field | None


class _Cursor:
    """Reads little-endian fields, remembering where each was; EOFError at the end of the data."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos, self.fields = data, 0, []

    def take(self, name: str, code: str) -> Any:
        fmt = "<" + code
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.data):
            raise EOFError
        (value,) = struct.unpack_from(fmt, self.data, self.pos)
        self.fields.append(Field(name, self.pos, fmt))
        self.pos += size
        return value

    def takes(self, prefix: str, names: str, fmt: str) -> list[Any]:
        return [self.take(f"{prefix}.{n}", fmt) for n in names.split()]

    def take_name(self, name: str) -> None:
        end = self.data.find(b"\0", self.pos)
        if end < 0:
            raise EOFError
        self.fields.append(Field(name, self.pos, "z"))
        self.pos = end + 1


def _colmap_record(c: _Cursor, kind: str, r: str) -> None:
    """One record of a COLMAP .bin file (the layout of colmap/scene/reconstruction_io_binary.cc)."""
    from splatkit.data.colmap import CAMERA_NUM_PARAMS

    if kind == "cameras":
        c.take(f"{r}.camera_id", "I")
        model = c.take(f"{r}.model_id", "i")
        c.takes(r, "width height", "Q")
        for k in range(CAMERA_NUM_PARAMS.get(model, 0)):
            c.take(f"{r}.params[{k}]", "d")
    elif kind == "images":
        c.take(f"{r}.image_id", "I")
        c.takes(r, "qw qx qy qz tx ty tz", "d")
        c.take(f"{r}.camera_id", "I")
        c.take_name(f"{r}.name")
        for k in range(c.take(f"{r}.num_points2D", "Q")):
            c.takes(f"{r}.points2D[{k}]", "x y", "d")
            c.take(f"{r}.points2D[{k}].point3D_id", "q")
    elif kind == "points3D":
        c.take(f"{r}.point3D_id", "Q")
        c.takes(r, "x y z", "d")
        c.takes(r, "r g b", "B")
        c.take(f"{r}.error", "d")
        for k in range(c.take(f"{r}.track_length", "Q")):
            c.takes(f"{r}.track[{k}]", "image_id point2D_idx", "I")
    elif kind == "rigs":
        c.take(f"{r}.rig_id", "I")
        sensors = c.take(f"{r}.num_sensors", "I")
        if sensors:
            c.take(f"{r}.ref_sensor_type", "i")
            c.take(f"{r}.ref_sensor_id", "I")
        for k in range(max(0, sensors - 1)):
            c.take(f"{r}.sensors[{k}].type", "i")
            c.take(f"{r}.sensors[{k}].id", "I")
            if c.take(f"{r}.sensors[{k}].has_pose", "B"):
                c.takes(f"{r}.sensors[{k}]", "qw qx qy qz tx ty tz", "d")
    elif kind == "frames":
        c.takes(r, "frame_id rig_id", "I")
        c.takes(r, "qw qx qy qz tx ty tz", "d")
        for k in range(c.take(f"{r}.num_data_ids", "I")):
            c.take(f"{r}.data_ids[{k}].sensor_type", "i")
            c.take(f"{r}.data_ids[{k}].sensor_id", "I")
            c.take(f"{r}.data_ids[{k}].data_id", "Q")


def colmap_bin_layout(kind: str, data: bytes) -> Layout:
    """As much of a COLMAP .bin file's layout as parses (a mutated file may break off anywhere)."""
    c = _Cursor(data)
    records: list[tuple[int, int]] = []
    try:
        count = c.take("count", "Q")
        for i in range(min(count, len(data))):
            start = c.pos
            _colmap_record(c, kind, f"{kind}[{i}]")
            records.append((start, c.pos))
    except EOFError:
        pass
    return Layout(c.fields, records, c.fields[0] if c.fields else None)


_PLY_TYPES = {"char": "b", "uchar": "B", "short": "h", "ushort": "H", "int": "i", "uint": "I", "float": "f",
              "double": "d", "int8": "b", "uint8": "B", "int16": "h", "uint16": "H", "int32": "i", "uint32": "I",
              "float32": "f", "float64": "d"}


def _ply_header_end(data: bytes) -> int:
    end = data.find(b"end_header\n")
    return -1 if end < 0 else end + len(b"end_header\n")


def ply_layout(data: bytes) -> Layout:
    """The body fields of a binary little-endian PLY: every property of each element's first two rows and its
    last, and every row as a record of the first element (counted in the header, which is text)."""
    from splatkit.errors import SplatkitError
    from splatkit.io.compressed_ply import parse_ply_header

    try:
        header = parse_ply_header(data, "fuzz.ply")
    except SplatkitError:
        return Layout([], [], None)
    fields, records, pos = [], [], header.body_start
    for element in header.elements:
        fmts = [_PLY_TYPES.get(t) for t, _ in element.properties]
        if header.format != "binary_little_endian" or None in fmts:
            break
        row = struct.calcsize("<" + "".join(fmts))
        for i in {0, 1, element.count - 1} & set(range(element.count)):
            offset = pos + i * row
            for (_, name), fmt in zip(element.properties, fmts):
                if offset + struct.calcsize(fmt) <= len(data):
                    fields.append(Field(f"{element.name}[{i}].{name}", offset, "<" + fmt))
                offset += struct.calcsize(fmt)
        pos += element.count * row
    return Layout(fields, records, None)


def splat_layout(data: bytes) -> Layout:
    """antimatter15 .splat: 32-byte records of float32 position and scale, then RGBA and rotation bytes."""
    names = [("x y z scale_0 scale_1 scale_2", "f"), ("r g b a rot_0 rot_1 rot_2 rot_3", "B")]
    n = len(data) // 32
    fields = []
    for i in {0, 1, n - 1} & set(range(n)):
        offset = 32 * i
        for group, fmt in names:
            for name in group.split():
                fields.append(Field(f"splat[{i}].{name}", offset, "<" + fmt))
                offset += struct.calcsize(fmt)
    return Layout(fields, [(32 * i, 32 * i + 32) for i in range(n)], None)


def spz_layout(data: bytes) -> Layout:
    """The header of an (uncompressed) SPZ stream, and for version 4 its table of contents."""
    c = _Cursor(data)
    try:
        c.pos = 4
        version = c.take("version", "I")
        c.take("num_points", "I")
        c.takes("header", "sh_degree fractional_bits flags", "B")
        if version != 4:
            c.take("reserved", "B")
        else:
            streams = c.take("num_streams", "B")
            toc = c.take("toc_offset", "I")
            c.pos = toc
            for i in range(min(streams, 8)):
                c.takes(f"toc[{i}]", "compressed_size uncompressed_size", "Q")
    except EOFError:
        pass
    return Layout(c.fields, [], None)


def png_layout(data: bytes) -> Layout:
    """Every chunk's length field and span, and the IHDR fields (size, bit depth, colour type, interlace)."""
    fields, records, pos = [], [], 8
    while pos + 12 <= len(data):
        (length,) = struct.unpack_from(">I", data, pos)
        chunk = data[pos + 4:pos + 8].decode("latin-1")
        fields.append(Field(f"{chunk}.length", pos, ">I"))
        if chunk == "IHDR" and pos + 21 <= len(data):
            fields += [Field("IHDR.width", pos + 8, ">I"), Field("IHDR.height", pos + 12, ">I"),
                       Field("IHDR.bit_depth", pos + 16, ">B"), Field("IHDR.colour_type", pos + 17, ">B"),
                       Field("IHDR.interlace", pos + 20, ">B")]
        records.append((pos, min(len(data), pos + 12 + length)))
        pos += 12 + length
    return Layout(fields, records, None)


def png_repair(data: bytes) -> bytes:
    """Recompute each whole chunk's CRC, so that a changed field is read rather than refused as corrupt."""
    out, pos = bytearray(data), 8
    while pos + 12 <= len(data):
        (length,) = struct.unpack_from(">I", data, pos)
        if pos + 12 + length > len(data):
            break
        struct.pack_into(">I", out, pos + 8 + length, zlib.crc32(data[pos + 4:pos + 8 + length]))
        pos += 12 + length
    return bytes(out)


def jpeg_layout(data: bytes) -> Layout:
    """The frame header of a JPEG: sample precision, height, width, number of components."""
    sof = max(data.find(marker) for marker in (b"\xff\xc0", b"\xff\xc2"))
    if sof < 0 or sof + 10 > len(data):
        return Layout([], [], None)
    return Layout([Field("SOF.precision", sof + 4, ">B"), Field("SOF.height", sof + 5, ">H"),
                   Field("SOF.width", sof + 7, ">H"), Field("SOF.components", sof + 9, ">B")], [], None)


def webp_layout(data: bytes) -> Layout:
    """A lossless WebP's RIFF and VP8L chunk sizes and the 32 bits packing its width - 1, height - 1 (14 bits
    each), alpha flag and version."""
    if data[12:16] != b"VP8L" or len(data) < 25:
        return Layout([], [], None)
    return Layout([Field("RIFF.size", 4, "<I"), Field("VP8L.size", 16, "<I"), Field("VP8L.size_bits", 21, "<I")],
                  [], None)


def compact_layout(data: bytes) -> Layout:
    """splatkit's compact file: the version byte and header length before its JSON header."""
    return Layout([Field("version", 4, "<B"), Field("header_size", 5, "<I")], [], None) if len(data) >= 9 else \
        Layout([], [], None)


LAYOUTS: dict[str, Callable[[bytes], Layout]] = {
    **{f"colmap-bin/{k}": (lambda data, k=k: colmap_bin_layout(k, data))
       for k in ("cameras", "images", "points3D", "rigs", "frames")},
    "ply": ply_layout, "splat": splat_layout, "spz": spz_layout, "png": png_layout, "jpeg": jpeg_layout,
    "webp": webp_layout, "compact": compact_layout,
}
REPAIRS: dict[str, Callable[[bytes], bytes]] = {"png": png_repair}  # run after a structural change


# ------------------------------------------------------------------------------------------------ mutations

Draw = Callable[[st.SearchStrategy[Any]], Any]
Op = Callable[[bytes, str, Draw], tuple[bytes, str]]  # (file bytes, file kind, draw) -> (new bytes, what was done)

INTS = (0, 1, -1, 2, 3, 255, 256, 65535, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 10**9, 10**12, 2**53 + 1,
        2**63 - 1, 2**63, 2**64 - 1)
FLOATS = (math.nan, math.inf, -math.inf, 0.0, -0.0, 5e-324, 1e-30, -1.0, 0.5, 1e9, 1e30, 3.5e38, 1e300, -1e300)
NAMES = (b"", b".", b"/", b"..", b"../x.jpg", b"/etc/hostname", b"a" * 300, b"dir/" * 40 + b"x.jpg", b"a\nb.jpg",
         b"\xff\xfe.jpg", b"\xc3\xa9.jpg", b"images", b" x.jpg", b"1.jpg")  # image names: odd, long, not UTF-8
TOKENS = (*NAMES, *(str(v).encode() for v in INTS + FLOATS), b"1e999", b"-1e999", b"1e-400", b"-18446744073709551617",
          b"x", b"-", b"+", b"0x1F", b"1,5", b"1.5.5", "\uff11".encode(), b"\xff\xfe", b"9" * 40,
          b"SIMPLE_PINHOLE", b"PINHOLE", b"SIMPLE_RADIAL", b"RADIAL", b"OPENCV", b"FULL_OPENCV", b"FOV",
          b"OPENCV_FISHEYE", b"EQUIRECTANGULAR", b"CAMERA", b"IMU", b"float", b"double", b"uchar", b"uint",
          b"list", b"vertex", b"chunk", b"sh", b"element", b"property")
JSON_VALUES = (math.nan, math.inf, -math.inf, 1e308, 1e9, 10**12, 2**64, -1, 0, 0.5, "x", "", None, True, [], {},
               [1, 2, 3], {"a": 1}, [[0.0] * 4] * 4, [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]],
               [[-1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], "OPENCV_FISHEYE", "../..", "/", "images",
               "images/missing.jpg", "a\u0000b", "\udcff", "a" * 300)
JSON_KEYS = ("w", "h", "fl_x", "fl_y", "cx", "cy", "k1", "k2", "k3", "p1", "p2", "camera_angle_x",
             "camera_angle_y", "camera_model", "file_path", "mask_path", "transform_matrix", "frames", "ply_file_path")
SOG_JSON_KEYS = ("version", "count", "means", "mins", "maxs", "codebook", "files", "bands", "shN", "quats", "model")
LOD_JSON_KEYS = ("version", "lodLevels", "counts", "filenames", "tree", "children", "lods", "bound", "file", "offset",
                 "count", "environment", "0", "1")


def _pack(fmt: str, value: float) -> bytes:
    """`value` in a field of type `fmt`: integers wrap around (so -1 is all ones), floats round to float32."""
    if fmt[-1] in "fd":
        with np.errstate(over="ignore"):
            return np.array([value], "<f8").astype(fmt).tobytes()
    bits = 8 * struct.calcsize(fmt)
    v = int(value) % 2**bits if math.isfinite(value) else 0
    return struct.pack(fmt, v - 2**bits if fmt[-1].islower() and v >= 2 ** (bits - 1) else v)


def _get(data: bytes, f: Field) -> Any:
    return data[f.offset:data.index(b"\0", f.offset)] if f.fmt == "z" else struct.unpack_from(f.fmt, data, f.offset)[0]


def _put(data: bytes, f: Field, value: Any) -> bytes:
    if f.fmt == "z":
        return data[:f.offset] + value + data[data.index(b"\0", f.offset):]
    packed = _pack(f.fmt, value)
    return data[:f.offset] + packed + data[f.offset + len(packed):]


def _values(fmt: str, current: Any) -> st.SearchStrategy[Any]:
    if fmt == "z":
        return st.sampled_from(NAMES + (current + b".png", current.upper()))
    if fmt[-1] in "fd":
        return st.sampled_from(FLOATS + (current * 2, -current))
    return st.sampled_from(INTS + (current + 1, current - 1, current * 2))


def _position(data: bytes, draw: Draw) -> int:
    """Half the time within the first 64 bytes, where headers and compression framing live."""
    return draw(st.one_of(st.integers(0, min(63, len(data) - 1)), st.integers(0, len(data) - 1)))


def truncate(data: bytes, kind: str, draw: Draw) -> tuple[bytes, str]:
    at = draw(st.integers(0, max(0, len(data) - 1)))
    return data[:at], f"truncate to {at} B"


def overwrite(data: bytes, kind: str, draw: Draw) -> tuple[bytes, str]:
    if not data:
        return append(data, kind, draw)
    pos, value = _position(data, draw), draw(st.integers(0, 255))
    return data[:pos] + bytes([value]) + data[pos + 1:], f"byte {pos} := {value:#04x}"


def flip_bit(data: bytes, kind: str, draw: Draw) -> tuple[bytes, str]:
    if not data:
        return append(data, kind, draw)
    pos, bit = _position(data, draw), draw(st.integers(0, 7))
    return data[:pos] + bytes([data[pos] ^ (1 << bit)]) + data[pos + 1:], f"flip bit {bit} of byte {pos}"


def delete_span(data: bytes, kind: str, draw: Draw) -> tuple[bytes, str]:
    if not data:
        return append(data, kind, draw)
    pos, n = _position(data, draw), draw(st.integers(1, 64))
    return data[:pos] + data[pos + n:], f"delete {n} B at {pos}"


def insert_bytes(data: bytes, kind: str, draw: Draw) -> tuple[bytes, str]:
    pos = _position(data, draw) if data else 0
    blob = draw(st.one_of(st.binary(min_size=1, max_size=16), st.just(data[pos:pos + 32])))
    return data[:pos] + blob + data[pos:], f"insert {blob!r} at {pos}"


def append(data: bytes, kind: str, draw: Draw) -> tuple[bytes, str]:
    blob = draw(st.one_of(st.binary(min_size=1, max_size=64), st.just(data[-64:])))
    return data + blob, f"append {blob!r}"


def _layout(kind: str, data: bytes) -> Layout:
    return LAYOUTS[kind](data) if kind in LAYOUTS else Layout([], [], None)


def with_field(data: bytes, kind: str, name: str, value: Any) -> bytes:
    """`data` with the field called `name` (as `LAYOUTS[kind]` names it) set to `value`: for regression cases."""
    f = next(f for f in _layout(kind, data).fields if f.name == name)
    return REPAIRS.get(kind, bytes)(_put(data, f, value))


def set_field(data: bytes, kind: str, draw: Draw) -> tuple[bytes, str]:
    """A header count, an id, a size, a model id or a float set to a hostile value (10^12, -1, NaN, ...)."""
    fields = _layout(kind, data).fields
    if not fields:
        return overwrite(data, kind, draw)
    per_record = [f for f in fields if f.name.count("[") <= 1]  # counts, ids, sizes, names: not list items
    f = draw(st.sampled_from(per_record or fields) | st.sampled_from(fields))
    value = draw(_values(f.fmt, _get(data, f)))
    return REPAIRS.get(kind, bytes)(_put(data, f, value)), f"{f.name} := {value!r}"


def copy_record(data: bytes, kind: str, draw: Draw) -> tuple[bytes, str]:
    """Duplicate a record (so its id repeats) or drop one, updating the header's count or not."""
    layout = _layout(kind, data)
    if not layout.records:
        return delete_span(data, kind, draw)
    i = draw(st.integers(0, len(layout.records) - 1))
    start, end = layout.records[i]
    dropping = draw(st.booleans())
    data = data[:start] + data[end:] if dropping else data[:end] + data[start:end] + data[end:]
    what = f"{'drop' if dropping else 'duplicate'} record {i}"
    if layout.count is not None and draw(st.booleans()):
        data = _put(data, layout.count, _get(data, layout.count) + (-1 if dropping else 1))
        what += " and its count"
    return data, what


def _text_end(data: bytes, kind: str) -> int:
    """Where a file's text ends: a PLY's header is text, the rest of these files are text throughout."""
    return _ply_header_end(data) if kind == "ply" else len(data)


def _edit_token(tokens: list[bytes], draw: Draw) -> tuple[list[bytes], str]:
    j = draw(st.integers(0, len(tokens) - 1))
    how = draw(st.sampled_from(["replace", "replace", "drop", "insert"]))
    if how == "drop":
        return tokens[:j] + tokens[j + 1:], f"drop token {j + 1}"
    old = tokens[j]
    relative = (str(int(old) + 1).encode(), str(int(old) * 1000).encode()) if old.lstrip(b"-").isdigit() else ()
    new = draw(st.sampled_from(TOKENS + relative))
    if how == "insert":
        return tokens[:j] + [new] + tokens[j:], f"insert token {new!r} before token {j + 1}"
    return tokens[:j] + [new] + tokens[j + 1:], f"token {j + 1} {old!r} -> {new!r}"


def edit_text(data: bytes, kind: str, draw: Draw) -> tuple[bytes, str]:
    """Line and token edits: wrong, missing and extra values, dropped, repeated and moved lines, odd separators."""
    end = _text_end(data, kind)
    if end <= 0:
        return overwrite(data, kind, draw)
    lines = data[:end].split(b"\n")
    data_lines = [i for i, line in enumerate(lines) if line.strip() and not line.startswith(b"#")]
    i = draw(st.sampled_from(data_lines or list(range(len(lines)))))
    how = draw(st.sampled_from(["token", "token", "token", "drop", "repeat", "swap", "cut", "insert", "tabs",
                                "crlf"]))
    if how == "token":
        tokens, what = _edit_token(lines[i].split(b" "), draw)
        lines[i] = b" ".join(tokens)
    elif how == "drop":
        del lines[i]
        what = "drop the line"
    elif how == "repeat":
        n = draw(st.integers(1, 2))
        lines[i + n:i + n] = lines[i:i + n]
        what = f"repeat {n} line(s)"
    elif how == "swap":
        j = draw(st.sampled_from(data_lines or [i]))
        lines[i], lines[j] = lines[j], lines[i]
        what = f"swap with line {j + 1}"
    elif how == "cut":
        at = draw(st.integers(0, len(lines[i])))
        lines[i] = lines[i][:at]
        what = f"cut after {at} B"
    elif how == "insert":
        new = draw(st.sampled_from([b"", b"#", b"1", b"1 2 3", b" ", b"\t", b"-1 -1"] + list(TOKENS)))
        lines.insert(i, new)
        what = f"insert line {new!r}"
    elif how == "tabs":
        sep = draw(st.sampled_from([b"\t", b"  ", b" , "]))
        lines[i] = lines[i].replace(b" ", sep)
        what = f"separate with {sep!r}"
    else:
        lines = [line + b"\r" for line in lines]
        what = "CRLF line endings"
    return b"\n".join(lines) + data[end:], f"line {i + 1}: {what}"


def _json_paths(node: Any, path: tuple = ()) -> list[tuple]:
    """The path (keys and indices) of every value in a parsed JSON document, the root excluded."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    return [p for key, child in items for p in [path + (key,), *_json_paths(child, path + (key,))]]


def _json_get(node: Any, path: tuple) -> Any:
    for key in path:
        node = node[key]
    return node


def edit_json(data: bytes, kind: str, draw: Draw) -> tuple[bytes, str]:
    """Wrong types, NaN/inf, huge and negative numbers, missing and unknown keys, repeated or no frames."""
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, ValueError):
        return overwrite(data, kind, draw)
    paths = _json_paths(doc)
    how = draw(st.sampled_from(["set", "set", "set", "delete", "add", "repeat", "wrap"] if paths else ["add"]))
    if how == "add":
        dicts = [p for p in [(), *paths] if isinstance(_json_get(doc, p), dict)]
        path = draw(st.sampled_from(dicts)) if dicts else ()
        keys = {"sog-json": SOG_JSON_KEYS, "lod-json": LOD_JSON_KEYS}.get(kind, JSON_KEYS)
        key, value = draw(st.sampled_from(keys)), draw(st.sampled_from(JSON_VALUES))
        target = _json_get(doc, path) if dicts else None
        if target is None:
            doc, what = {key: value}, f"replace the document with {{{key!r}: {value!r}}}"
        else:
            target[key] = value
            what = f"{list(path) + [key]} := {value!r}"
    else:
        path = draw(st.sampled_from(paths))
        parent, key = _json_get(doc, path[:-1]), path[-1]
        if how == "set":
            old = parent[key]
            scaled = (old * -1, old * 1e9, old * 1e-9) if isinstance(old, (int, float)) else ()
            parent[key] = draw(st.sampled_from(JSON_VALUES + scaled))
            what = f"{list(path)} := {parent[key]!r}"
        elif how == "delete":
            del parent[key]
            what = f"delete {list(path)}"
        elif how == "repeat" and isinstance(parent[key], list) and parent[key]:
            parent[key] = parent[key] + parent[key][: draw(st.integers(1, len(parent[key])))]
            what = f"repeat items of {list(path)}"
        else:
            parent[key] = [parent[key]]
            what = f"wrap {list(path)} in a list"
    try:
        text = json.dumps(doc, indent=draw(st.sampled_from([2, None])))  # NaN and Infinity as Python writes them
    except (TypeError, ValueError):
        return data, f"(unserialisable: {what})"
    return text.encode("utf-8", "surrogatepass"), what


def in_gzip(op: Op) -> Op:
    """`op` applied to a gzipped file's payload (its structure is inside), then gzipped again."""
    def inner(data: bytes, kind: str, draw: Draw) -> tuple[bytes, str]:
        try:
            payload = gzip.decompress(data)
        except (OSError, EOFError, zlib.error):
            return op(data, "bytes", draw)
        payload, what = op(payload, "spz", draw)
        return gzip.compress(payload, mtime=0), f"inside gzip: {what}"
    inner.__name__ = f"in_gzip({op.__name__})"
    return inner


def in_zip(data: bytes, kind: str, draw: Draw) -> tuple[bytes, str]:
    """A member of a zip (a SOG bundle, an .npz) mutated as its kind allows, dropped or repeated, then zipped
    again."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            members = [(i.filename, z.read(i)) for i in z.infolist()]
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError, RuntimeError, zlib.error):
        return overwrite(data, "bytes", draw)
    if not members:
        return append(data, "bytes", draw)
    i = draw(st.integers(0, len(members) - 1))
    name, content = members[i]
    how = draw(st.sampled_from(["mutate"] * 8 + ["drop", "repeat"]))
    if how == "drop":
        del members[i]
        what = "drop it"
    elif how == "repeat":
        members.append((name, content))
        what = "repeat it"
    else:
        member_kind = "sog-json" if name.endswith(".json") else "webp" if kind == "sog" else "bytes"
        content, what = draw(st.sampled_from(OPS[member_kind]))(content, member_kind, draw)
        members[i] = (name, content)
    out = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about a repeated name
        with zipfile.ZipFile(out, "w") as z:
            for member, content in members:
                z.writestr(zipfile.ZipInfo(member, date_time=(1980, 1, 1, 0, 0, 0)), content)
    return out.getvalue(), f"zip member {name}: {what}"


BYTE_OPS: tuple[Op, ...] = (truncate, overwrite, flip_bit, delete_span, insert_bytes, append)
OPS: dict[str, tuple[Op, ...]] = {
    "bytes": BYTE_OPS,
    **{f"colmap-bin/{k}": BYTE_OPS + (set_field,) * 4 + (copy_record,) * 2
       for k in ("cameras", "images", "points3D", "rigs", "frames")},
    "colmap-txt": BYTE_OPS + (edit_text,) * 8,
    "json": BYTE_OPS + (edit_json,) * 8,
    "ply": BYTE_OPS + (edit_text,) * 4 + (set_field,) * 3,
    "splat": BYTE_OPS + (set_field,) * 3 + (copy_record,),
    "spz": BYTE_OPS + (set_field,) * 4,
    "spz-gzip": BYTE_OPS + tuple(in_gzip(op) for op in BYTE_OPS + (set_field,) * 4),
    "sog": BYTE_OPS + (in_zip,) * 8,
    "npz": BYTE_OPS + (in_zip,) * 8,  # its members are .npy files: a header of Python literal text, then data
    "sog-json": BYTE_OPS + (edit_json,) * 8,
    "lod-json": BYTE_OPS + (edit_json,) * 8,
    "webp": BYTE_OPS + (set_field,) * 3,
    "compact": BYTE_OPS + (set_field,) * 3,
    "png": BYTE_OPS + (set_field,) * 4 + (copy_record,) * 2,
    "jpeg": BYTE_OPS + (set_field,) * 3,
}


def _tree_edit(tree: Tree, draw: Draw) -> tuple[Tree, str]:
    """A file (or photo) missing, a photo cut short, or a folder where a file should be."""
    names = sorted(tree.files) + sorted(tree.links)
    if not names:
        return tree, "(nothing left to change)"
    name = draw(st.sampled_from(names))
    how = draw(st.sampled_from(["remove", "folder"] + (["cut"] if name in tree.links else [])))
    files, links = dict(tree.files), dict(tree.links)
    files.pop(name, None)
    target = links.pop(name, None)
    if how == "cut":
        at = draw(st.sampled_from([0, 16, 200, 2000]))
        files[name] = Path(target).read_bytes()[:at]
        return replace(tree, files=files, links=links, kinds={**tree.kinds, name: "bytes"}), f"{name}: cut to {at} B"
    folders = tree.folders | {name} if how == "folder" else tree.folders
    return replace(tree, files=files, links=links, folders=folders), f"{name}: {how}"


def _mutate(tree: Tree, draw: Draw) -> tuple[Tree, str]:
    if not tree.files or draw(st.integers(0, 9)) == 0:
        return _tree_edit(tree, draw)
    name = draw(st.sampled_from(sorted(tree.files)))
    op = draw(st.sampled_from(OPS[tree.kinds[name]]))
    data, what = op(tree.files[name], tree.kinds[name], draw)
    return replace(tree, files={**tree.files, name: data}), f"{name}: {what}"


@st.composite
def cases(draw: Draw, reader: str) -> Case:
    """A real seed for `reader` with one to three mutations."""
    seed = draw(st.sampled_from(seeds(reader)))
    tree, steps = seed.tree, []
    for _ in range(draw(st.integers(1, 3))):
        tree, step = _mutate(tree, draw)
        steps.append(step)
    return Case(seed, tree, tuple(steps))


# ------------------------------------------------------------------------------------------------ seeds


def _colmap_subset(model_dir: Path, images: int = 4, points: int = 60) -> Any:
    """A real COLMAP model cut down to its first `images` images (by id), their cameras and poses, and `points`
    of the 3D points that at least two of them see, with those observations."""
    import pycolmap

    full = pycolmap.Reconstruction(str(model_dir))
    keep = sorted(full.images)[:images]
    seen = [p for p in full.points3D.values() if sum(e.image_id in keep for e in p.track.elements) >= 2][:points]
    sub = pycolmap.Reconstruction()
    new_index: dict[tuple[int, int], int] = {}
    for image_id in keep:
        image = full.images[image_id]
        if not sub.exists_camera(image.camera_id):
            sub.add_camera_with_trivial_rig(full.cameras[image.camera_id])
        used = sorted({e.point2D_idx for p in seen for e in p.track.elements if e.image_id == image_id})
        new_index.update({(image_id, old): new for new, old in enumerate(used)})
        points2D = [pycolmap.Point2D(image.points2D[k].xy) for k in used]
        sub.add_image_with_trivial_frame(pycolmap.Image(name=image.name, points2D=points2D,
                                                        camera_id=image.camera_id, image_id=image_id),
                                         image.cam_from_world())
    for p in seen:
        track = pycolmap.Track()
        for e in p.track.elements:
            if e.image_id in keep:
                track.add_element(e.image_id, new_index[(e.image_id, e.point2D_idx)])
        sub.add_point3D(p.xyz, track, p.color)
    return sub


def _colmap_seeds(binary: bool) -> list[Seed]:
    """cup_colmap (SIMPLE_PINHOLE, read at data_factor 4 from its images_4/) and beer_can_colmap (SIMPLE_RADIAL,
    undistorted), each as written by pycolmap (with rigs and frames, COLMAP >= 3.12) and without those two files
    (older COLMAP)."""
    out = []
    for dataset, factor in (("cup_colmap", 4), ("beer_can_colmap", 1)):
        rec = _colmap_subset(SHARED / dataset / "sparse" / "0")
        with tempfile.TemporaryDirectory() as tmp:
            (rec.write_binary if binary else rec.write_text)(tmp)
            model = {p.stem: p.read_bytes() for p in Path(tmp).iterdir()}
        ext = ".bin" if binary else ".txt"
        links = {f"{folder}/{im.name}": str(SHARED / dataset / folder / im.name)
                 for im in rec.images.values() for folder in ["images"] + [f"images_{factor}"] * (factor > 1)}
        for legacy in (False, True):
            names = [n for n in model if not (legacy and n in ("rigs", "frames"))]
            files = {f"sparse/0/{n}{ext}": model[n] for n in names}
            kinds = {f"sparse/0/{n}{ext}": f"colmap-bin/{n}" if binary else "colmap-txt" for n in names}
            name = f"{dataset}{ext}{' (3 files)' if legacy else ''}"
            out.append(Seed(name, "colmap-bin" if binary else "colmap-txt", Tree(files, kinds, links),
                            data_factor=factor))
    return out


def _ply_rows(path: Path, n: int) -> bytes:
    """The first `n` rows of a PLY's vertex element, in the file's own property layout (plyfile writes it)."""
    from plyfile import PlyData, PlyElement

    vertex = PlyData.read(str(path))["vertex"]
    out = io.BytesIO()
    PlyData([PlyElement.describe(vertex.data[:n], "vertex")], byte_order="<").write(out)
    return out.getvalue()


def _transforms_seeds() -> list[Seed]:
    """fox's transforms.json cut to 4 frames (instant-ngp: shared intrinsics with OpenCV distortion), alone and
    with a point cloud (nerfstudio's ply_file_path) cut from mipsplat_donut_sh0's color.ply."""
    fox = SHARED / "fox"
    meta = json.loads((fox / "transforms.json").read_text())
    meta["frames"] = meta["frames"][:4]
    links = {f["file_path"]: str(fox / f["file_path"]) for f in meta["frames"]}
    plain = Tree({"transforms.json": json.dumps(meta, indent=2).encode()}, {"transforms.json": "json"}, links)
    cloud = _ply_rows(SHARED / "mipsplat_donut_sh0" / "color.ply", 200)
    meta["ply_file_path"] = "sparse_pc.ply"
    with_cloud = Tree({"transforms.json": json.dumps(meta, indent=2).encode(), "sparse_pc.ply": cloud},
                      {"transforms.json": "json", "sparse_pc.ply": "ply"}, links)
    return [Seed("fox", "transforms-json", plain), Seed("fox + point cloud", "transforms-json", with_cloud)]


N_SPLATS = 40  # splats kept from a big real file: a few records, the genuine layout


def _file_seed(name: str, reader: str, data: bytes, kind: str) -> Seed:
    return Seed(name, reader, Tree({name: data}, {name: kind}), entry=name)


INRIA_PLY = SHARED / "inria_ply_sh3_9k" / "point_cloud_iter7000.ply"  # SH degree 3, with normals
FIXTURES = SHARED / "splat_transform_fixtures"  # tiny files written by other tools (splat-transform, spz)


def _inria_subset() -> Any:
    """The first splats of the INRIA file as `Gaussians`, for our writers to write."""
    from splatkit.io.ply import load_ply

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "sub.ply"
        path.write_bytes(_ply_rows(INRIA_PLY, N_SPLATS))
        return load_ply(path)


def _written(g: Any, name: str, **options: Any) -> bytes:
    """`g` as our writer writes it."""
    from splatkit.io.formats import write_splats

    with tempfile.TemporaryDirectory() as tmp:
        write_splats(g, Path(tmp) / name, **options)
        return (Path(tmp) / name).read_bytes()


def _compressed_ply_chunks(path: Path, n: int) -> bytes:
    """The first `n` splats of a PlayCanvas compressed.ply and the chunks holding them, as the file has them."""
    from splatkit.io.compressed_ply import CHUNK, parse_ply_header

    data = path.read_bytes()
    header = parse_ply_header(data, path)
    (chunk, vertex), chunks = header.elements, math.ceil(n / CHUNK)
    text = data[:header.body_start]
    for element, count in ((chunk, chunks), (vertex, n)):
        text = text.replace(f"element {element.name} {element.count}\n".encode(),
                            f"element {element.name} {count}\n".encode())
    bounds = header.body_start + chunks * 4 * len(chunk.properties)
    rows = header.body_start + chunk.count * 4 * len(chunk.properties)
    return text + data[header.body_start:bounds] + data[rows:rows + 16 * n]


def _ply_seeds() -> list[Seed]:
    """INRIA layout with normals and SH degree 3, and mip-splatting's without normals at SH degree 0."""
    donut = SHARED / "mipsplat_donut_sh0" / "fused.ply"
    return [_file_seed("point_cloud.ply", "ply", _ply_rows(INRIA_PLY, N_SPLATS), "ply"),
            _file_seed("fused.ply", "ply", _ply_rows(donut, N_SPLATS), "ply")]


def _compressed_ply_seeds() -> list[Seed]:
    """SuperSplat's biker (two chunks, colour bounds, no SH) and ours with an SH element."""
    biker = _compressed_ply_chunks(SHARED / "playcanvas_splats" / "biker.compressed.ply", 300)
    return [_file_seed("biker.compressed.ply", "compressed-ply", biker, "ply"),
            _file_seed("sh3.compressed.ply", "compressed-ply", _written(_inria_subset(), "a.compressed.ply"), "ply")]


def _spz_seeds() -> list[Seed]:
    """biker.spz's first splats as v4 (zstd) and v3 (gzip), SH degree 3 as v3, and splat-transform's fixtures
    (v2, v3, v4 and a raw, un-gzipped payload)."""
    from splatkit.io.spz import GZIP_MAGIC, load_spz

    biker = load_spz(SHARED / "playcanvas_splats" / "biker.spz").subset(np.arange(N_SPLATS))
    files = {"biker-v4.spz": _written(biker, "a.spz", version=4), "biker-v3.spz": _written(biker, "a.spz", version=3),
             "sh3-v3.spz": _written(_inria_subset(), "a.spz"),
             **{name: (FIXTURES / name).read_bytes()
                for name in ("minimal-v2.spz", "minimal-v3.spz", "minimal-v4.spz", "minimal-raw.spz")}}
    return [_file_seed(name, "spz", data, "spz-gzip" if data[:2] == GZIP_MAGIC else "spz")
            for name, data in files.items()]


def _splat_seeds() -> list[Seed]:
    """The INRIA user's own .splat export (its first records) and splat-transform's fixture."""
    model = (SHARED / "inria_ply_sh3_9k" / "model.splat").read_bytes()[:32 * N_SPLATS]
    return [_file_seed("model.splat", "splat", model, "splat"),
            _file_seed("minimal.splat", "splat", (FIXTURES / "minimal.splat").read_bytes(), "splat")]


def _sog_trees() -> dict[str, Tree]:
    """The INRIA file's first splats (SH degree 3) and biker.spz's (degree 0) as our SOG writer writes them,
    bundled (a .sog zip) and unbundled (meta.json and its images)."""
    from splatkit.io.formats import write_splats
    from splatkit.io.spz import load_spz

    biker = load_spz(SHARED / "playcanvas_splats" / "biker.spz").subset(np.arange(N_SPLATS))
    trees = {}
    for label, g in (("sh3", _inria_subset()), ("biker", biker)):
        trees[f"{label}.sog"] = Tree({f"{label}.sog": _written(g, "a.sog")}, {f"{label}.sog": "sog"})
        with tempfile.TemporaryDirectory() as tmp:
            write_splats(g, Path(tmp) / "meta.json")
            files = {p.name: p.read_bytes() for p in Path(tmp).iterdir()}
        trees[f"{label} meta.json"] = Tree(files, {n: "sog-json" if n.endswith(".json") else "webp" for n in files})
    return trees


def _sog_seeds() -> list[Seed]:
    return [Seed(name, "sog", tree, entry=name) for name, tree in _sog_trees().items() if name.endswith(".sog")]


def _sog_meta_seeds() -> list[Seed]:
    return [Seed(name, "sog-meta", tree, entry="meta.json") for name, tree in _sog_trees().items()
            if name.endswith("meta.json")]


def _sog_lod_seeds() -> list[Seed]:
    """The INRIA file's first splats as a streamed SOG of two levels (its even and odd splats): lod-meta.json
    with one leaf (the tree splits above 256 splats), and a chunk per level."""
    import torch

    from splatkit.io.formats import write_splats

    g = _inria_subset()
    g = replace(g, level=1 + torch.arange(len(g)) % 2)
    with tempfile.TemporaryDirectory() as tmp:
        write_splats(g, Path(tmp) / "lod-meta.json")
        files = {p.relative_to(tmp).as_posix(): p.read_bytes() for p in Path(tmp).rglob("*") if p.is_file()}
    kinds = {n: "lod-json" if n == "lod-meta.json" else "sog-json" if n.endswith(".json") else "webp" for n in files}
    return [Seed("two levels", "sog-lod", Tree(files, kinds), entry="lod-meta.json")]


def _compact_seeds() -> list[Seed]:
    """The INRIA file's first splats as a compact file (every attribute on its grid) and as an EAGLES model's
    (trained decoders and latents for SH rest, rotation and opacity)."""
    import torch

    from splatkit.io.compact import save_compact
    from splatkit.train.gaussian_model import GaussianModel
    from splatkit.train.learning_rates import LearningRates
    from splatkit.train.parameterisations import EaglesQuantized

    g = _inria_subset()
    eagles = EaglesQuantized()
    model = GaussianModel(eagles)
    eagles.create(model, g, LearningRates(), scene_extent=1.0)
    with torch.no_grad():
        model.params["shN_latents"].copy_(torch.arange(16 * len(g)).reshape(len(g), 16) % 7 - 3)
    with tempfile.TemporaryDirectory() as tmp:
        save_compact(eagles.quantized(model), Path(tmp) / "a.spkz")
        latent = (Path(tmp) / "a.spkz").read_bytes()
    return [_file_seed("grid.spkz", "compact", _written(g, "a.spkz"), "compact"),
            _file_seed("eagles.spkz", "compact", latent, "compact")]


def _pointmaps_seeds() -> list[Seed]:
    """Four cup_colmap photos with point maps of cup's COLMAP points projected into a 52x39 grid of each (the
    whole photo, as a model would predict it), in splatkit's pointmaps.npz."""
    from splatkit.data.colmap import load_colmap
    from splatkit.data.pointmap_fixtures import projected_pointmaps
    from splatkit.data.pointmaps import write_pointmaps

    source = load_colmap(SHARED / "cup_colmap")
    cameras = source.cameras[:4]
    maps = projected_pointmaps(cameras, source.points, lambda w, h: (52, 39, np.array([0.0, 0.0, w, h])))
    with tempfile.TemporaryDirectory() as tmp:
        write_pointmaps(Path(tmp) / "pointmaps.npz", maps)
        data = (Path(tmp) / "pointmaps.npz").read_bytes()
    links = {f"images/{c.name}": str(c.image_path) for c in cameras}
    return [Seed("cup, 4 views", "pointmaps", Tree({"pointmaps.npz": data}, {"pointmaps.npz": "npz"}, links))]


def _mask_seeds() -> list[Seed]:
    """A real photo (cup_colmap's images_4/1.jpg, which a mask reader must take as RGB) and masks cut from it
    by thresholding, saved by PIL as 8-bit, 1-bit and palette PNGs."""
    from PIL import Image

    photo = SHARED / "cup_colmap" / "images_4" / "1.jpg"
    with Image.open(photo) as im:
        keep = im.convert("L").point(lambda v: 255 if v > 100 else 0)
    out = [_file_seed("photo.jpg", "masks", photo.read_bytes(), "jpeg")]
    for name, mode in (("mask.png", "L"), ("mask-1bit.png", "1"), ("mask-palette.png", "P")):
        buffer = io.BytesIO()
        keep.convert(mode).save(buffer, format="PNG")
        out.append(_file_seed(name, "masks", buffer.getvalue(), "png"))
    return out


SEEDS: dict[str, Callable[[], list[Seed]]] = {
    "colmap-bin": lambda: _colmap_seeds(binary=True), "colmap-txt": lambda: _colmap_seeds(binary=False),
    "transforms-json": _transforms_seeds,
    "ply": _ply_seeds, "compressed-ply": _compressed_ply_seeds, "spz": _spz_seeds, "splat": _splat_seeds,
    "sog": _sog_seeds, "sog-meta": _sog_meta_seeds, "sog-lod": _sog_lod_seeds, "compact": _compact_seeds,
    "masks": _mask_seeds, "pointmaps": _pointmaps_seeds,
}


@cache
def seeds(reader: str) -> tuple[Seed, ...]:
    """The seeds of `reader`, built once per process from ../shared/datasets (which must exist)."""
    return tuple(SEEDS[reader]())
