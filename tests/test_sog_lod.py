"""PlayCanvas streamed SOG (lod-meta.json): the layout the spec ("The Streamed SOG Format", version 1) fixes, levels
surviving a round trip, and one line for a malformed file. The engine loading it is in test_player.py."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from format_bounds import F32, as_np, assert_within, expect_error, random_gaussians
from splatkit.io.formats import detect_format, format_from_extension, model_files, read_splats, write_splats
from splatkit.io.sog import load_sog
from splatkit.io.sog_lod import LEAF_MIN
from splatkit.model.gaussians import Gaussians
from splatkit.render.projection import quat_to_rotmat


def _with_levels(g: Gaussians, seed: int = 0) -> Gaussians:
    """`g` as three levels as FLoD makes them: few coarse splats (0.3%), more at level 2 (20%), most at the top."""
    u = torch.rand(len(g), generator=torch.Generator().manual_seed(seed))
    return Gaussians(g.means, g.scales, g.quats, g.opacities, g.sh0, g.shN, 1 + (u > 0.003).long() + (u > 0.203).long())


def _leaves(node):
    return [leaf for child in node["children"] for leaf in _leaves(child)] if "children" in node else [node]


def _check_bounds(node):
    """Interior bounds are the union of their children's; returns the node's (lo, hi)."""
    lo, hi = np.array(node["bound"]["min"]), np.array(node["bound"]["max"])
    if "children" in node:
        boxes = [_check_bounds(child) for child in node["children"]]
        np.testing.assert_array_equal(lo, np.minimum(*(b[0] for b in boxes)))
        np.testing.assert_array_equal(hi, np.maximum(*(b[1] for b in boxes)))
    return lo, hi


def test_streamed_sog_follows_the_spec_and_keeps_every_level(tmp_path):
    g = _with_levels(random_gaussians(3000, 3, seed=5, spread=6.0))
    path = tmp_path / "lod-meta.json"
    write_splats(g, path, chunk_splats=500, chunk_extent=3.0)
    assert detect_format(path) == format_from_extension(tmp_path / "x" / "lod-meta.json") == "sog-lod"
    meta = json.loads(path.read_text())
    # PlayCanvas counts levels from the finest (lod 0 = our level 3).
    assert meta["version"] == 1 and meta["lodLevels"] == 3 and meta["count"] == 3000
    assert meta["counts"] == [int((g.level == 3 - lod).sum()) for lod in range(3)]
    leaves = _leaves(meta["tree"])
    assert len(leaves) > 1
    _check_bounds(meta["tree"])
    chunks = [load_sog(tmp_path / name) for name in meta["filenames"]]
    runs: dict[int, list[tuple[int, int]]] = {}
    found = []
    for leaf in leaves:
        # Every leaf holds every level: the engine draws nothing where the level a distance asks for is missing.
        assert sorted(leaf["lods"]) == ["0", "1", "2"]
        lo, hi = np.array(leaf["bound"]["min"]), np.array(leaf["bound"]["max"])
        for lod, ref in leaf["lods"].items():
            name = meta["filenames"][ref["file"]]
            assert name.startswith(f"{lod}_") and name.endswith("/meta.json")  # a chunk holds one level
            runs.setdefault(ref["file"], []).append((ref["offset"], ref["count"]))
            part = chunks[ref["file"]].subset(torch.arange(ref["offset"], ref["offset"] + ref["count"]))
            found.append((part, 3 - int(lod), lo, hi))
    for file, spans in runs.items():  # each chunk is its leaves' runs back to back, nothing else
        ends = np.cumsum([0] + [count for _, count in spans])
        assert [offset for offset, _ in spans] == ends[:-1].tolist() and ends[-1] == len(chunks[file])
        assert ends[-1] <= 500 or len(spans) == 1 or ends[-2] <= 500  # a chunk passes 500 by one run at most
    # Each leaf's bound holds the 1-sigma boxes of its splats: the original splat nearest to each decoded one
    # (16-bit positions move a splat by far less than the splats' spacing, checked below) must fit inside.
    back = read_splats(path)
    assert len(back) == 3000 and sorted(torch.bincount(back.level).tolist()) == sorted(torch.bincount(g.level).tolist())
    nearest = torch.cdist(back.means.double(), g.means.double()).argmin(dim=1)
    assert len(set(nearest.tolist())) == 3000
    assert torch.equal(back.level, g.level[nearest])
    half = (quat_to_rotmat(g.quats.double()).abs() * torch.exp(g.scales.double())[:, None, :]).sum(-1)
    start = 0
    for part, level, lo, hi in found:
        rows = nearest[start:start + len(part)]
        start += len(part)
        assert (g.level[rows] == level).all()
        assert (as_np(g.means[rows] - half[rows]) >= lo).all() and (as_np(g.means[rows] + half[rows]) <= hi).all()
    # Positions as SOG stores them: 16 bits of sign(x) log(1 + |x|) over each chunk's range (at most the whole
    # model's, used here).
    x = as_np(g.means[nearest])
    span = max(np.ptp(np.sign(x) * np.log1p(np.abs(x)), axis=0).max(), 1e-9)
    h = span / 65535 / 2
    assert_within(back.means, x, h * np.exp(np.abs(np.sign(x) * np.log1p(np.abs(x))) + h) + 2 * F32 * np.abs(x),
                  "position")


def test_every_file_of_it_is_counted_and_the_name_is_fixed(tmp_path):
    g = random_gaussians(LEAF_MIN * 3, 1, seed=2)  # no levels: one level, lod 0
    path = tmp_path / "lod-meta.json"
    write_splats(g, path, chunk_splats=LEAF_MIN)
    meta = json.loads(path.read_text())
    assert meta["lodLevels"] == 1 and meta["counts"] == [len(g)]
    files = model_files(path)
    assert files[0] == path and all(f.is_file() for f in files)
    assert {f.relative_to(tmp_path).parts[0] for f in files[1:]} == {n.split("/")[0] for n in meta["filenames"]}
    assert (read_splats(path).level == 1).all()
    expect_error(tmp_path / "m.json", "lod-meta.json", reader=lambda p: write_splats(g, p, "sog-lod"))
    # Written again into the same place, with fewer chunks: the old chunks go, nothing else does.
    (tmp_path / "notes.txt").write_text("mine")
    old = set(files)
    write_splats(g.subset(torch.arange(LEAF_MIN)), path)
    assert len(model_files(path)) < len(old) and all(f.is_file() for f in model_files(path))
    assert not any(f.exists() for f in old - set(model_files(path))) and (tmp_path / "notes.txt").is_file()


@pytest.fixture(scope="module")
def valid(tmp_path_factory):
    folder = tmp_path_factory.mktemp("valid")
    write_splats(_with_levels(random_gaussians(600, 1, seed=3)), folder / "lod-meta.json", chunk_splats=300)
    return folder, json.loads((folder / "lod-meta.json").read_text())


def _first_ref(meta):
    return next(iter(_leaves(meta["tree"])[0]["lods"].values()))


@pytest.mark.parametrize("damage, words", [
    (lambda m: "{not json", ["not valid JSON"]),
    (lambda m: {**m, "version": 2}, ["version 2"]),
    (lambda m: {**m, "lodLevels": 0}, ["lodLevels 0"]),
    (lambda m: {**m, "filenames": ["../../etc/meta.json", *m["filenames"][1:]]}, ["not a path inside"]),
    (lambda m: {**m, "filenames": ["9_9/meta.json", *m["filenames"][1:]]}, ["9_9/meta.json is missing"]),
    (lambda m: {**m, "tree": {"lods": {"0": {"file": 99, "offset": 0, "count": 1}}, "bound": {}}}, ["file <"]),
    (lambda m: {**m, "tree": {"lods": {"7": {"file": 0, "offset": 0, "count": 1}}}}, ["lod '7'"]),
    (lambda m: {**m, "tree": {"lods": {"0": {"file": 0, "offset": 10**6, "count": 5}}}}, ["which holds"]),
    (lambda m: {**m, "tree": {"children": []}}, ["children"]),
    (lambda m: {**m, "tree": json.loads('{"children":[' * 70 + '{}' + ']}' * 70)}, ["deeper than"]),
])
def test_malformed_streamed_sog_gets_one_line(tmp_path, valid, damage, words):
    folder, meta = valid
    for name in meta["filenames"]:  # the chunks beside it, so only lod-meta.json is damaged
        for src in model_files(folder / name):
            dst = tmp_path / src.relative_to(folder)
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_bytes(src.read_bytes())
    damaged = damage(json.loads(json.dumps(meta)))
    path = tmp_path / "lod-meta.json"
    path.write_text(damaged if isinstance(damaged, str) else json.dumps(damaged))
    expect_error(path, *words)
