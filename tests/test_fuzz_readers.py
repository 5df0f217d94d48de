"""Every scene and splat reader answers malformed input with one line naming the file, never a traceback, a native
crash, a hang or unbounded memory: hypothesis mutates real seeds (tests/fuzz_harness.py) and each case runs in a
worker process under a memory and time limit. A failure is shrunk to its fewest mutations and shown as
`Case(seed=..., steps=[...])`. scripts/fuzz_readers.py runs the same harness at 10,000+ cases per reader."""

from __future__ import annotations

import io
import json
import math
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings

import fuzz_harness as fh

EXAMPLES = 500  # per reader


@pytest.fixture(scope="module")
def runner(shared_datasets) -> Iterator[fh.Runner]:
    assert shared_datasets == fh.SHARED
    r = fh.Runner(jobs=1)
    yield r
    r.close()


@pytest.mark.parametrize("reader", fh.available_readers())
def test_reader_survives_fuzzing(runner: fh.Runner, reader: str) -> None:
    for seed in fh.seeds(reader):  # unmutated, every seed loads: otherwise the mutations test little
        outcome = runner.run(fh.Case(seed, seed.tree, ()))
        assert outcome.kind == "accepted", (seed.name, outcome)

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(case=fh.cases(reader))
    def survives(case: fh.Case) -> None:
        outcome = runner.run(case)
        assert outcome.kind != "crash", outcome.detail

    survives()


def test_harness_reports_native_deaths_hangs_and_unclear_errors() -> None:
    """The harness itself: a worker killed by a signal, a case past its time limit and an error message that
    is not one line naming a file each count as a crash, and the runner carries on with a fresh worker."""
    probe = fh.Seed("probe", "probe", fh.Tree({}, {}))
    r = fh.Runner(jobs=1, timeout=3.0)
    try:
        for behaviour, words in [("abort", "killed by signal 6"), ("hang", "hang"), ("unclear", "unclear error"),
                                 ("memory", "MemoryError"), ("ok", "")]:
            outcome = r.run(fh.Case(probe, fh.Tree({"behaviour": behaviour.encode()}, {"behaviour": "bytes"}), ()))
            assert outcome.kind == ("accepted" if behaviour == "ok" else "crash"), (behaviour, outcome)
            assert words in outcome.detail, (behaviour, outcome)
    finally:
        r.close()


# ---------------------------------------------------------------- what fuzzing found, pinned down

Edit = tuple[str, Callable[[bytes], bytes]]  # (file in the seed's tree, how its bytes change)
BIN, TXT = "sparse/0/{}.bin", "sparse/0/{}.txt"


def _field(file: str, kind: str, name: str, value: Any) -> Edit:
    return file, lambda data: fh.with_field(data, kind, name, value)


def _bin(name: str, field: str, value: Any) -> Edit:
    return _field(BIN.format(name), f"colmap-bin/{name}", field, value)


def _json(change: Callable[[dict], None]) -> Edit:
    def edit(data: bytes) -> bytes:
        doc = json.loads(data)
        change(doc)
        return json.dumps(doc).encode()
    return "transforms.json", edit


def _frame0(key: str, value: Any) -> Edit:
    return _json(lambda doc: doc["frames"][0].__setitem__(key, value))


def _text(file: str, old: bytes, new: bytes) -> Edit:
    return file, lambda data: data.replace(old, new, 1)


# (reader, seed, edits, words the one-line error must contain; None: the file must be accepted)
def _npz_member(name: str, change: Callable[[bytes], bytes]) -> Edit:
    """`pointmaps.npz` with its member `name` changed (stored uncompressed when written back)."""
    def edit(data: bytes) -> bytes:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            members = {i.filename: z.read(i) for i in z.infolist()}
        members[name] = change(members[name])
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w") as z:
            for member, content in members.items():
                z.writestr(member, content)
        return out.getvalue()

    return "pointmaps.npz", edit


