"""splatkit's compact model file (`.spkz`): a `QuantizedGaussians` stored exactly, so it decodes (and renders)
bit for bit as the model it was written from.

Layout, little-endian: magic "SPKZ", a u8 version (1), a u32 header length, a UTF-8 JSON header, then sections
whose byte lengths the header lists in order. The header holds the count, SH degree, the position grid's
bounds, and for each attribute how it is stored:

- positions: the 16-bit grid values (N, 3) in Morton order, split into high and low byte planes and
  zstd-compressed (spatially coherent high bytes compress well; the low bytes are close to noise).
- levels of detail (FLoD models only, header "levels": true): each Gaussian's level as a byte, zstd.
- every other attribute as a latent code (EAGLES' trained decoders, or a uniform grid's diagonal one): the
  decoder (matrix (D, C) and bias (C,) as float32) and the integer latents (N, D), range-coded
  (constriction's queue coder) one column after another, each column with its own empirical
  model: the column's values and their counts are stored (zstd) and the coder uses exactly those frequencies,
  so a column costs its empirical entropy plus a few bytes. Values rarer than 1 in 10,000 (the reference's
  threshold) are coded as one escape symbol and stored apart, losslessly (EAGLES replaces them by the mode and
  keeps them in exception lists; an escape symbol needs no positions).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import constriction
import numpy as np
import torch
import zstandard

from splatkit.atomic import atomic_path
from splatkit.errors import file_error
from splatkit.io._common import check_writable, checked_values, read_file, with_sh_degree
from splatkit.model.gaussians import Gaussians
from splatkit.model.quantized import CODABLE, LatentCode, QuantizedGaussians, quantize

MAGIC = b"SPKZ"
VERSION = 1
PREAMBLE = struct.Struct("<4sBI")
RARE = 1e-4  # values at most this frequent are escaped (EAGLES' threshold)
ZSTD_LEVEL = 12
MAX_HEADER = 1 << 20
MAX_LATENT_DIM = 1024


# ------------------------------------------------------------------ entropy model of one integer column

def column_model(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The coding model of one column of integer latents: (alphabet (S,) int64 of the values kept as symbols,
    counts (S + 1,) int64 with the escape symbol's count last, symbols (N,) int32 indices into counts)."""
    alphabet, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    frequent = counts > RARE * len(values)
    index = np.full(len(alphabet), frequent.sum(), np.int64)  # rare values -> the escape symbol
    index[frequent] = np.arange(frequent.sum())
    escaped = int(counts[~frequent].sum())
    return alphabet[frequent], np.append(counts[frequent], escaped), index[inverse.reshape(-1)].astype(np.int32)


def _categorical(counts: np.ndarray) -> Any:
    return constriction.stream.model.Categorical(counts.astype(np.float64) / counts.sum(), perfect=False)


def encode_latents(latents: np.ndarray) -> tuple[bytes, bytes, bytes]:
    """(N, D) integer latents -> (range-coded symbols, zstd table of every column's alphabet and counts, zstd
    escaped values in column order)."""
    encoder = constriction.stream.queue.RangeEncoder()
    table: list[np.ndarray] = [np.zeros(0, np.int64)]  # a code of width 0 (SH degree 0's rest) has no column
    escaped: list[np.ndarray] = [np.zeros(0, np.int64)]
    for column in latents.T:
        alphabet, counts, symbols = column_model(column)
        table += [np.array([len(alphabet)]), alphabet, counts]
        if len(alphabet):  # a column of escapes only needs no stream
            encoder.encode(symbols, _categorical(counts))
        escaped.append(column[symbols == len(alphabet)])
    compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
    stream = encoder.get_compressed().tobytes()
    return (stream, compressor.compress(np.concatenate(table).astype(np.int64).tobytes()),
            compressor.compress(np.concatenate(escaped).astype(np.int64).tobytes()))


