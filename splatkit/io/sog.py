"""PlayCanvas SOG, "Spatially Ordered Gaussians" (meta.json version 2; 5-20x smaller than the INRIA PLY, the
most for big scenes; loaded by the PlayCanvas engine, SuperSplat and Spark). Spec: developer.playcanvas.com,
user manual, Gaussian splatting, formats, "The SOG Format"; this module follows it as splat-transform writes it
(src/lib/writers/write-sog.ts) and the PlayCanvas engine decodes it (src/scene/gsplat/gsplat-sog-data.js and
the sog shader chunks).

A `meta.json` and lossless WebP images in which pixel i (row-major from the top left) holds splat i. The
splats are sorted in Morton order, so neighbouring pixels hold neighbouring splats and the images compress.
Every per-splat image is W x H with W = 4 ceil(sqrt(N) / 4), H = 4 ceil(N / W / 4); pixels past `count` are
zero and ignored.

- means_l, means_u (RGB): per axis the low and the high byte of a 16-bit code q of v = sign(x) ln(|x| + 1):
  v = mins + (maxs - mins) q / 65535, with `means.mins`, `means.maxs` from meta.json;
- quats (RGBA): smallest-three of the unit quaternion in w, x, y, z order: the quaternion's sign makes its
  largest component positive, that one is dropped and the other three c (|c| <= 1/sqrt 2) are stored in order
  as bytes 255 (c sqrt 2 + 1) / 2; A = 252 + the index (0-3) of the dropped component;
- scales (RGB): per axis a byte indexing `scales.codebook`, 256 log-scales;
- sh0 (RGBA): per colour channel a byte indexing `sh0.codebook`, 256 SH DC coefficients; A = 255 sigmoid(opacity);
- shN_centroids, shN_labels (only with SH degree >= 1): a palette of `shN.count` <= 65536 SH-rest vectors, 64
  per image row, each `coeffs` = (degree + 1)^2 - 1 pixels wide (pixel j: coefficient j, R G B its three colour
  channels as bytes indexing `shN.codebook`, 256 values), and per splat a 16-bit palette index (R low byte, G
  high byte); `shN.bands` is the SH degree (the engine infers it from the palette's width, 64 * coeffs).

Bundled (`.sog`, format "sog"): a zip of meta.json and the images at its root (stored: WebP is compressed
already). Unbundled ("sog-meta"): meta.json with the images beside it, under the names meta.json gives. Axes are
those of the INRIA PLY (splat-transform converts SOG exactly as it does .ply). Lossy by design: positions to 16
bits in log space, scales, colours and SH coefficients to 256-entry codebooks, SH-rest vectors to a k-means
palette. Version 1 files (meta.json without "version": per-channel min/max instead of codebooks) are refused."""

from __future__ import annotations

import io
import json
import math
import struct
import warnings
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Callable

import numpy as np
from PIL import Image

from splatkit import __version__
from splatkit.atomic import atomic_path
from splatkit.errors import SplatkitError, file_error
from splatkit.io._common import (byte_to_opacity, from_smallest_three, gaussians_from_arrays, model_arrays,
                                 opacity_to_byte, read_file, smallest_three, unit_quats, with_sh_degree)
from splatkit.model.gaussians import Gaussians
from splatkit.model.morton import morton_order

ZIP_MAGIC = b"PK\x03\x04"
META = "meta.json"
VERSION = 2
CODEBOOK = 256  # entries of each scalar codebook (one byte indexes it)
ROW = 64  # palette entries per row of shN_centroids
MAX_PALETTE = 1 << 16  # shN labels are 16-bit
QUAT_TAG = 252  # quats alpha = 252 + index of the dropped component
MAX_SIDE = 16383  # WebP's largest width and height
META_LIMIT = 16 << 20  # a meta.json is a few kB of codebooks; anything this big is not one
MAX_DEFLATE_RATIO = 1032  # the most deflate can expand (bounds what a zip member may claim)
# The images of each property, in the order meta.json lists them, with the names splat-transform gives them.
FILES = {"means": ("means_l", "means_u"), "scales": ("scales",), "quats": ("quats",), "sh0": ("sh0",),
         "shN": ("shN_centroids", "shN_labels")}
