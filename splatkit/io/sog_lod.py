"""PlayCanvas streamed SOG (`lod-meta.json`): levels of detail that a web player streams region by region, as
PlayCanvas's splat-transform writes them and its engine (2.11 and later) loads them. Spec: PlayCanvas developer
docs, "The Streamed SOG Format", version 1; writer `playcanvas/splat-transform` src/lib/writers/write-lod.ts.

`lod-meta.json` holds a binary tree over space. An interior node splits its splats (of every level together)
at the median of the longest side of their centres' box; a leaf lists, for each level it holds, one run
{file, offset, count} of splats in a chunk. Every node has a `bound`: for a leaf the box around each splat's
1-sigma ellipsoid, for an interior node the union of its children's. Chunks are unbundled SOGs (meta.json and
WebP images, `<lod>_<k>/meta.json`), each holding one level: the runs of successive leaves, each run in Morton
order, a new chunk once one passes `chunk_splats`.

PlayCanvas numbers levels from the finest (0); splatkit's FLoD levels count up from the coarsest (1), so a
model with levels 1..L is stored as lods L-1..0. The engine draws nothing in a region whose leaf lacks the level
its distance asks for, so a node is split only while both halves keep every level it holds. A model without
levels is one level (lod 0).
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch

from splatkit import __version__
from splatkit.atomic import atomic_path, make_folder
from splatkit.errors import SplatkitError, file_error
from splatkit.io._common import check_writable, read_file
from splatkit.io.sog import load_sog, unbundled_files, write_unbundled
from splatkit.model.gaussians import Gaussians
from splatkit.model.morton import morton_order
from splatkit.render.projection import quat_to_rotmat

FILE_NAME = "lod-meta.json"  # the engine recognises a streamed SOG by this exact name
VERSION = 1
CHUNK_SPLATS = 512 * 1024  # splat-transform's --lod-chunk-count 512 (thousands of splats per chunk and leaf)
CHUNK_EXTENT = 16.0  # its --lod-chunk-extent: a leaf wider than this (in the file's units) is split
LEAF_MIN = 256  # its tree stops splitting at this many splats
MAX_DEPTH = 64  # a reader refuses deeper trees (a median split of 2^64 splats is not a real file)
LIMIT = 64 << 20  # bytes of lod-meta.json a reader accepts (5.5M splats take ~270 kB)


def is_lod_meta(data: bytes) -> bool:
    """Whether `data` is a streamed SOG's lod-meta.json by content: a JSON object with "lodLevels" and "tree"."""
    try:
        meta = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return False
    return isinstance(meta, dict) and "lodLevels" in meta and "tree" in meta


def _lods(g: Gaussians) -> np.ndarray:
    """(N,) each splat's PlayCanvas lod: 0 for the finest level present, counting up to the coarsest."""
    if g.level is None:
        return np.zeros(len(g), np.int64)
    levels = g.level.cpu().numpy()
    present = np.unique(levels)[::-1]  # finest first
    return np.searchsorted(-present, -levels)


def _boxes(g: Gaussians) -> tuple[np.ndarray, np.ndarray]:
    """Each splat's box around its 1-sigma ellipsoid (lo, hi), (N, 3) float64: mean -/+ |R| exp(scales)."""
    rot = quat_to_rotmat(g.quats.double())
    half = (rot.abs() * torch.exp(g.scales.double())[:, None, :]).sum(dim=-1)
    means = g.means.double()
    return (means - half).numpy(), (means + half).numpy()


def _bound(lo: np.ndarray, hi: np.ndarray) -> dict[str, list[float]]:
    """A JSON box with 7 significant digits, as splat-transform writes it (rounded outward, so it still holds)."""
    def digits(values: np.ndarray, outward: float) -> list[float]:
        out = []
        for v in values.tolist():
            r = float(f"{v:.7g}")
            if (r - v) * outward < 0:  # 7 digits are 1e-7..1e-6 apart (relative): a step of 1e-6 gets past v
                r = float(f"{v + outward * abs(v) * 1e-6:.7g}")
            out.append(r)
        return out
    return {"min": digits(lo, -1.0), "max": digits(hi, 1.0)}


