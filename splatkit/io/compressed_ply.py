"""PlayCanvas/SuperSplat `compressed.ply` (16 B per splat, ~15x smaller than the INRIA PLY, loaded by the
PlayCanvas engine, SuperSplat, Spark, Babylon.js, Brush). Splats are sorted in Morton order and cut into chunks
of 256; each chunk stores float min/max bounds and its splats are quantised inside them:

- `chunk` element: min/max of x y z, of the log-scales and (newer files) of the colour 0.5 + SH_C0 * f_dc;
- `vertex` element: packed_position and packed_scale 11/10/11 bits, packed_rotation smallest-three 2+10+10+10
  in (rot_0..rot_3) = w,x,y,z order, packed_color RGBA8 with A = sigmoid(opacity);
- optional `sh` element: f_rest_* as bytes trunc((v/8 + 0.5) * 256), channel-major like the INRIA PLY.

The PlayCanvas engine checks element and property names, order and types exactly, so the writer emits exactly
that layout. Axes as in the INRIA PLY."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from splatkit.atomic import atomic_path
from splatkit.errors import file_error
from splatkit.io._common import (byte_to_opacity, from_smallest_three, gaussians_from_arrays, model_arrays,
                                 opacity_to_byte, read_file, smallest_three, unit_quats, with_sh_degree)
from splatkit.model.gaussians import Gaussians
from splatkit.model.morton import morton_order
from splatkit.model.sh import SH_C0

CHUNK = 256
HEADER_LIMIT = 1 << 16  # a PLY header longer than this is not a splat file
CHUNK_PROPS = ["min_x", "min_y", "min_z", "max_x", "max_y", "max_z",
               "min_scale_x", "min_scale_y", "min_scale_z", "max_scale_x", "max_scale_y", "max_scale_z",
               "min_r", "min_g", "min_b", "max_r", "max_g", "max_b"]
VERTEX_PROPS = ["packed_position", "packed_rotation", "packed_scale", "packed_color"]
SH_BYTES = (9, 24, 45)  # f_rest_* per splat for SH degree 1, 2, 3
SCALE_LIMIT = 20.0  # log-scales are clamped to +-20, as PlayCanvas does (some trained splats hold -inf)


@dataclass
class PlyElement:
    name: str
    count: int
    properties: list[tuple[str, str]]  # (type, name)


@dataclass
class PlyHeader:
    format: str
    elements: list[PlyElement]
    body_start: int


def parse_ply_header(data: bytes, path: str | Path) -> PlyHeader:
    """The element/property structure of a PLY header (any PLY, so detection can tell the layouts apart)."""
    if not data.startswith(b"ply"):
        raise file_error(path, "not a PLY file (no 'ply' magic)")
    end = re.search(rb"(?:^|\n)end_header\r?\n", data[:HEADER_LIMIT])
    if end is None:
        raise file_error(path, f"PLY header has no end_header line in its first {HEADER_LIMIT} bytes")
    try:
        lines = data[:end.start()].decode("ascii").splitlines()
    except UnicodeDecodeError:
        raise file_error(path, "PLY header is not ASCII text") from None
    if lines[0].strip() != "ply":
        raise file_error(path, "not a PLY file (first line is not 'ply')")
    fmt, elements = "", []
    for line in lines[1:]:
        words = line.split()
        if not words or words[0] in ("comment", "obj_info"):
            continue
        if words[0] == "format" and len(words) == 3:
            fmt = words[1]
        elif words[0] == "element" and len(words) == 3 and words[2].isdigit():
            elements.append(PlyElement(words[1], int(words[2]), []))
        elif words[0] == "property" and elements and len(words) >= 3:
            elements[-1].properties.append(("list" if words[1] == "list" else words[1], words[-1]))
        else:
            raise file_error(path, f"unexpected PLY header line {line[:60]!r}")
    return PlyHeader(fmt, elements, end.end())


def is_compressed_header(header: PlyHeader) -> bool:
    return any(e.name == "chunk" for e in header.elements)


def _check_layout(header: PlyHeader, path: str | Path) -> tuple[int, int, int]:
    """Validate the exact PlayCanvas layout; returns (splat count, chunk properties 12 or 18, SH bytes per splat)."""
    if header.format != "binary_little_endian":
        raise file_error(path, f"compressed PLY must be binary_little_endian, not {header.format or 'unspecified'}")
    names = [e.name for e in header.elements]
    if names not in (["chunk", "vertex"], ["chunk", "vertex", "sh"]):
        raise file_error(path, f"compressed PLY needs elements chunk, vertex[, sh]; found {', '.join(names)}")
    chunk, vertex = header.elements[0], header.elements[1]
    if chunk.properties not in ([("float", p) for p in CHUNK_PROPS[:12]], [("float", p) for p in CHUNK_PROPS]):
        raise file_error(path, "chunk element properties are not the 12 or 18 PlayCanvas float bounds in order")
    if vertex.properties != [("uint", p) for p in VERTEX_PROPS]:
        raise file_error(path, f"vertex element properties must be uint {' '.join(VERTEX_PROPS)}")
    n = vertex.count
    if n == 0:
        raise file_error(path, "contains no splats")
    if chunk.count != math.ceil(n / CHUNK):
        raise file_error(path, f"{chunk.count} chunks do not fit {n} splats (expected {math.ceil(n / CHUNK)})")
    sh_bytes = 0
    if len(header.elements) == 3:
        sh = header.elements[2]
        sh_bytes = len(sh.properties)
        if sh_bytes not in SH_BYTES or sh.properties != [("uchar", f"f_rest_{i}") for i in range(sh_bytes)]:
            raise file_error(path, "sh element must be uchar f_rest_0..f_rest_{M-1} with M = 9, 24 or 45")
        if sh.count != n:
            raise file_error(path, f"sh element has {sh.count} rows for {n} splats")
    return n, len(chunk.properties), sh_bytes


def _unpack_11_10_11(u: np.ndarray) -> np.ndarray:
    return np.stack([(u >> 21) / 2047.0, ((u >> 11) & 1023) / 1023.0, (u & 2047) / 2047.0], axis=1)


def load_compressed_ply(path: str | Path) -> Gaussians:
    data = read_file(path)
    header = parse_ply_header(data, path)
    n, n_props, sh_bytes = _check_layout(header, path)
    chunks = math.ceil(n / CHUNK)
    expected = header.body_start + chunks * n_props * 4 + n * 16 + n * sh_bytes
    if len(data) != expected:
        raise file_error(path, f"file is {len(data)} B but its header describes {expected} B (truncated or corrupt)")
    offset = header.body_start
    with np.errstate(invalid="ignore"):  # signalling-NaN bits would warn; they are rejected just below
        bounds = np.frombuffer(data, "<f4", chunks * n_props, offset).reshape(chunks, n_props).astype(np.float64)
    if not np.isfinite(bounds).all():
        raise file_error(path, "chunk bounds contain NaN or infinite values")
    offset += chunks * n_props * 4
    packed = np.frombuffer(data, "<u4", n * 4, offset).reshape(n, 4)
    offset += n * 16
    chunk_of = np.arange(n) // CHUNK

    def lerp(column: int, t: np.ndarray) -> np.ndarray:
        """Between each splat's chunk minimum (3 columns from `column`) and maximum (the 3 after those)."""
        return bounds[chunk_of, column:column + 3] * (1.0 - t) + bounds[chunk_of, column + 3:column + 6] * t

    means = lerp(0, _unpack_11_10_11(packed[:, 0]))
    scales = lerp(6, _unpack_11_10_11(packed[:, 2]))
    color = packed[:, 3]
    rgb = np.stack([color >> 24, (color >> 16) & 255, (color >> 8) & 255], axis=1) / 255.0
    if n_props == 18:
        rgb = lerp(12, rgb)
    rot = packed[:, 1]
    rest = np.stack([(rot >> 20) & 1023, (rot >> 10) & 1023, rot & 1023], axis=1) / 1023.0
    quats = from_smallest_three(rot >> 30, (rest - 0.5) * math.sqrt(2.0))
    coeffs = sh_bytes // 3
    sh = np.frombuffer(data, np.uint8, n * sh_bytes, offset).reshape(n, 3, coeffs)
    shN = ((sh.transpose(0, 2, 1) + 0.5) / 256.0 - 0.5) * 8.0  # bucket centres; channel-major -> (N, K-1, 3)
    return gaussians_from_arrays(path, means, scales, quats, byte_to_opacity(color & 255),
                                 ((rgb - 0.5) / SH_C0)[:, None, :], shN)


