"""Niantic `.spz` (~10x smaller than the INRIA PLY; Scaniverse, SuperSplat, Spark, Babylon.js, three.js).

A header (magic "NGSP", version, point count, SH degree, fractional bits, flags) and six planar byte arrays:
positions (24-bit signed fixed point), alphas (sigmoid * 255), colours (SH DC * 0.15 * 255 + 127.5), log-scales
((s + 10) * 16), rotations and SH ((x * 128) + 128, coefficient-major with the colour channel innermost, bucketed
to fewer bits for better compression). Versions: 2 stores rotation xyz as 3 bytes; 3 stores smallest-three
in 32 bits (2-bit index in x,y,z,w order, then sign + 9-bit magnitude per component); versions 1-3 gzip the
whole stream; 4 has a plaintext 32-byte header, a table of contents and one zstd stream per array.

SPZ stores RUB axes (three.js); splatkit and the INRIA PLY use RDF (OpenCV), so y and z flip on the way in and
out: positions, the quaternion's y and z, and the SH coefficients whose basis function is odd in y xor z."""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zstandard

from splatkit.atomic import atomic_path
from splatkit.errors import file_error
from splatkit.io._common import (MAX_SH_DEGREE, byte_to_opacity, from_smallest_three, gaussians_from_arrays,
                                 model_arrays, opacity_to_byte, read_file, smallest_three, unit_quats,
                                 with_sh_degree)
from splatkit.model.gaussians import Gaussians

MAGIC = b"NGSP"
GZIP_MAGIC = b"\x1f\x8b"
LEGACY_HEADER = struct.Struct("<4sIIBBBB")  # magic, version, points, SH degree, fractional bits, flags, reserved
V4_HEADER = struct.Struct("<4sIIBBBBI12x")  # ... flags, stream count, TOC offset, 12 reserved bytes
FLAG_ANTIALIASED, FLAG_EXTENSIONS = 0x1, 0x2
COLOR_SCALE = 0.15  # DC scale: keeps colours a little outside [0, 1] representable
MAX_FRACTIONAL_BITS = 23  # beyond this a 24-bit position cannot even hold +-1
# Largest believable uncompressed/compressed ratios, to reject absurd point counts before decompressing:
# deflate cannot exceed 1032:1; for zstd the spz library uses 1024 (per 9 position bytes).
MAX_DEFLATE_RATIO, MAX_ZSTD_RATIO = 1032, 1024
EXTENSION_SLACK = 1 << 20  # legacy files flagged with extensions may carry this much trailing extension data

FLIP_POSITION = np.array([1.0, -1.0, -1.0])  # RDF <-> RUB
# Sign of each SH basis function (degree 1-3, 3DGS order) under (y, z) -> (-y, -z), as in spz's coordinate converter.
FLIP_SH = np.array([-1, -1, 1, -1, 1, 1, -1, 1, -1, 1, -1, -1, 1, -1, 1], dtype=np.float64)


@dataclass(frozen=True)
class SpzHeader:
    version: int
    num_points: int
    sh_degree: int
    fractional_bits: int
    flags: int

    @property
    def antialiased(self) -> bool:
        """Trained with mip-splatting's antialiasing; viewers that honour it render such splats differently."""
        return bool(self.flags & FLAG_ANTIALIASED)

    @property
    def sh_coeffs(self) -> int:
        return (self.sh_degree + 1) ** 2 - 1

    def array_sizes(self) -> list[int]:
        """Byte sizes of positions, alphas, colours, scales, rotations, SH."""
        n = self.num_points
        return [9 * n, n, 3 * n, 3 * n, (3 if self.version == 2 else 4) * n, 3 * self.sh_coeffs * n]


def _header(fields: tuple, path: str | Path) -> SpzHeader:
    magic, version, n, degree, bits, flags = fields[:6]
    if magic != MAGIC:
        raise file_error(path, "not an SPZ file (no NGSP magic)")
    if version not in (2, 3, 4):
        raise file_error(path, f"SPZ version {version} is not supported (2, 3 and 4 are)")
    if degree > MAX_SH_DEGREE:
        raise file_error(path, f"SH degree {degree} is not supported (at most {MAX_SH_DEGREE})")
    if bits > MAX_FRACTIONAL_BITS:
        raise file_error(path, f"{bits} fractional bits for positions is not plausible (at most {MAX_FRACTIONAL_BITS})")
    if n == 0:
        raise file_error(path, "contains no splats")
    return SpzHeader(version, n, degree, bits, flags)