SH_COEFFS = {1: 3, 2: 8, 3: 15}  # SH-rest coefficients per channel for each degree
# Encoder effort (none of it is in the format): Lloyd iterations of the SH palette's k-means, the most points a
# palette cell fits its centroids on (per centroid; all of them are then assigned), WebP lossless effort.
KMEANS_ITERATIONS = 8
CELLS_PER_ENTRY = 4  # sqrt(4 m) palette cells of sqrt(m / 4) entries: fewer distances in the iterated level
FIT_POINTS_PER_CENTROID = 8
WEBP_QUALITY, WEBP_METHOD = 75, 4
SEED = 0
SMALL_PRODUCT = 1 << 18  # multiply-adds per matrix product (see _nearest)


@dataclass(frozen=True)
class SogMeta:
    """What a version 2 meta.json says, checked: the splat count, the log-space position bounds (3,) each, the
    codebooks (256,) float32, the palette (entries, SH degree, codebook) when there is SH, and each image's
    file name by role (means_l, means_u, quats, scales, sh0[, shN_centroids, shN_labels])."""

    count: int
    mins: np.ndarray
    maxs: np.ndarray
    scales_codebook: np.ndarray
    sh0_codebook: np.ndarray
    palette_count: int
    sh_degree: int
    shN_codebook: np.ndarray | None
    files: dict[str, str]


# ------------------------------------------------------------------------------------------------ reading


def _number(value: Any) -> float | None:
    """A JSON number as a float (an integer too big for one: inf), or None (bools are not numbers here)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return None
    try:
        return float(value)
    except OverflowError:
        return math.inf


def _numbers(entry: dict, key: str, size: int, where: str, path: str | Path) -> np.ndarray:
    """`entry[key]`, a list of `size` finite numbers, rounded to float32 as the engine's shaders see them."""
    values = entry.get(key)
    if not isinstance(values, list) or len(values) != size:
        raise file_error(path, f"meta.json {where}.{key} must be a list of {size} numbers")
    out = [_number(v) for v in values]
    if size == CODEBOOK and values[0] is None and all(v is not None for v in out[1:]):
        # Older splat-transform wrote a NaN first entry (JSON null); the engine extrapolates it the same way.
        out[0] = out[1] + (out[1] - out[-1]) / 255
    if any(v is None or not math.isfinite(v) for v in out):
        raise file_error(path, f"meta.json {where}.{key} holds something other than finite numbers")
    with np.errstate(over="ignore"):  # beyond float32: inf, refused with the decoded values
        return np.array(out, np.float64).astype(np.float32).astype(np.float64)


def _section(meta: dict, key: str, path: str | Path) -> dict:
    entry = meta.get(key)
    if not isinstance(entry, dict):
        raise file_error(path, f"meta.json has no {key!r} object")
    files = entry.get("files")
    roles = FILES[key]
    if not (isinstance(files, list) and len(files) == len(roles) and all(isinstance(f, str) for f in files)):
        raise file_error(path, f"meta.json {key}.files must list {len(roles)} file name(s)")
    for name in files:
        parts = PurePosixPath(name).parts
        if not name or "\0" in name or "\\" in name or name.startswith("/") or ".." in parts or name == META:
            raise file_error(path, f"meta.json {key}.files names {name!r}, not an image file beside meta.json")
    return entry