def _quantise(v: np.ndarray, lo: np.ndarray, hi: np.ndarray, bits: int) -> np.ndarray:
    """packUnorm((v - lo) / (hi - lo)): v (C, 256, k) within per-chunk bounds lo, hi (C, 1, k)."""
    span = hi - lo
    t = np.divide(v - lo, span, out=np.zeros_like(v), where=span > 0)
    return np.clip(np.floor(np.clip(t, 0.0, 1.0) * (2**bits - 1) + 0.5), 0, 2**bits - 1).astype(np.uint32)


def save_compressed_ply(g: Gaussians, path: str | Path, *, sh_degree: int | None = None) -> None:
    """Write a PlayCanvas compressed PLY (atomically); `sh_degree` drops SH bands (the SH element costs 9-45
    B per splat on top of the 16)."""
    a = model_arrays(with_sh_degree(g, sh_degree, path), path)
    n = len(a["means"])
    chunks = math.ceil(n / CHUNK)
    order = morton_order(a["means"].astype(np.float64))
    # Pad the last chunk with copies of the last splat: they take part in the bounds only.
    padded = order[np.minimum(np.arange(chunks * CHUNK), n - 1)].reshape(chunks, CHUNK)

    def chunked(v: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Values per chunk and the chunk's bounds, rounded to the float32 that the file stores."""
        v = v[padded].astype(np.float64)
        lo, hi = v.min(axis=1, keepdims=True), v.max(axis=1, keepdims=True)
        return v, lo.astype(np.float32).astype(np.float64), hi.astype(np.float32).astype(np.float64)

    pos, pos_lo, pos_hi = chunked(a["means"])
    scl, scl_lo, scl_hi = chunked(np.clip(a["scales"], -SCALE_LIMIT, SCALE_LIMIT))
    rgb, rgb_lo, rgb_hi = chunked(0.5 + SH_C0 * a["sh0"][:, 0, :].astype(np.float64))

    def pack_11_10_11(v: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        return ((_quantise(v[..., :1], lo[..., :1], hi[..., :1], 11) << 21)
                | (_quantise(v[..., 1:2], lo[..., 1:2], hi[..., 1:2], 10) << 11)
                | _quantise(v[..., 2:], lo[..., 2:], hi[..., 2:], 11))[..., 0]

    c = _quantise(rgb, rgb_lo, rgb_hi, 8)
    alpha = opacity_to_byte(a["opacities"][padded]).astype(np.uint32)
    idx, rest = smallest_three(unit_quats(a["quats"][padded.reshape(-1)]))
    r = np.clip(np.floor((rest * (math.sqrt(2.0) / 2.0) + 0.5) * 1023.0 + 0.5), 0, 1023).astype(np.uint32)
    vertex = np.stack([
        pack_11_10_11(pos, pos_lo, pos_hi),
        ((idx.astype(np.uint32) << 30) | (r[:, 0] << 20) | (r[:, 1] << 10) | r[:, 2]).reshape(chunks, CHUNK),
        pack_11_10_11(scl, scl_lo, scl_hi),
        (c[..., 0] << 24) | (c[..., 1] << 16) | (c[..., 2] << 8) | alpha,
    ], axis=-1).reshape(-1, 4)[:n]
    bounds = np.concatenate([pos_lo, pos_hi, scl_lo, scl_hi, rgb_lo, rgb_hi], axis=-1)[:, 0, :]

    rest_sh = a["shN"][order].transpose(0, 2, 1).reshape(n, -1)  # channel-major, as the INRIA PLY
    sh = np.clip(np.floor((rest_sh.astype(np.float64) / 8.0 + 0.5) * 256.0), 0, 255).astype(np.uint8)
    lines = ["ply", "format binary_little_endian 1.0", "comment Generated by splatkit", f"element chunk {chunks}",
             *[f"property float {p}" for p in CHUNK_PROPS], f"element vertex {n}",
             *[f"property uint {p}" for p in VERTEX_PROPS]]
    if sh.shape[1]:
        lines += [f"element sh {n}", *[f"property uchar f_rest_{i}" for i in range(sh.shape[1])]]
    header = ("\n".join(lines) + "\nend_header\n").encode("ascii")
    with atomic_path(path) as tmp:
        tmp.write_bytes(header + bounds.astype("<f4").tobytes() + vertex.astype("<u4").tobytes() + sh.tobytes())