def _split_legacy(payload: bytes, path: str | Path) -> tuple[SpzHeader, list[bytes]]:
    """The 16-byte header and planar arrays of a (decompressed) version 2/3 stream."""
    if len(payload) < LEGACY_HEADER.size:
        raise file_error(path, "truncated SPZ header")
    h = _header(LEGACY_HEADER.unpack_from(payload), path)
    if h.version == 4:
        raise file_error(path, "SPZ version 4 data must not be gzip-compressed")
    sizes = h.array_sizes()
    body = memoryview(payload)[LEGACY_HEADER.size:]
    if len(body) < sum(sizes):
        raise file_error(path, f"truncated: {h.num_points} splats need {sum(sizes)} B of data, found {len(body)} B")
    if len(body) > sum(sizes) and not h.flags & FLAG_EXTENSIONS:
        raise file_error(path, f"{len(body) - sum(sizes)} B of unexpected data after the splats")
    ends = np.cumsum(sizes)
    return h, [bytes(body[end - size:end]) for size, end in zip(sizes, ends)]


def _gunzip(data: bytes, path: str | Path) -> bytes:
    """Decompress a legacy file, reading its header first so a lying point count cannot make us inflate more
    than the header allows (or more than deflate could produce from this many bytes)."""
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        head = d.decompress(data, LEGACY_HEADER.size)
        if len(head) < LEGACY_HEADER.size:
            raise file_error(path, "truncated gzip stream")
        h = _header(LEGACY_HEADER.unpack_from(head), path)
        need = sum(h.array_sizes())
        if need > len(data) * MAX_DEFLATE_RATIO:
            raise file_error(path, f"header claims {h.num_points} splats, more than a {len(data)} B gzip file can hold")
        allowed = need + (EXTENSION_SLACK if h.flags & FLAG_EXTENSIONS else 0)
        body = d.decompress(d.unconsumed_tail, allowed + 1)
    except zlib.error as exc:
        raise file_error(path, f"corrupt gzip data ({exc})") from None
    if len(body) > allowed:
        raise file_error(path, f"unexpected data after the splats (more than {h.num_points} splats need)")
    if not d.eof:
        raise file_error(path, "truncated gzip stream")
    return head + body


def _unzstd(chunk: bytes, size: int, path: str | Path, index: int) -> bytes:
    """Decompress one v4 stream in bounded pieces, accepting exactly `size` bytes of output."""
    parts, got = [], 0
    try:
        reader = zstandard.ZstdDecompressor().stream_reader(chunk, read_across_frames=True)
        while got <= size:
            part = reader.read(min(1 << 20, size + 1 - got))
            if not part:
                break
            parts.append(part)
            got += len(part)
    except zstandard.ZstdError as exc:
        raise file_error(path, f"corrupt zstd data in stream {index} ({exc})") from None
    if got != size:
        raise file_error(path, f"stream {index} decompresses to {'more than' if got > size else got} B, "
                               f"expected {size} B")
    return b"".join(parts)


def _split_v4(data: bytes, path: str | Path) -> tuple[SpzHeader, list[bytes]]:
    if len(data) < V4_HEADER.size:
        raise file_error(path, "truncated SPZ v4 header")
    fields = V4_HEADER.unpack_from(data)
    h = _header(fields, path)
    streams, toc = fields[6], fields[7]
    if 9 * h.num_points > len(data) * MAX_ZSTD_RATIO:
        raise file_error(path, f"header claims {h.num_points} splats, more than a {len(data)} B file can hold")
    sizes = [s for s in h.array_sizes() if s]  # empty arrays (no SH) get no stream
    if streams != len(sizes):
        raise file_error(path, f"{streams} streams, expected {len(sizes)} for SH degree {h.sh_degree}")
    start = toc + 16 * streams
    if toc < V4_HEADER.size or start > len(data):
        raise file_error(path, f"table of contents at byte {toc} lies outside the file")
    arrays = []
    for i, size in enumerate(sizes):
        compressed, uncompressed = struct.unpack_from("<QQ", data, toc + 16 * i)
        if uncompressed != size:
            raise file_error(path, f"stream {i} holds {uncompressed} B, expected {size} B for {h.num_points} splats")
        if compressed > len(data) - start:
            raise file_error(path, f"stream {i} runs past the end of the file (truncated)")
        arrays.append(_unzstd(data[start:start + compressed], size, path, i))
        start += compressed
    if start != len(data):
        raise file_error(path, f"{len(data) - start} B of unexpected data after the last stream")
    return h, arrays + [b""] * (6 - len(arrays))