FOUND: dict[str, tuple[str, str, list[Edit], str | None]] = {
    "frames.bin count of data ids lies (pycolmap loops ~2^32 times)":
        ("colmap-bin", "cup_colmap.bin", [_bin("frames", "frames[0].num_data_ids", 2**32 - 1)], "frames.bin"),
    "rigs.bin count of sensors lies": ("colmap-bin", "cup_colmap.bin", [_bin("rigs", "rigs[0].num_sensors", 2**32 - 1)],
                                       "rigs.bin"),
    "zero quaternion": ("colmap-bin", "cup_colmap.bin (3 files)",
                        [_bin("images", f"images[0].{q}", 0.0) for q in ("qw", "qx", "qy", "qz")], "quaternion"),
    "quaternion of length 2": ("colmap-bin", "cup_colmap.bin", [_bin("frames", "frames[1].qw", 2.0)], "quaternion"),
    "translation 1e300": ("colmap-bin", "cup_colmap.bin", [_bin("frames", "frames[0].tx", 1e300)], "translation"),
    "negative focal length": ("colmap-bin", "beer_can_colmap.bin", [_bin("cameras", "cameras[0].params[0]", -5.0)],
                              "not positive"),
    "focal length 5e-324 (0 once scaled for images_4/)": ("colmap-txt", "cup_colmap.txt (3 files)", [
        _text(TXT.format("cameras"), b"SIMPLE_PINHOLE 800 600 589.02712385624693", b"SIMPLE_PINHOLE 800 600 5e-324")],
        "not positive"),
    "focal length NaN": ("colmap-bin", "cup_colmap.bin", [_bin("cameras", "cameras[0].params[0]", math.nan)],
                         "not finite"),
    "image width 0": ("colmap-bin", "cup_colmap.bin", [_bin("cameras", "cameras[0].width", 0)], "image size"),
    "distortion no undistortion can undo": ("colmap-bin", "beer_can_colmap.bin",
                                            [_bin("cameras", "cameras[0].params[3]", 1e12)], "distortion"),
    "3D point at NaN": ("colmap-bin", "cup_colmap.bin", [_bin("points3D", "points3D[0].x", math.nan)], "NaN"),
    "keypoint at 1e300 (overflowed float32)": ("colmap-bin", "cup_colmap.bin",
                                               [_bin("images", "images[0].points2D[0].x", 1e300)], "keypoint"),
    "image name not UTF-8": ("colmap-bin", "cup_colmap.bin", [_bin("images", "images[0].name", b"\xff.jpg")],
                             "UTF-8"),
    "image name too long for the file system": ("colmap-bin", "cup_colmap.bin",
                                                [_bin("images", "images[0].name", b"a" * 300)], "missing"),
    "image name with a newline": ("colmap-bin", "cup_colmap.bin", [_bin("images", "images[0].name", b"a\nb.jpg")],
                                  "a\\nb.jpg"),
    "text pose quaternion of length 2": ("colmap-txt", "beer_can_colmap.txt (3 files)",
                                         [_text(TXT.format("images"), b"1 0.97", b"1 1.97")], "quaternion"),
    "frame that is not an object": ("transforms-json", "fox", [_json(lambda d: d["frames"].__setitem__(0, 0.5))],
                                    "not an object"),
    "focal length as a list": ("transforms-json", "fox", [_frame0("fl_x", [1375.5])], "finite number"),
    "focal length a string": ("transforms-json", "fox", [_frame0("fl_x", "x")], "finite number"),
    "image size 1e300": ("transforms-json", "fox", [_frame0("w", 1e300)], "image size"),
    "field of view 0 (divided by tan 0)": ("transforms-json", "fox",
                                           [_json(lambda d: d.pop("fl_x")), _frame0("camera_angle_x", 0)], "angle"),
    "transform_matrix missing a row (singular)": ("transforms-json", "fox + point cloud",
                                                  [_json(lambda d: d["frames"][2]["transform_matrix"].pop(1))],
                                                  "transform_matrix"),
    "transform_matrix not rigid": ("transforms-json", "fox",
                                   [_json(lambda d: d["frames"][1]["transform_matrix"][1].__setitem__(1, 0.5))],
                                   "not a rotation"),
    "transform_matrix entry 1e308 (overflowed R R^T)": ("transforms-json", "fox", [
        _json(lambda d: d["frames"][0]["transform_matrix"][2].__setitem__(1, 1e308))], "not a rotation"),
    "file_path with NUL": ("transforms-json", "fox", [_frame0("file_path", "a\0b")], "file name"),
    "file_path too long for the file system": ("transforms-json", "fox", [_frame0("file_path", "a" * 300)],
                                               "missing"),
    "ply_file_path an object": ("transforms-json", "fox + point cloud",
                                [_json(lambda d: d.update(ply_file_path={"a": 1}))], "ply_file_path"),
    "a 5000-digit number": ("transforms-json", "fox", [_text("transforms.json", b'"aabb_scale": 4',
                                                              b'"aabb_scale": ' + b"4" * 5000)], "not a readable JSON"),
    "point cloud with a NaN": ("transforms-json", "fox + point cloud",
                               [_field("sparse_pc.ply", "ply", "vertex[0].y", math.nan)], "NaN"),
    "empty point cloud (random points instead)": ("transforms-json", "fox + point cloud",
                                                  [_text("sparse_pc.ply", b"element vertex 200", b"element vertex 0")],
                                                  None),
    "f_rest_ property not numbered": ("ply", "point_cloud.ply",
                                      [_text("point_cloud.ply", b"f_rest_3\n", b"f_rest_3>\n")], "f_rest"),
    "log-scale 1e30 (finite, but exp overflows)":
        ("ply", "fused.ply", [_field("fused.ply", "ply", "vertex[0].scale_1", 1e30)], "log-scales"),
    "colour bound whose SH overflows float32 (a warning)": ("compressed-ply", "biker.compressed.ply", [
        _field("biker.compressed.ply", "ply", "chunk[0].max_r", 3.4e38)], "NaN or infinite"),
    "SOG shN.bands a list (not hashable)": ("sog-lod", "two levels", [
        ("1_0/meta.json", lambda data: json.dumps({**json.loads(data), "shN": {**json.loads(data)["shN"],
                                                                              "bands": [3]}}).encode())],
        "shN.bands"),
    "npz member with corrupt deflate data (zlib.error)": ("pointmaps", "cup, 4 views", [
        ("pointmaps.npz", lambda data: data[:76] + b"\0" + data[77:])], "not a readable .npz"),
    "npz member without an .npy header (numpy hands back bytes)": ("pointmaps", "cup, 4 views", [
        _npz_member("conf.npy", lambda member: member[10:])], "'conf' member is not an .npy array"),
    "npz member whose .npy header is cut (tokenize.TokenError)": ("pointmaps", "cup, 4 views", [
        _npz_member("conf.npy", lambda member: member.replace(b"'descr'", b"('descr'", 1))],
        "not a readable .npz"),
}


@pytest.mark.parametrize("what", list(FOUND))
def test_what_fuzzing_found(runner: fh.Runner, what: str) -> None:
    reader, seed_name, edits, words = FOUND[what]
    seed = next(s for s in fh.seeds(reader) if s.name == seed_name)
    files = dict(seed.tree.files)
    for name, edit in edits:
        files[name] = edit(files[name])
    outcome = runner.run(fh.Case(seed, replace(seed.tree, files=files), (what,)))
    assert outcome.kind == ("accepted" if words is None else "error"), outcome
    assert words is None or words in outcome.detail, outcome