def parse_meta(data: bytes, path: str | Path) -> SogMeta:
    """Check a meta.json's bytes (from a bundle or a file) and return what it says. Raises SplatkitError naming
    `path` when it is not JSON, not version 2, or any field is missing, of the wrong type or not finite."""
    if len(data) > META_LIMIT:
        raise file_error(path, f"meta.json is {len(data)} B, more than a SOG meta.json can be ({META_LIMIT} B)")
    try:
        meta = json.loads(data)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise file_error(path, f"meta.json is not readable JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise file_error(path, "meta.json is not a JSON object")
    version = meta.get("version")
    if version is None and "means" not in meta:
        raise file_error(path, "not a SOG meta.json (it has neither a version nor means)")
    if version is None:
        raise file_error(path, "SOG version 1 (meta.json without a version) is not supported: re-save it with a "
                               "current splat-transform, which writes version 2")
    if version != VERSION or isinstance(version, bool):
        raise file_error(path, f"SOG version {version!r} is not supported (version {VERSION} is)")
    count = meta.get("count")
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        raise file_error(path, f"meta.json count must be a whole number of splats, not {count!r}")
    if count == 0:
        raise file_error(path, "contains no splats")
    if count > MAX_SIDE * MAX_SIDE:
        raise file_error(path, f"meta.json count {count} is more splats than a {MAX_SIDE}x{MAX_SIDE} image holds")
    sections = {key: _section(meta, key, path) for key in ("means", "scales", "quats", "sh0")}
    files = {role: name for key, entry in sections.items() for role, name in zip(FILES[key], entry["files"])}
    degree, palette, sh_book = 0, 0, None
    if "shN" in meta:
        shN = _section(meta, "shN", path)
        degree, palette = shN.get("bands"), shN.get("count")
        if not isinstance(degree, int) or isinstance(degree, bool) or degree not in SH_COEFFS:
            raise file_error(path, f"meta.json shN.bands must be 1, 2 or 3, not {degree!r}")
        if not isinstance(palette, int) or isinstance(palette, bool) or not 1 <= palette <= MAX_PALETTE:
            raise file_error(path, f"meta.json shN.count must be 1..{MAX_PALETTE} palette entries, not {palette!r}")
        sh_book = _numbers(shN, "codebook", CODEBOOK, "shN", path)
        files.update(zip(FILES["shN"], shN["files"]))
    return SogMeta(count, _numbers(sections["means"], "mins", 3, "means", path),
                   _numbers(sections["means"], "maxs", 3, "means", path),
                   _numbers(sections["scales"], "codebook", CODEBOOK, "scales", path),
                   _numbers(sections["sh0"], "codebook", CODEBOOK, "sh0", path), palette, degree, sh_book, files)


def _decode_image(data: bytes, name: str, path: str | Path, check: Callable[[tuple[int, int]], None]) -> np.ndarray:
    """An image's pixels as (H, W, 4) uint8 RGBA, after `check(size)` has accepted its header's size (so a
    hostile header cannot make us allocate gigabytes). WebP as the spec says, or PNG, which it allows."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # Pillow's decompression-bomb and truncation warnings: refuse those
            with Image.open(io.BytesIO(data), formats=["WEBP", "PNG"]) as im:
                check(im.size)
                if im.mode not in ("RGB", "RGBA"):
                    raise file_error(path, f"{name} is a {im.mode} image, not 8-bit RGB or RGBA")
                return np.asarray(im.convert("RGBA"))
    except SplatkitError:
        raise
    except (OSError, ValueError, SyntaxError, EOFError, struct.error, zlib.error, Image.DecompressionBombError,
            Warning) as exc:
        raise file_error(path, f"{name} is not a readable WebP or PNG image ({exc})") from None


class _Bundle:
    """The members of a `.sog` zip, read on demand with their claimed sizes checked first."""

    def __init__(self, data: bytes, path: str | Path) -> None:
        self.path = path
        try:
            self.zip = zipfile.ZipFile(io.BytesIO(data))
            infos = self.zip.infolist()
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError, struct.error) as exc:
            raise file_error(path, f"not a readable zip archive ({exc})") from None
        names = [i.filename for i in infos]
        self.infos = {i.filename: i for i in infos}
        if len(self.infos) < len(names):
            twice = sorted({n for n in names if names.count(n) > 1})
            raise file_error(path, f"the zip archive holds {twice[0]!r} more than once")
        if META not in self.infos:
            raise file_error(path, "a zip archive without meta.json: not a SOG bundle")

    def read(self, name: str) -> bytes:
        info = self.infos.get(name)
        if info is None:
            raise file_error(self.path, f"meta.json names {name!r}, which the bundle does not hold")
        if info.file_size > max(info.compress_size, 1) * MAX_DEFLATE_RATIO:
            raise file_error(self.path, f"{name} claims {info.file_size} B, more than its {info.compress_size} B "
                                        "can hold")
        try:
            return self.zip.read(info)
        except (zipfile.BadZipFile, NotImplementedError, RuntimeError, OSError, ValueError, EOFError, struct.error,
                zlib.error) as exc:
            raise file_error(self.path, f"cannot read {name} from the zip archive ({exc})") from None


def _read_beside(meta_path: Path, name: str) -> bytes:
    """An unbundled image, named relative to its meta.json."""
    image = meta_path.parent / name
    try:
        if not image.is_file():
            raise file_error(image, "no such file (meta.json names it)")
        return image.read_bytes()
    except OSError as exc:
        raise file_error(image, f"cannot read the file ({exc.strerror or exc})") from None


def read_sog_meta(path: str | Path) -> SogMeta:
    """The checked meta.json of a `.sog` bundle or an unbundled meta.json (the images are not read)."""
    data = read_file(path)
    return parse_meta(_Bundle(data, path).read(META) if data[:4] == ZIP_MAGIC else data, path)


def unbundled_files(path: str | Path) -> list[Path]:
    """An unbundled SOG's files: its meta.json and the images it names, beside it (for copying the model)."""
    path = Path(path)
    meta = parse_meta(read_file(path), path)
    return [path, *dict.fromkeys(path.parent / name for name in meta.files.values())]


def load_sog(path: str | Path) -> Gaussians:
    """Read a SOG, bundled (`.sog`, a zip) or unbundled (meta.json, images beside it), into raw INRIA-form
    Gaussians (float32, the file's splat order, i.e. Morton order): means (N, 3) in the file's (INRIA PLY) axes;
    log-scales (N, 3) and SH DC sh0 (N, 1, 3) from their codebooks; quats (N, 4) unit wxyz; opacity logits (N,)
    from the 8-bit alpha; shN (N, K-1, 3) from the palette, K = (degree + 1)^2.

    Raises SplatkitError, one line naming the file, when the zip, meta.json or an image is unreadable, missing or
    inconsistent (sizes, counts, quaternion tags, palette indices), or a decoded value is not finite."""
    path = Path(path)
    data = read_file(path)
    if data[:4] == ZIP_MAGIC:
        bundle = _Bundle(data, path)
        meta, read = parse_meta(bundle.read(META), path), bundle.read
    else:
        meta, read = parse_meta(data, path), (lambda name: _read_beside(path, name))
    n = meta.count
    size: list[tuple[int, int]] = []

    def per_splat(role: str) -> np.ndarray:
        """The first n pixels of a per-splat image, (n, 4); all of them share one size that holds n pixels."""
        name = meta.files[role]

        def check(wh: tuple[int, int]) -> None:
            if size and wh != size[0]:
                raise file_error(path, f"{name} is {wh[0]}x{wh[1]} but {meta.files['means_l']} is "
                                       f"{size[0][0]}x{size[0][1]}: the per-splat images differ in size")
            if not n <= wh[0] * wh[1] <= 4 * n + 65536:
                raise file_error(path, f"{name} is {wh[0]}x{wh[1]}, which does not fit {n} splats")
            size.append(wh)

        return _decode_image(read(name), name, path, check).reshape(-1, 4)[:n]

    lo, hi = per_splat("means_l").astype(np.int64), per_splat("means_u").astype(np.int64)
    quats, scales, sh0 = per_splat("quats"), per_splat("scales"), per_splat("sh0")
    tags = quats[:, 3].astype(np.int64) - QUAT_TAG
    bad = np.flatnonzero((tags < 0) | (tags > 3))
    if len(bad):
        raise file_error(path, f"{meta.files['quats']}: splat {bad[0]} has alpha {quats[bad[0], 3]}, not a "
                               f"quaternion tag {QUAT_TAG}-{QUAT_TAG + 3}")
    with np.errstate(all="ignore"):  # absurd bounds overflow here; gaussians_from_arrays refuses the result
        v = meta.mins + (meta.maxs - meta.mins) * ((lo[:, :3] | (hi[:, :3] << 8)) / 65535.0)
        means = np.sign(v) * np.expm1(np.abs(v))
    rest = (quats[:, :3] / 255.0 - 0.5) * math.sqrt(2.0)
    shN = np.zeros((n, 0, 3))
    if meta.sh_degree:
        coeffs = SH_COEFFS[meta.sh_degree]
        labels_name, centroids_name = meta.files["shN_labels"], meta.files["shN_centroids"]
        labels = per_splat("shN_labels")
        label = labels[:, 0].astype(np.int64) | (labels[:, 1].astype(np.int64) << 8)

        def check_palette(wh: tuple[int, int]) -> None:
            if wh[0] != ROW * coeffs or wh[1] * ROW < meta.palette_count or wh[1] > MAX_PALETTE // ROW:
                raise file_error(path, f"{centroids_name} is {wh[0]}x{wh[1]}; {meta.palette_count} entries of SH "
                                       f"degree {meta.sh_degree} need {ROW * coeffs} pixels wide and "
                                       f"{math.ceil(meta.palette_count / ROW)} rows")

        centroids = _decode_image(read(centroids_name), centroids_name, path, check_palette)
        bad = np.flatnonzero(label >= meta.palette_count)
        if len(bad):
            raise file_error(path, f"{labels_name}: splat {bad[0]} uses palette entry {label[bad[0]]}, beyond the "
                                   f"{meta.palette_count} that meta.json shN.count gives")
        palette = centroids.reshape(-1, ROW, coeffs, 4)[:, :, :, :3].reshape(-1, coeffs, 3)
        shN = meta.shN_codebook[palette[label]]
    return gaussians_from_arrays(
        path, means,
        scales=meta.scales_codebook[scales[:, :3]],
        quats=from_smallest_three(tags, rest),
        opacities=byte_to_opacity(sh0[:, 3]),
        sh0=meta.sh0_codebook[sh0[:, None, :3]],
        shN=shN,
    )


def is_sog_meta(data: bytes) -> bool:
    """Whether `data` is a SOG meta.json by content: a JSON object with "means" and "quats" objects (versions 1
    and 2 alike; the reader says what else is wrong with it)."""
    if data.lstrip()[:1] != b"{" or len(data) > META_LIMIT:
        return False
    try:
        meta = json.loads(data)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return False
    return isinstance(meta, dict) and isinstance(meta.get("means"), dict) and isinstance(meta.get("quats"), dict)


# ------------------------------------------------------------------------------------------------ writing


def _grid(n: int) -> tuple[int, int]:
    """splat-transform's image size for n splats: both sides multiples of 4, about square."""
    width = 4 * math.ceil(math.sqrt(n) / 4)
    return width, 4 * math.ceil(n / width / 4)


def _f32_list(values: np.ndarray) -> list[float]:
    """float32 values as the shortest decimals that read back as the same float32 (meta.json is JSON text)."""
    return [float(str(v)) for v in np.asarray(values, np.float32)]


def _f32_outward(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float32 bounds enclosing [lo, hi] (so every value lies within what meta.json stores)."""
    lo32, hi32 = lo.astype(np.float32), hi.astype(np.float32)
    lo32 = np.where(lo32 > lo, np.nextafter(lo32, np.float32(-np.inf)), lo32)
    hi32 = np.where(hi32 < hi, np.nextafter(hi32, np.float32(np.inf)), hi32)
    return lo32, hi32


def _lloyd_1d(values: np.ndarray, k: int) -> np.ndarray:
    """k centres for sorted `values` (more than k distinct) by weighted 1D k-means. Each value weighs the square
    root of the spacing of its neighbours, so a cluster weighs about the square root of its count (as in
    splat-transform's quantiser): sparse tails get more entries than least squares alone gives them. Started at
    the high-resolution optimum for that weighting, centres spaced as (value density)^(1/6) (from a histogram),
    then Lloyd's iterations, each O(k log N): a cluster is a run of the sorted values, summed by prefix sums."""
    n = len(values)
    lo, hi = values[0], values[-1]
    reach = max(1, n // CODEBOOK)
    ranks = np.arange(n)
    spacing = values[np.minimum(ranks + reach, n - 1)] - values[np.maximum(ranks - reach, 0)] + (hi - lo) / n
    weights = np.sqrt(spacing)
    w = np.concatenate([[0.0], np.cumsum(weights)])
    wx = np.concatenate([[0.0], np.cumsum(weights * values)])
    wxx = np.concatenate([[0.0], np.cumsum(weights * values * values)])
    counts, edges = np.histogram(values, bins=1024, range=(lo, hi))
    cdf = np.concatenate([[0.0], np.cumsum(counts ** (1 / 6))])
    centres = np.interp((np.arange(k) + 0.5) / k, cdf / cdf[-1], edges)
    for _ in range(500):
        cuts = np.searchsorted(values, 0.5 * (centres[1:] + centres[:-1]))
        start, end = np.concatenate([[0], cuts]), np.concatenate([cuts, [n]])
        weight, moment = w[end] - w[start], wx[end] - wx[start]
        mean = np.where(weight > 0, moment / np.where(weight > 0, weight, 1.0), centres)
        empty = np.flatnonzero(end == start)
        if len(empty):  # move them into the clusters with the largest weighted squared error, to split those
            sse = np.maximum(0.0, wxx[end] - wxx[start] - moment * mean)
            worst = np.argsort(-sse, kind="stable")[:len(empty)]
            mean[empty] = mean[worst] + np.sqrt(sse[worst] / np.where(weight[worst] > 0, weight[worst], 1.0))
        mean.sort()
        if np.array_equal(mean, centres):
            break
        centres = mean
    return centres


def _codebook(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A 256-entry float32 codebook (ascending) for all of `values` and each value's nearest entry, uint8 in the
    shape of `values`. Lossless when there are at most 256 distinct values (they are the codebook, padded)."""
    flat = np.asarray(values, np.float32).ravel()
    distinct = np.unique(flat)
    if len(distinct) <= CODEBOOK:
        book = np.concatenate([distinct, np.full(CODEBOOK - len(distinct), distinct[-1], np.float32)])
    else:
        book = np.sort(_lloyd_1d(np.sort(flat.astype(np.float64)), CODEBOOK).astype(np.float32))
    cuts = 0.5 * (book[1:].astype(np.float64) + book[:-1])  # between neighbours: nearest entry by bisection
    return book, np.searchsorted(cuts, flat.astype(np.float64)).astype(np.uint8).reshape(np.shape(values))


def _nearest(x: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Index of the nearest row of `centres` for each row of `x` (squared Euclidean, float32 arithmetic). In
    blocks of at most 2^18 multiply-adds, which OpenBLAS runs on the calling thread: threads woken for the
    thousands of small products here spin against other work on a busy machine and cost ~10x more."""
    norms = np.einsum("ij,ij->i", centres, centres)
    step = max(1, SMALL_PRODUCT // max(1, centres.size))
    return np.concatenate([np.argmin(norms - 2.0 * (x[i:i + step] @ centres.T), axis=1)
                           for i in range(0, len(x), step)])


def _kmeans(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k centroids of the rows of `x` (float32, len(x) >= k) by Lloyd's iterations from k random rows; an empty
    cluster restarts at the row farthest from its centroid."""
    centres = x[rng.choice(len(x), k, replace=False)].copy()
    for _ in range(KMEANS_ITERATIONS):
        labels = _nearest(x, centres)
        count = np.bincount(labels, minlength=k)
        used = np.flatnonzero(count)
        starts = np.cumsum(count)[used] - count[used]  # where each used cluster's rows begin, sorted by label
        centres[used] = np.add.reduceat(x[np.argsort(labels, kind="stable")], starts, axis=0) / count[used, None]
        if len(used) < k:
            gap = x - centres[labels]
            far = np.argsort(-np.einsum("ij,ij->i", gap, gap), kind="stable")
            centres[np.setdiff1d(np.arange(k), used)] = x[far[:k - len(used)]]
    return centres


def _palette_size(n: int) -> int:
    """splat-transform's palette size: 1024 min(64, 2^floor(log2(n / 1024))) entries, a power of two <= n."""
    return int(1024 * min(64.0, 2.0 ** math.floor(math.log2(n / 1024))))


def _shares(members: np.ndarray, size: int) -> np.ndarray:
    """Palette entries per cell, in proportion to its rows (largest remainder): at least one for a cell with
    rows, never more than its rows, `size` in all (or every row, when there are fewer)."""
    share = members * (size / members.sum())
    counts = np.where(members > 0, np.maximum(np.floor(share), 1), 0).astype(np.int64)
    counts = np.minimum(counts, members)
    for c in np.argsort(-counts, kind="stable"):  # forced ones may overshoot: take back from the largest
        while counts.sum() > size and counts[c] > 1:
            counts[c] -= 1
    for c in np.argsort(-(share - np.floor(share)), kind="stable"):
        if counts.sum() < size and counts[c] < members[c]:
            counts[c] += 1
    return counts


def _sh_palette(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    """The SH-rest palette for rows `x` (n, d): (palette (m, d) float32, each row's entry, each row's cell, each
    entry's cell), m <= `_palette_size(n)`. The distinct rows themselves when there are few enough (exact; no
    cells). Otherwise a two-level k-means, fast enough for millions of splats: ~sqrt(m) coarse cells (k-means on
    a sample), then each cell's rows clustered into its share of the m entries; a row's entry is then the
    nearest among its own cell's entries."""
    n, size = len(x), _palette_size(len(x))
    distinct, inverse = np.unique(x, axis=0, return_inverse=True)
    if len(distinct) <= size:
        return distinct, inverse.reshape(-1), None, None
    rng = np.random.default_rng(SEED)
    cells = math.ceil(math.sqrt(CELLS_PER_ENTRY * size))
    sample = x[rng.choice(n, min(n, 4 * FIT_POINTS_PER_CENTROID * cells), replace=False)]
    cell = _nearest(x, _kmeans(sample, cells, rng))
    counts = _shares(np.bincount(cell, minlength=cells), size)
    palette, labels, owner = [], np.empty(n, np.int64), []
    for c in np.flatnonzero(counts):
        rows = np.flatnonzero(cell == c)
        points, k = x[rows], int(counts[c])
        fit = points if len(points) <= FIT_POINTS_PER_CENTROID * k else \
            points[rng.choice(len(points), FIT_POINTS_PER_CENTROID * k, replace=False)]
        centres = _kmeans(fit, k, rng)
        labels[rows] = sum(map(len, palette)) + _nearest(points, centres)
        palette.append(centres)
        owner.append(np.full(k, c))
    return np.concatenate(palette), labels, cell, np.concatenate(owner)


def _reassign(x: np.ndarray, palette: np.ndarray, labels: np.ndarray, cell: np.ndarray | None,
              owner: np.ndarray | None) -> np.ndarray:
    """Each row's nearest entry of the (quantised) palette among its cell's entries (exact palettes: as is)."""
    if cell is None or owner is None:
        return labels
    out = np.empty_like(labels)
    for c in np.unique(owner):
        rows, entries = np.flatnonzero(cell == c), np.flatnonzero(owner == c)
        out[rows] = entries[_nearest(x[rows], palette[entries])]
    return out


def _webp(pixels: np.ndarray) -> bytes:
    """Lossless WebP of (H, W, 4) RGBA bytes, keeping the RGB of transparent pixels (opacity 0 is data here)."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels)).save(buffer, "WEBP", lossless=True, exact=True,
                                                       quality=WEBP_QUALITY, method=WEBP_METHOD)
    return buffer.getvalue()


def _encode(g: Gaussians, path: str | Path, sh_degree: int | None, prefix: str, *, spatial_order: bool = True
            ) -> tuple[bytes, dict[str, bytes]]:
    """meta.json's bytes and the images' (by file name, each `prefix` + splat-transform's name); the splats
    in Morton order, or in `g`'s order without `spatial_order` (a streamed SOG's chunk addresses its runs)."""
    g = with_sh_degree(g, sh_degree, path)
    a = model_arrays(g, path)
    n = len(a["means"])
    width, height = _grid(n)
    if width > MAX_SIDE or height > MAX_SIDE:
        raise file_error(path, f"{n} splats need {width}x{height} images, beyond WebP's {MAX_SIDE}x{MAX_SIDE}")
    if spatial_order:
        order = morton_order(a["means"].astype(np.float64))
        a = {k: v[order] for k, v in a.items()}
    names = {role: f"{prefix}{role}.webp" for roles in FILES.values() for role in roles}
    images: dict[str, bytes] = {}

    def image(role: str, rgba: np.ndarray) -> None:
        """Pixels for the n splats, (n, 4), zero-padded to the grid."""
        pixels = np.zeros((width * height, 4), np.uint8)
        pixels[:n] = rgba
        images[names[role]] = _webp(pixels.reshape(height, width, 4))

    def rgba(rgb: np.ndarray, alpha: np.ndarray | int = 255) -> np.ndarray:
        return np.concatenate([rgb.astype(np.uint8), np.broadcast_to(np.uint8(alpha), (n,))[:, None]], axis=1)

    p = a["means"].astype(np.float64)
    v = np.sign(p) * np.log1p(np.abs(p))
    mins, maxs = _f32_outward(v.min(axis=0), v.max(axis=0))
    span = maxs.astype(np.float64) - mins
    q = np.rint(np.clip(np.divide(v - mins, span, out=np.zeros_like(v), where=span > 0), 0, 1) * 65535)
    q = q.astype(np.uint16)
    image("means_l", rgba(q & 255))
    image("means_u", rgba(q >> 8))
    idx, rest = smallest_three(unit_quats(a["quats"]))
    image("quats", rgba(np.clip(np.rint((rest * math.sqrt(2.0) + 1.0) * 127.5), 0, 255), QUAT_TAG + idx))
    scales_book, scales = _codebook(a["scales"])
    image("scales", rgba(scales))
    sh0_book, sh0 = _codebook(a["sh0"][:, 0, :])
    image("sh0", rgba(sh0, opacity_to_byte(a["opacities"])))
    meta: dict[str, Any] = {
        "version": VERSION, "asset": {"generator": f"splatkit v{__version__}"}, "count": n,
        "means": {"mins": _f32_list(mins), "maxs": _f32_list(maxs), "files": [names["means_l"], names["means_u"]]},
        "scales": {"codebook": _f32_list(scales_book), "files": [names["scales"]]},
        "quats": {"files": [names["quats"]]},
        "sh0": {"codebook": _f32_list(sh0_book), "files": [names["sh0"]]},
    }
    degree = g.sh_degree
    if degree > 0:
        coeffs = SH_COEFFS[degree]
        x = np.ascontiguousarray(a["shN"].reshape(n, coeffs * 3), np.float32)  # coefficient-major, RGB innermost
        palette, labels, cell, owner = _sh_palette(x)
        sh_book, codes = _codebook(palette)
        labels = _reassign(x, sh_book[codes], labels, cell, owner)
        m = len(palette)
        rows = math.ceil(m / ROW)
        centroids = np.zeros((rows * ROW * coeffs, 4), np.uint8)
        centroids[:m * coeffs, :3] = codes.reshape(m * coeffs, 3)
        centroids[:m * coeffs, 3] = 255
        images[names["shN_centroids"]] = _webp(centroids.reshape(rows, ROW * coeffs, 4))
        image("shN_labels", rgba(np.stack([labels & 255, labels >> 8, np.zeros_like(labels)], axis=1)))
        meta["shN"] = {"count": m, "bands": degree, "codebook": _f32_list(sh_book),
                       "files": [names["shN_centroids"], names["shN_labels"]]}
    return json.dumps(meta, separators=(",", ":")).encode(), images


def save_sog(g: Gaussians, path: str | Path, *, sh_degree: int | None = None) -> None:
    """Write a bundled SOG (a `.sog` zip of meta.json and the WebP images, atomically); `sh_degree` drops SH
    bands (the palette costs ~2 B per splat for labels plus its centroids). Deterministic: the same model gives
    the same bytes. Raises SplatkitError for an empty or non-finite model or one too big for WebP images."""
    meta, images = _encode(g, path, sh_degree, "")
    with atomic_path(path) as tmp:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as z:
            for name, data in [(META, meta), *images.items()]:
                info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
                info.external_attr = 0o644 << 16
                z.writestr(info, data)


def save_sog_meta(g: Gaussians, path: str | Path, *, sh_degree: int | None = None) -> None:
    """Write an unbundled SOG: meta.json at `path` and the WebP images beside it, named as splat-transform names
    them when `path` is `meta.json`, else prefixed by the part of the name before `meta.json` (`scene.meta.json`
    -> `scene.means_l.webp`, ...) so that several can share a folder. Each file is replaced atomically, meta.json
    last; files a previous export wrote and this one does not (SH images) are left alone."""
    write_unbundled(g, path, sh_degree=sh_degree)


def write_unbundled(g: Gaussians, path: str | Path, *, sh_degree: int | None = None, spatial_order: bool = True
                    ) -> None:
    """`save_sog_meta`, optionally keeping `g`'s splat order (`_encode`)."""
    path = Path(path)
    name = path.name
    prefix = name[:-len(META)] if name.lower().endswith(META) else path.stem + "."
    meta, images = _encode(g, path, sh_degree, prefix, spatial_order=spatial_order)
    for image_name, data in [*images.items(), (path.name, meta)]:
        with atomic_path(path.parent / image_name) as tmp:
            tmp.write_bytes(data)