class _Writer:
    """Builds the tree and the chunks' contents (splat indices per chunk) in one depth-first pass."""

    def __init__(self, means: np.ndarray, lods: np.ndarray, boxes: tuple[np.ndarray, np.ndarray],
                 chunk_splats: int, chunk_extent: float) -> None:
        self.means, self.lods, (self.lo, self.hi) = means, lods, boxes
        self.chunk_splats, self.chunk_extent = chunk_splats, chunk_extent
        self.filenames: list[str] = []
        self.chunks: list[list[np.ndarray]] = []  # per file: its runs of splat indices
        self.open_file: dict[int, int] = {}  # lod -> index of its chunk being filled
        self.filled: dict[int, int] = {}  # file -> splats in it so far
        self.per_lod: dict[int, int] = {}  # lod -> chunks opened for it (the k of `<lod>_<k>`)

    def node(self, idx: np.ndarray) -> dict[str, Any]:
        centres = self.means[idx]
        extent = centres.max(axis=0) - centres.min(axis=0)
        if len(idx) > LEAF_MIN and (len(idx) > self.chunk_splats or extent.max() > self.chunk_extent):
            order = np.argsort(centres[:, int(np.argmax(extent))], kind="stable")
            halves = idx[order[:len(idx) // 2]], idx[order[len(idx) // 2:]]
            held = set(np.unique(self.lods[idx]).tolist())
            if all(set(np.unique(self.lods[h]).tolist()) == held for h in halves):
                children = [self.node(h) for h in halves]
                lo = np.minimum(*(np.array(c["bound"]["min"]) for c in children))
                hi = np.maximum(*(np.array(c["bound"]["max"]) for c in children))
                return {"bound": {"min": lo.tolist(), "max": hi.tolist()}, "children": children}
        return {"bound": _bound(self.lo[idx].min(axis=0), self.hi[idx].max(axis=0)), "lods": self.leaf(idx)}

    def leaf(self, idx: np.ndarray) -> dict[str, dict[str, int]]:
        refs = {}
        for lod in np.unique(self.lods[idx]).tolist():
            run = idx[self.lods[idx] == lod]
            run = run[morton_order(self.means[run])]
            file = self.open_file.get(lod)
            if file is None or (self.filled[file] and self.filled[file] + len(run) > self.chunk_splats):
                file = self.open_file[lod] = len(self.filenames)
                self.per_lod[lod] = self.per_lod.get(lod, -1) + 1
                self.filenames.append(f"{lod}_{self.per_lod[lod]}/meta.json")
                self.chunks.append([])
                self.filled[file] = 0
            refs[str(lod)] = {"file": file, "offset": self.filled[file], "count": len(run)}
            self.chunks[file].append(run)
            self.filled[file] += len(run)
        return refs


def save_sog_lod(g: Gaussians, path: str | Path, *, sh_degree: int | None = None,
                 chunk_splats: int = CHUNK_SPLATS, chunk_extent: float = CHUNK_EXTENT) -> None:
    """Write a streamed SOG: `path` (named lod-meta.json, which is how the engine recognises it) and its chunks
    in folders beside it. `g`: raw INRIA-form Gaussians in the file's frame, with `level` (FLoD) or without;
    `sh_degree` drops SH bands; `chunk_splats` / `chunk_extent` (file units) bound a leaf's splats and width
    (splat-transform's defaults). Chunks are written first and lod-meta.json last, each file atomically.

    Raises SplatkitError for another file name, an empty or non-finite model, or a chunk too big for WebP."""
    path = Path(path)
    if path.name != FILE_NAME:
        raise file_error(path, f"a streamed SOG must be named {FILE_NAME} (the engine recognises it by name)")
    if path.is_dir():
        raise file_error(path, "is a folder; give the path of the lod-meta.json to write")
    check_writable(g, path)
    previous = _previous_files(path)
    g = g.detach().to("cpu")
    lods = _lods(g)
    writer = _Writer(g.means.double().numpy(), lods, _boxes(g), chunk_splats, chunk_extent)
    tree = writer.node(np.arange(len(g)))
    for name, runs in zip(writer.filenames, writer.chunks):
        chunk = path.parent / name
        make_folder(chunk.parent)
        write_unbundled(g.subset(torch.from_numpy(np.concatenate(runs))), chunk, sh_degree=sh_degree,
                        spatial_order=False)
    counts = np.bincount(lods, minlength=int(lods.max()) + 1).tolist()
    meta = {"version": VERSION, "asset": {"generator": f"splatkit v{__version__}"}, "count": len(g),
            "counts": counts, "lodLevels": len(counts), "filenames": writer.filenames, "tree": tree}
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(meta, separators=(",", ":")))
    _remove_stale(previous, set(files_of(path)))


def _previous_files(path: Path) -> list[Path]:
    """The files of the streamed SOG `path` holds now, if it holds a readable one (replaced by this write)."""
    try:
        return files_of(path) if path.is_file() else []
    except SplatkitError:
        return []


def _remove_stale(previous: list[Path], kept: set[Path]) -> None:
    """Delete the chunk files the replaced lod-meta.json named and the new one does not (and their emptied
    folders), so a folder exported into twice holds one streamed SOG; nothing else is touched."""
    for stale in (p for p in previous if p not in kept):
        stale.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            stale.parent.rmdir()  # only when empty


# ---------------------------------------------------------------------------------------------- reading

def _parse(path: Path) -> dict[str, Any]:
    data = read_file(path)
    if len(data) > LIMIT:
        raise file_error(path, f"{len(data):,} B is too big for a {FILE_NAME}")
    try:
        meta = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise file_error(path, f"is not valid JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise file_error(path, "is not a JSON object")
    if meta.get("version", VERSION) != VERSION:
        raise file_error(path, f"streamed SOG version {meta.get('version')!r}; this reader knows {VERSION}")
    levels, names = meta.get("lodLevels"), meta.get("filenames")
    if not isinstance(levels, int) or isinstance(levels, bool) or not 0 < levels <= 255:
        raise file_error(path, f"lodLevels {levels!r} is not a whole number 1..255")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise file_error(path, "filenames is not a list of file names")
    for name in names:
        parts = PurePosixPath(name).parts
        if not parts or PurePosixPath(name).is_absolute() or ".." in parts or "\\" in name:
            raise file_error(path, f"chunk {name!r} is not a path inside the streamed SOG's folder")
    return meta


def _leaves(node: Any, path: Path, levels: int, files: int, depth: int = 0) -> list[dict[str, dict[str, int]]]:
    """The leaves' `lods` in depth-first order, each checked."""
    if depth > MAX_DEPTH or not isinstance(node, dict):
        raise file_error(path, "tree is not a tree of node objects" if depth <= MAX_DEPTH else
                               f"tree is deeper than {MAX_DEPTH} levels")
    if "children" in node:
        children = node["children"]
        if not isinstance(children, list) or not children:
            raise file_error(path, "a tree node's children is not a list of nodes")
        return [leaf for child in children for leaf in _leaves(child, path, levels, files, depth + 1)]
    lods = node.get("lods")
    if not isinstance(lods, dict):
        raise file_error(path, "a tree leaf has no lods object")
    for key, ref in lods.items():
        if not key.isdigit() or int(key) >= levels:
            raise file_error(path, f"a leaf names lod {key!r}, outside 0..{levels - 1}")
        fields = [ref.get(k) if isinstance(ref, dict) else None for k in ("file", "offset", "count")]
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in fields) or fields[0] >= files:
            raise file_error(path, f"lod {key} of a leaf is not {{file < {files}, offset >= 0, count >= 0}}: {ref!r}")
    return [lods]


def load_sog_lod(path: str | Path) -> Gaussians:
    """Read a streamed SOG (lod-meta.json and its chunks) into raw INRIA-form Gaussians in the leaves' order,
    each with `level` = lodLevels - lod (1 coarsest, as FLoD's levels). Splats no leaf names are left out, as
    the engine leaves them.

    Raises SplatkitError, one line naming the file, for bad JSON, an unknown version, a malformed tree or
    reference, a chunk path outside the folder, a run beyond its chunk, or any chunk the SOG reader refuses."""
    path = Path(path)
    meta = _parse(path)
    levels, names = meta["lodLevels"], meta["filenames"]
    leaves = _leaves(meta.get("tree"), path, levels, len(names))
    chunks: dict[int, Gaussians] = {}
    parts, level_parts = [], []
    for leaf in leaves:
        for key, ref in leaf.items():
            if ref["count"] == 0:
                continue
            file = ref["file"]
            if file not in chunks:
                chunk_path = path.parent / names[file]
                if not chunk_path.is_file():
                    raise file_error(path, f"chunk {names[file]} is missing")
                chunks[file] = load_sog(chunk_path)
            end = ref["offset"] + ref["count"]
            if end > len(chunks[file]):
                raise file_error(path, f"lod {key} of a leaf reads splats {ref['offset']}..{end - 1} of "
                                       f"{names[file]}, which holds {len(chunks[file])}")
            parts.append(chunks[file].subset(torch.arange(ref["offset"], end)))
            level_parts.append(torch.full((ref["count"],), levels - int(key), dtype=torch.int64))
    if not parts:
        raise file_error(path, "holds no splats (an empty model)")
    fields = [part.as_dict() for part in parts]
    return Gaussians.from_dict({**{k: torch.cat([f[k] for f in fields]) for k in fields[0] if k != "level"},
                                "level": torch.cat(level_parts)})


def files_of(path: str | Path) -> list[Path]:
    """A streamed SOG's files: lod-meta.json and each chunk's meta.json and images (for copying or sizing)."""
    path = Path(path)
    names = _parse(path)["filenames"]
    out = [path]
    for name in names:
        out += unbundled_files(path.parent / name)
    return list(dict.fromkeys(out))