def _split(data: bytes, path: str | Path) -> tuple[SpzHeader, list[bytes]]:
    if data[:2] == GZIP_MAGIC:
        return _split_legacy(_gunzip(data, path), path)
    if data[:4] == MAGIC:  # v4, or an uncompressed legacy stream (seen in the wild, e.g. test fixtures)
        return _split_v4(data, path) if data[4:8] == (4).to_bytes(4, "little") else _split_legacy(data, path)
    raise file_error(path, "not an SPZ file (neither gzip nor NGSP magic)")


def read_spz_header(path: str | Path) -> SpzHeader:
    """The header of a valid SPZ file (the whole file is checked)."""
    return _split(read_file(path), path)[0]


def load_spz(path: str | Path) -> Gaussians:
    """Read SPZ version 2, 3 or 4 into RDF axes."""
    h, (pos, alpha, color, scale, rot, sh) = _split(read_file(path), path)
    n = h.num_points
    b = np.frombuffer(pos, np.uint8).reshape(n, 3, 3).astype(np.int32)
    fixed = b[..., 0] | (b[..., 1] << 8) | (b[..., 2] << 16)
    means = ((fixed ^ 0x800000) - 0x800000) / float(2**h.fractional_bits) * FLIP_POSITION  # sign-extend 24 bits
    if h.version == 2:
        xyz = np.frombuffer(rot, np.uint8).reshape(n, 3) / 127.5 - 1.0
        xyzw = np.concatenate([xyz, np.sqrt(np.maximum(0.0, 1.0 - np.sum(xyz * xyz, axis=1)))[:, None]], axis=1)
    else:
        u = np.frombuffer(rot, "<u4").astype(np.int64)
        fields = np.stack([(u >> 20) & 1023, (u >> 10) & 1023, u & 1023], axis=1)
        rest = (fields & 511) / 511.0 * math.sqrt(0.5) * np.where(fields >> 9, -1.0, 1.0)
        xyzw = from_smallest_three(u >> 30, rest)
    quats = xyzw[:, [3, 0, 1, 2]] * np.array([1.0, 1.0, -1.0, -1.0])  # xyzw -> wxyz, RUB -> RDF
    coeffs = h.sh_coeffs
    shN = (np.frombuffer(sh, np.uint8).reshape(n, coeffs, 3) - 128.0) / 128.0 * FLIP_SH[:coeffs, None]
    return gaussians_from_arrays(
        path, means,
        scales=np.frombuffer(scale, np.uint8).reshape(n, 3) / 16.0 - 10.0,
        quats=quats,
        opacities=byte_to_opacity(np.frombuffer(alpha, np.uint8)),
        sh0=((np.frombuffer(color, np.uint8).reshape(n, 1, 3) / 255.0 - 0.5) / COLOR_SCALE),
        shN=shN,
    )


def _fractional_bits(p: np.ndarray, path: str | Path) -> int:
    """12 bits (1/4096 unit), as the spz library writes, or fewer when the scene would overflow 24 bits."""
    reach = float(np.abs(p).max())
    for bits in range(12, -1, -1):
        if round(reach * 2**bits) <= 2**23 - 1:
            return bits
    raise file_error(path, f"positions reach {reach:g}, beyond the +-8388607 that SPZ's 24-bit positions hold")