def decode_latents(stream: bytes, table: bytes, escaped: bytes, count: int, dim: int, path: Path) -> np.ndarray:
    """Inverse of `encode_latents` for `count` rows of `dim` columns; one line naming `path` when inconsistent."""
    numbers = np.frombuffer(_unzstd(table, path, limit=16 * (2 * count + 2) * dim), np.int64)
    rare = np.frombuffer(_unzstd(escaped, path, limit=8 * count * dim), np.int64)
    if len(stream) % 4:
        raise file_error(path, "corrupt latent stream (not whole 32-bit words)")
    decoder = constriction.stream.queue.RangeDecoder(np.frombuffer(stream, np.uint32).copy())
    out = np.empty((count, dim), np.int64)
    at = used = 0
    for d in range(dim):
        if at >= len(numbers) or not 0 <= numbers[at] <= count:
            raise file_error(path, f"corrupt latent table (column {d})")
        size = int(numbers[at])
        alphabet, counts = numbers[at + 1:at + 1 + size], numbers[at + 1 + size:at + 2 + 2 * size]
        at += 2 + 2 * size
        if len(counts) != size + 1 or counts.min() < 0 or counts.sum() != count:
            raise file_error(path, f"corrupt latent table (column {d}: counts do not add up to {count})")
        if size:
            try:
                symbols = decoder.decode(_categorical(counts), count).astype(np.int64)
            except BaseException as exc:  # constriction raises its own errors (and panics) on a bad stream
                if isinstance(exc, KeyboardInterrupt):
                    raise
                raise file_error(path, f"corrupt latent stream (column {d})") from None
        else:
            symbols = np.zeros(count, np.int64)
        escapes = symbols == size
        if int(escapes.sum()) != counts[size] or used + counts[size] > len(rare):
            raise file_error(path, f"corrupt latent stream (column {d}: escapes do not match the table)")
        column = np.empty(count, np.int64)
        column[~escapes] = alphabet[symbols[~escapes]]
        column[escapes] = rare[used:used + counts[size]]
        used += int(counts[size])
        out[:, d] = column
    if at != len(numbers) or used != len(rare):
        raise file_error(path, "corrupt latent table (trailing entries)")
    return out


# ------------------------------------------------------------------ byte planes

def _planes(array: np.ndarray) -> bytes:
    """(N, C) array -> its bytes regrouped per column and per byte of the value (most significant first)."""
    as_bytes = np.ascontiguousarray(array).view(np.uint8).reshape(array.shape[0], array.shape[1], -1)
    return np.ascontiguousarray(as_bytes[:, :, ::-1].transpose(1, 2, 0)).tobytes()


def _from_planes(data: bytes, count: int, columns: int, dtype: np.dtype, path: Path) -> np.ndarray:
    width = np.dtype(dtype).itemsize
    if len(data) != count * columns * width:
        raise file_error(path, f"corrupt section: {len(data)} B for {count} x {columns} values of {width} B")
    planes = np.frombuffer(data, np.uint8).reshape(columns, width, count)
    return np.ascontiguousarray(planes.transpose(2, 0, 1)[:, :, ::-1]).view(dtype).reshape(count, columns)


def _unzstd(data: bytes, path: Path, limit: int) -> bytes:
    try:
        return zstandard.ZstdDecompressor().decompress(data, max_output_size=limit)
    except zstandard.ZstdError as exc:
        raise file_error(path, f"corrupt compressed section ({exc})") from None


# ------------------------------------------------------------------ the file

def save_compact(q: QuantizedGaussians, path: str | Path) -> None:
    """Write `q` to `path` atomically (format above). Raises SplatkitError for an empty model."""
    path = Path(path)
    if len(q) == 0:
        raise file_error(path, "nothing to write: the model has no splats")
    compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
    sections: list[bytes] = [compressor.compress(_planes(q.means_grid.numpy().astype(np.uint16)))]
    if q.level is not None:
        sections.append(compressor.compress(q.level.numpy().astype(np.uint8).tobytes()))
    attributes: dict[str, dict] = {}
    for name in CODABLE:
        code = q.attributes[name]
        latents = code.latents.numpy()
        stream, table, escaped = encode_latents(latents.astype(np.int64))
        attributes[name] = {"dim": int(latents.shape[1]), "width": int(code.matrix.shape[1])}
        decoder = np.concatenate([code.matrix.numpy().ravel(), code.bias.numpy()]).astype("<f4")
        sections += [decoder.tobytes(), stream, table, escaped]
    header = json.dumps({"count": len(q), "sh_degree": q.sh_degree, "grid_lo": q.grid_lo.tolist(),
                         "grid_hi": q.grid_hi.tolist(), "attributes": attributes, "levels": q.level is not None,
                         "sections": [len(s) for s in sections]}).encode()
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(PREAMBLE.pack(MAGIC, VERSION, len(header)))
        f.write(header)
        for section in sections:
            f.write(section)


