"""One entry point for every splat file format. Reading goes by content, not extension: a `.ply` may be INRIA
or PlayCanvas-compressed, and an `.spz` may be gzip (v2/v3) or zstd (v4). Writing goes by format name, or by
the extension when no name is given; every writer replaces the target atomically.

Formats: "ply" (INRIA, lossless), "compressed-ply" (PlayCanvas, 16 B/splat), "spz" (Niantic), "splat"
(antimatter15, 32 B/splat, no SH), "sog" (PlayCanvas SOG bundle: a zip of meta.json and WebP images),
"sog-meta" (the same unbundled: a meta.json with its images beside it), "sog-lod" (PlayCanvas streamed SOG:
lod-meta.json and a folder per chunk, every level of detail) and "compact" (splatkit's .spkz: quantized latents,
entropy-coded)."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Callable

from splatkit.errors import SplatkitError, file_error
from splatkit.io._common import check_writable, with_sh_degree
from splatkit.io.compact import MAGIC as COMPACT_MAGIC
from splatkit.io.compact import read_compact, write_compact
from splatkit.io.compressed_ply import (HEADER_LIMIT, is_compressed_header, load_compressed_ply, parse_ply_header,
                                        save_compressed_ply)
from splatkit.io.ply import load_ply, save_ply
from splatkit.io.sog import META_LIMIT, ZIP_MAGIC, is_sog_meta, load_sog, save_sog, save_sog_meta, unbundled_files
from splatkit.io.sog_lod import LIMIT as LOD_META_LIMIT
from splatkit.io.sog_lod import files_of, is_lod_meta, load_sog_lod, save_sog_lod
from splatkit.io.splat import RECORD, load_splat, save_splat
from splatkit.io.spz import GZIP_MAGIC, MAGIC, load_spz, save_spz
from splatkit.model.gaussians import Gaussians


def _save_ply(g: Gaussians, path: str | Path, *, sh_degree: int | None = None) -> None:
    check_writable(g, path)
    save_ply(with_sh_degree(g, sh_degree, path), path)


READERS: dict[str, Callable[[str | Path], Gaussians]] = {
    "compact": read_compact,
    "ply": load_ply, "compressed-ply": load_compressed_ply, "spz": load_spz, "splat": load_splat, "sog": load_sog,
    "sog-meta": load_sog, "sog-lod": load_sog_lod}
WRITERS: dict[str, Callable[..., None]] = {
    "compact": write_compact,
    "ply": _save_ply, "compressed-ply": save_compressed_ply, "spz": save_spz, "splat": save_splat, "sog": save_sog,
    "sog-meta": save_sog_meta, "sog-lod": save_sog_lod}
# Longest first. An unbundled SOG is a meta.json: "scene.meta.json" (images scene.*.webp) or plain "meta.json".
EXTENSIONS = {"lod-meta.json": "sog-lod", ".compressed.ply": "compressed-ply", ".meta.json": "sog-meta",
              "meta.json": "sog-meta",
              ".spkz": "compact", ".ply": "ply", ".spz": "spz", ".splat": "splat", ".sog": "sog"}


def detect_format(path: str | Path) -> str:
    """The format of an existing file, from its magic bytes or PLY header (a zip is a SOG bundle, a JSON object
    with SOG's "means" and "quats" an unbundled SOG's meta.json); `.splat` has no magic, so it is recognised by
    extension and a size that is a whole number of 32-byte records."""
    path = Path(path)
    if path.is_dir():
        raise file_error(path, "is a folder, not a splat file (a run folder's model is its point_cloud.ply)")
    if not path.is_file():
        raise file_error(path, "no such file")
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(HEADER_LIMIT)
    except OSError as exc:
        raise file_error(path, f"cannot read the file ({exc.strerror})") from None
    if head.startswith(b"ply"):
        try:
            return "compressed-ply" if is_compressed_header(parse_ply_header(head, path)) else "ply"
        except SplatkitError:
            return "ply"  # let the INRIA reader say what is wrong with it
    if head[:4] == COMPACT_MAGIC:
        return "compact"
    if head[:2] == GZIP_MAGIC or head[:4] == MAGIC:
        return "spz"
    if head[:4] == ZIP_MAGIC:
        return "sog"  # the reader says so when the zip holds no meta.json
    if head.lstrip()[:1] == b"{" and size <= max(META_LIMIT, LOD_META_LIMIT):
        try:
            text = path.read_bytes()
        except OSError as exc:
            raise file_error(path, f"cannot read the file ({exc.strerror})") from None
        if is_lod_meta(text) or path.name.lower().endswith("lod-meta.json"):  # the reader says what is wrong
            return "sog-lod"
        if is_sog_meta(text) or path.name.lower().endswith("meta.json"):
            return "sog-meta"
    if path.suffix.lower() == ".splat":
        if size == 0 or size % RECORD.itemsize:
            raise file_error(path, f"size {size} B is not a whole number of 32 B .splat records")
        return "splat"
    raise file_error(path, "unrecognised format: not a PLY, SPZ or SOG file by content, nor a .splat by extension")


def format_from_extension(path: str | Path) -> str:
    name = Path(path).name.lower()
    for ext, fmt in EXTENSIONS.items():
        if name.endswith(ext):
            return fmt
    raise file_error(path, f"cannot tell the format from the extension (use {', '.join(EXTENSIONS)}) or name it "
                           "with --format")


def model_files(path: str | Path, fmt: str | None = None) -> list[Path]:
    """Every file a model of format `fmt` (default: detected) consists of: the file itself, plus the images
    beside an unbundled SOG's meta.json, or a streamed SOG's chunks (what to copy or ship)."""
    fmt = fmt or detect_format(path)
    return unbundled_files(path) if fmt == "sog-meta" else files_of(path) if fmt == "sog-lod" else [Path(path)]


def stored_bytes(path: str | Path, fmt: str | None = None) -> int:
    """What a model file of format `fmt` (default: detected) costs to ship: all of `model_files`."""
    return sum(f.stat().st_size for f in model_files(path, fmt))


def read_splats(path: str | Path) -> Gaussians:
    """The Gaussians of a splat file of any format above (raw INRIA form, the file's frame, on the CPU).

    Raises SplatkitError (one line naming the file) when it cannot be read, holds a NaN or infinite value
    (every reader checks), or holds no splats at all: there is nothing to show, convert or export.
    """
    g = READERS[detect_format(path)](path)
    if len(g) == 0:
        raise file_error(path, "holds no splats (an empty model)")
    return g


def write_options(fmt: str) -> list[str]:
    """The keyword options a format's writer takes (e.g. sh_degree, version)."""
    params = inspect.signature(WRITERS[fmt]).parameters.values()
    return [p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY]


def write_splats(g: Gaussians, path: str | Path, format: str | None = None, **options: Any) -> None:
    """Write `g` as `format` (default: from the extension) with that format's `options`."""
    fmt = format or format_from_extension(path)
    if fmt not in WRITERS:
        raise file_error(path, f"unknown format {fmt!r} (known: {', '.join(WRITERS)})")
    unknown = sorted(set(options) - set(write_options(fmt)))
    if unknown:
        takes = ", ".join(write_options(fmt)) or "no options"
        raise file_error(path, f"the {fmt} writer has no option {', '.join(unknown)} (it takes {takes})")
    WRITERS[fmt](g, path, **options)