def _quantise_sh(x: np.ndarray, sh1_bits: int, sh_rest_bits: int) -> np.ndarray:
    """round(x * 128) + 128, then rounded to a multiple of 2^(8 - bits) (so 0 stays exact): `sh1_bits` for the
    degree-1 coefficients, `sh_rest_bits` for the rest. Readers need not know the bits."""
    bits = np.where(np.arange(x.shape[1]) < 3, sh1_bits, sh_rest_bits)[None, :, None]
    bucket = 2 ** (8 - bits)
    q = np.rint(x * 128.0) + 128.0
    return np.clip((q + bucket // 2) // bucket * bucket, 0, 255).astype(np.uint8)


def save_spz(g: Gaussians, path: str | Path, *, version: int = 3, sh_degree: int | None = None,
             antialiased: bool = False, sh1_bits: int = 5, sh_rest_bits: int = 4) -> None:
    """Write SPZ (atomically). Version 3 (gzip) is what most players load; 4 (zstd) is smaller and faster to
    decode but newer. `sh1_bits`/`sh_rest_bits` (1-8) are the precision kept for SH degree 1 and for degrees 2-3
    (the spz library's defaults, 5 and 4, trade SH precision for size); `antialiased` sets the mip-splatting flag."""
    if version not in (3, 4):
        raise file_error(path, f"can write SPZ version 3 or 4, not {version}")
    if not (1 <= sh1_bits <= 8 and 1 <= sh_rest_bits <= 8):
        raise file_error(path, f"SH bits must be 1..8, got sh1_bits={sh1_bits}, sh_rest_bits={sh_rest_bits}")
    g = with_sh_degree(g, sh_degree, path)
    a = model_arrays(g, path)
    n = len(g)
    p = a["means"].astype(np.float64) * FLIP_POSITION
    bits = _fractional_bits(p, path)
    fixed = np.rint(p * 2**bits).astype(np.int64) & 0xFFFFFF
    positions = np.stack([fixed & 255, (fixed >> 8) & 255, fixed >> 16], axis=-1).astype(np.uint8)
    wxyz = unit_quats(a["quats"])
    idx, rest = smallest_three(wxyz[:, [1, 2, 3, 0]] * np.array([1.0, -1.0, -1.0, 1.0]))  # RDF -> RUB, xyzw
    mag = np.minimum(np.floor(np.abs(rest) / math.sqrt(0.5) * 511.0 + 0.5), 511).astype(np.uint32)
    field = ((rest < 0).astype(np.uint32) << 9) | mag
    rotations = (idx.astype(np.uint32) << 30) | (field[:, 0] << 20) | (field[:, 1] << 10) | field[:, 2]
    dc = a["sh0"][:, 0, :].astype(np.float64)
    arrays = [
        positions.tobytes(),
        opacity_to_byte(a["opacities"]).tobytes(),
        np.clip(np.rint(dc * (COLOR_SCALE * 255.0) + 127.5), 0, 255).astype(np.uint8).tobytes(),
        np.clip(np.rint((a["scales"].astype(np.float64) + 10.0) * 16.0), 0, 255).astype(np.uint8).tobytes(),
        rotations.astype("<u4").tobytes(),
        _quantise_sh(a["shN"].astype(np.float64) * FLIP_SH[:a["shN"].shape[1], None], sh1_bits, sh_rest_bits).tobytes(),
    ]
    flags = FLAG_ANTIALIASED if antialiased else 0
    if version == 3:
        payload = LEGACY_HEADER.pack(MAGIC, 3, n, g.sh_degree, bits, flags, 0) + b"".join(arrays)
        out = gzip.compress(payload, compresslevel=6, mtime=0)  # 9 is 2% smaller but 6x slower
    else:
        cctx = zstandard.ZstdCompressor(level=12)  # the spz library's level
        streams = [(cctx.compress(s), len(s)) for s in arrays if s]
        out = b"".join([V4_HEADER.pack(MAGIC, 4, n, g.sh_degree, bits, flags, len(streams), V4_HEADER.size),
                        *[struct.pack("<QQ", len(c), size) for c, size in streams], *[c for c, _ in streams]])
    with atomic_path(path) as tmp:
        tmp.write_bytes(out)