def load_compact(path: str | Path) -> QuantizedGaussians:
    """Read a compact file. Raises SplatkitError (one line naming the file) when it is not one, is truncated,
    from a newer version, or inconsistent."""
    path = Path(path)
    data = read_file(path)
    if len(data) < PREAMBLE.size or data[:4] != MAGIC:
        raise file_error(path, "not a splatkit compact file (no SPKZ magic)")
    _, version, header_size = PREAMBLE.unpack_from(data)
    if version != VERSION:
        raise file_error(path, f"compact file version {version}; this splatkit reads version {VERSION}")
    if header_size > min(MAX_HEADER, len(data) - PREAMBLE.size):
        raise file_error(path, "truncated or corrupt header")
    try:
        header = json.loads(data[PREAMBLE.size:PREAMBLE.size + header_size].decode())
        count, degree, lo, hi, attributes, sizes = (header[k] for k in (
            "count", "sh_degree", "grid_lo", "grid_hi", "attributes", "sections"))
        lo, hi = np.array(lo, np.float64).reshape(3), np.array(hi, np.float64).reshape(3)
        if not (isinstance(count, int) and 0 < count < 1 << 31 and degree in range(4) and
                isinstance(attributes, dict) and set(attributes) == set(CODABLE) and
                isinstance(sizes, list) and all(isinstance(s, int) and s >= 0 for s in sizes)):
            raise ValueError("bad fields")
    except (UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise file_error(path, f"corrupt header ({exc})") from None
    if not (np.isfinite(lo).all() and np.isfinite(hi).all() and (hi >= lo).all()):
        raise file_error(path, "corrupt header (position bounds)")
    body = PREAMBLE.size + header_size
    if body + sum(sizes) != len(data):
        raise file_error(path, f"truncated or padded: sections need {body + sum(sizes)} B, the file has {len(data)}")
    offsets = np.cumsum([body, *sizes])
    sections = iter(data[a:b] for a, b in zip(offsets[:-1], offsets[1:]))

    def section() -> bytes:
        try:
            return next(sections)
        except StopIteration:
            raise file_error(path, "corrupt header (too few sections)") from None

    grid = _from_planes(_unzstd(section(), path, 6 * count), count, 3, np.dtype("<u2"), path)
    level = None
    if header.get("levels") is True:
        level = np.frombuffer(_unzstd(section(), path, count), np.uint8).astype(np.int64)
        if len(level) != count or level.min(initial=1) < 1:
            raise file_error(path, "corrupt levels section (a level per splat, counted from 1)")
    values: dict[str, LatentCode] = {}
    for name in CODABLE:
        spec = attributes[name]
        width = int(np.prod(QuantizedGaussians.row_shape(name, degree), dtype=np.int64))
        if not isinstance(spec, dict) or spec.get("width") != width:
            raise file_error(path, f"corrupt header ({name}: expected {width} values per splat)")
        dim = spec.get("dim")
        if not isinstance(dim, int) or not (1 if width else 0) <= dim <= MAX_LATENT_DIM:
            raise file_error(path, f"corrupt header ({name}: latent size {dim!r})")
        decoder = section()
        if len(decoder) != 4 * (dim + 1) * width:
            raise file_error(path, f"corrupt section ({name} decoder: {len(decoder)} B)")
        weights = np.frombuffer(decoder, "<f4").astype(np.float32)
        latents = decode_latents(section(), section(), section(), count, dim, path)
        if np.abs(latents).max(initial=0) >= 1 << 24:  # beyond float32's exact integers
            raise file_error(path, f"corrupt latents ({name}: values beyond 2^24)")
        values[name] = LatentCode(torch.from_numpy(latents.astype(np.float32)),
                                  torch.from_numpy(weights[:dim * width].reshape(dim, width).copy()),
                                  torch.from_numpy(weights[dim * width:].copy()))
    if next(sections, None) is not None:
        raise file_error(path, "corrupt header (more sections than attributes)")
    return QuantizedGaussians(torch.from_numpy(grid.astype(np.int32)), lo, hi, values, degree,
                              None if level is None else torch.from_numpy(level))


def read_compact(path: str | Path) -> Gaussians:
    """The decoded Gaussians of a compact file (raw, float32, CPU), checked for NaN/inf as every reader does."""
    return checked_values(load_compact(path).decoded(), path)


def write_compact(g: Gaussians, path: str | Path, *, sh_degree: int | None = None) -> None:
    """Any model as a compact file: positions on the 16-bit grid, every other attribute on its `GRID_STEPS` grid
    (a model trained with quantized latents keeps them instead: `save_compact` of its `quantized()`)."""
    check_writable(g, path)
    save_compact(quantize(with_sh_degree(g, sh_degree, path)), path)

