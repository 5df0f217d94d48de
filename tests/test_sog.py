"""PlayCanvas SOG (splatkit/io/sog.py): bundled `.sog` and unbundled `meta.json`, round trips within bounds
derived from the format, the layout checked against the spec without splatkit's reader (decoded as the
PlayCanvas engine's shaders do), the SH palette, and malformed files.

The writer sorts splats in Morton order, so file rows map to model rows through `morton_order`. Bounds:
- position: a 16-bit code of v = sign(x) ln(|x| + 1) between the file's mins and maxs, rounded: |v' - v| <= h,
  half a step, h = (max - min) / 65535 / 2; mapped back through sign(v)(exp|v| - 1), whose slope is exp|v|,
  |x' - x| <= h exp(|v| + h), plus float32 rounding of the result;
- rotation: smallest-three, each of the three stored components a byte of (c sqrt 2 + 1) 127.5, rounded: off by
  <= sqrt 2 / 510 (the angle bound as test_formats derives it);
- scales, SH DC, SH coefficients of an exact palette: 256-entry codebooks, each value stored as its nearest
  entry, so the error is exactly the distance to the nearest codebook entry;
- alpha: round(alpha * 255), bytes 0 and 255 decoded half a step inside: <= 0.5 / 255."""

from __future__ import annotations

import io
import json
import math
import shutil
import struct
import subprocess
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from format_bounds import (EPS, F32, alpha, angle, as_np, assert_within, expect_error, random_gaussians,
                           smallest_three_angle)
from splatkit.errors import SplatkitError
from splatkit.io import sog
from splatkit.model.morton import morton_order
from splatkit.io.formats import detect_format, format_from_extension, read_splats, write_options, write_splats
from splatkit.io.ply import load_ply
from splatkit.model.sh import SH_C0

ALPHA = 0.5 / 255
QUAT_STEP = math.sqrt(2.0) / 510  # half a byte step of c sqrt 2 in [-1, 1] over 255 steps


def _nearest_entry_error(values, codebook):
    """Distance from each value to its nearest codebook entry."""
    values = np.asarray(values, np.float64)
    book = np.sort(np.asarray(codebook, np.float64))
    i = np.clip(np.searchsorted(book, values), 1, len(book) - 1)
    return np.minimum(np.abs(values - book[i - 1]), np.abs(values - book[i]))


def _bundle(path):
    """The members of a .sog zip and its meta.json, read with zipfile and json (not splatkit)."""
    with zipfile.ZipFile(path) as z:
        members = {i.filename: z.read(i) for i in z.infolist()}
    return members, json.loads(members["meta.json"])


def _pixels(data):
    with Image.open(io.BytesIO(data)) as im:
        assert im.format == "WEBP"
        return np.asarray(im.convert("RGBA"))


def _in_file_order(g):
    return g.subset(torch.from_numpy(morton_order(as_np(g.means))))


@pytest.fixture(params=["random", "inria"])
def model(request):
    """A random SH-3 model (its SH goes through the k-means palette) and the real INRIA SH-3 file (9080 splats,
    coordinates up to ~1000; 7933 distinct SH vectors, fewer than its 8192-entry palette, so stored exactly)."""
    if request.param == "random":
        return random_gaussians(1000, 3, seed=11)
    path = request.getfixturevalue("shared_datasets") / "inria_ply_sh3_9k" / "point_cloud_iter7000.ply"
    return load_ply(path)


# ---------------------------------------------------------------- round trips with derived bounds


def test_round_trip_within_the_formats_bounds(tmp_path, model):
    path = tmp_path / "m.sog"
    write_splats(model, path)
    assert detect_format(path) == "sog"
    back = read_splats(path)
    assert len(back) == len(model) and back.sh_degree == 3
    o = _in_file_order(model)
    _, meta = _bundle(path)
    assert meta["version"] == 2 and meta["count"] == len(model)
    x = as_np(o.means)
    v = np.sign(x) * np.log1p(np.abs(x))
    h = (np.float32(meta["means"]["maxs"]).astype(np.float64) - np.float32(meta["means"]["mins"])) / 65535 / 2
    assert_within(back.means, x, h * np.exp(np.abs(v) + h) + 2 * F32 * np.abs(x), "position")
    assert_within(angle(back.quats, o.quats), 0.0, smallest_three_angle(QUAT_STEP) + EPS, "rotation angle")
    for name, got, want, key in [("log-scale", back.scales, o.scales, "scales"), ("SH DC", back.sh0, o.sh0, "sh0")]:
        want = as_np(want)
        bound = _nearest_entry_error(want, np.float32(meta[key]["codebook"])) + EPS * (1 + np.abs(want))
        assert_within(got, want, bound, name)
    assert_within(alpha(back), alpha(o), ALPHA + EPS, "alpha")
    rows = as_np(o.shN).reshape(len(o), -1)
    exact = meta["shN"]["count"] == len(np.unique(rows, axis=0))
    assert exact == (len(model) == 9080)  # the INRIA file's distinct SH vectors fit its palette; random ones do not
    if exact:  # the palette holds every distinct SH vector: only the codebook rounds
        want = as_np(o.shN)
        bound = _nearest_entry_error(want, np.float32(meta["shN"]["codebook"])) + EPS * (1 + np.abs(want))
        assert_within(back.shN, want, bound, "SH coefficient")


def test_sh_palette_finds_clusters(tmp_path):
    """3000 splats whose SH-rest vectors are 40 centres plus noise, so more distinct vectors than the 2048-entry
    palette holds: the k-means palette. Each splat's SH is its palette entry, then rounded to the codebook:
    rms(decoded - x) <= rms(entry - x) + rms(rounding). With 50x more entries than clusters, k-means does at
    least as well as the true centres: rms(entry - x) <= rms(noise). Each entry is a mean of SH vectors, so it
    lies within the data's range [lo, hi], where the codebook rounds by at most max(half its widest gap,
    b_0 - lo, hi - b_255)."""
    n, sigma = 3000, 0.02
    gen = np.random.default_rng(3)
    centres = gen.normal(0.0, 0.4, (40, 15, 3))
    noise = gen.normal(0.0, sigma, (n, 15, 3))
    which = gen.integers(0, 40, n)
    g = random_gaussians(n, 3, seed=4)
    g.shN = torch.from_numpy(centres[which] + noise).float()
    noise = as_np(g.shN) - centres[which]
    path = tmp_path / "m.sog"
    write_splats(g, path)
    _, meta = _bundle(path)
    assert meta["shN"]["bands"] == 3 and meta["shN"]["count"] == 2048  # splat-transform's size for 3000 splats
    back = read_splats(path)
    o = _in_file_order(g)
    book = np.sort(np.float32(meta["shN"]["codebook"]).astype(np.float64))
    want = as_np(o.shN)
    rounding = max(np.max(np.diff(book)) / 2, book[0] - want.min(), want.max() - book[-1], 0.0)
    rms_error = math.sqrt(np.mean((as_np(back.shN) - want) ** 2))
    rms_noise = math.sqrt(np.mean(noise**2))
    print(f"SH rms error {rms_error:.4f}, noise {rms_noise:.4f}, codebook rounding <= {rounding:.4f}")
    assert rms_error <= rms_noise + rounding, (rms_error, rms_noise, rounding)


def test_opacity_zero_keeps_its_colour_and_sh_degree_option(tmp_path):
    """A fully transparent splat still has colour and SH: lossless WebP must keep RGB under alpha 0 (libwebp's
    default drops it). `sh_degree` drops bands: no palette images at degree 0, and smaller files."""
    g = random_gaussians(200, 3, seed=5)
    g.opacities[:50] = -30.0  # alpha byte 0
    write_splats(g, tmp_path / "m.sog")
    back, o = read_splats(tmp_path / "m.sog"), _in_file_order(g)
    _, meta = _bundle(tmp_path / "m.sog")
    transparent = as_np(o.opacities) < -20
    assert transparent.sum() == 50 and (alpha(back)[transparent] < 1 / 255).all()
    want = as_np(o.sh0)[transparent]
    assert_within(as_np(back.sh0)[transparent], want,
                   _nearest_entry_error(want, np.float32(meta["sh0"]["codebook"])) + EPS * (1 + np.abs(want)), "DC")
    sizes = []
    for degree in (0, 1, 3):
        write_splats(g, tmp_path / f"d{degree}.sog", sh_degree=degree)
        members, meta = _bundle(tmp_path / f"d{degree}.sog")
        assert read_splats(tmp_path / f"d{degree}.sog").sh_degree == degree
        assert ("shN" in meta) == (degree > 0) and ("shN_labels.webp" in members) == (degree > 0)
        sizes.append((tmp_path / f"d{degree}.sog").stat().st_size)
    assert sizes[0] < sizes[1] < sizes[2]
    with pytest.raises(SplatkitError, match="sh_degree"):
        write_splats(g, tmp_path / "bad.sog", sh_degree=4)


# ---------------------------------------------------------------- the layout, without splatkit's reader


def test_written_layout_follows_the_spec(tmp_path):
    """Read the bundle with zipfile, json and Pillow and decode it as the PlayCanvas engine does
    (gsplat-sog-data.js and its shaders: the (l + 256 u) / 257 position code, quaternion modes, the 64-entry
    palette rows), so a layout bug shared by our writer and reader cannot hide behind a passing round trip."""
    g = random_gaussians(1234, 2, seed=8)
    n = len(g)
    path = tmp_path / "m.sog"
    write_splats(g, path)
    data = path.read_bytes()
    # The engine's zip parser: the end-of-central-directory record is the last 22 bytes (no comment), entries
    # stored or deflated.
    assert data[:4] == b"PK\x03\x04" and data[-22:-18] == b"PK\x05\x06"
    with zipfile.ZipFile(path) as z:
        assert {i.compress_type for i in z.infolist()} == {zipfile.ZIP_STORED}
    members, meta = _bundle(path)
    files = ["means_l.webp", "means_u.webp", "scales.webp", "quats.webp", "sh0.webp", "shN_centroids.webp",
             "shN_labels.webp"]
    assert sorted(members) == sorted(["meta.json", *files])
    assert [meta[k]["files"] for k in ("means", "scales", "quats", "sh0", "shN")] == \
        [files[:2], [files[2]], [files[3]], [files[4]], files[5:]]
    assert all(len(meta[k]["codebook"]) == 256 for k in ("scales", "sh0", "shN"))
    assert meta["count"] == n and meta["shN"]["bands"] == 2 and meta["shN"]["count"] <= 1024
    width = 4 * math.ceil(math.sqrt(n) / 4)
    size = (4 * math.ceil(n / width / 4), width)
    px = {name: _pixels(members[name]) for name in files}
    for name in files[:4] + files[6:]:
        assert px[name].shape[:2] == size, name
        assert not px[name].reshape(-1, 4)[n:].any(), f"{name}: pixels past count are not zero"
    p = {name: px[name].reshape(-1, 4)[:n].astype(np.int64) for name in files}
    # positions: the shader's (l + u * 256) / 257 of texture values l, u in [0, 1], then mix and sign(v)(e^|v| - 1)
    t = (p["means_l.webp"][:, :3] / 255 + p["means_u.webp"][:, :3] / 255 * 256) / 257
    lo, hi = np.float32(meta["means"]["mins"]), np.float32(meta["means"]["maxs"])
    vv = lo * (1 - t) + hi * t
    means = np.sign(vv) * np.expm1(np.abs(vv))
    # rotation: A = 252 + mode; the JS iterator's r.set(x, y, z, w) per mode, with the largest rebuilt as d
    q = p["quats.webp"]
    assert set(np.unique(q[:, 3])) <= {252, 253, 254, 255}
    a, b, c = ((q[:, :3] / 255 - 0.5) * math.sqrt(2)).T
    d = np.sqrt(np.maximum(0, 1 - (a * a + b * b + c * c)))
    xyzw = np.select([q[:, 3:] == 252, q[:, 3:] == 253, q[:, 3:] == 254, q[:, 3:] == 255],
                     [np.stack(s, 1) for s in [(a, b, c, d), (d, b, c, a), (b, d, c, a), (b, c, d, a)]])
    scales = np.float32(meta["scales"]["codebook"])[p["scales.webp"][:, :3]]
    rgb = 0.5 + np.float32(meta["sh0"]["codebook"])[p["sh0.webp"][:, :3]] * SH_C0
    engine_alpha = p["sh0.webp"][:, 3] / 255
    # SH: label n = R + 256 G; its entry is row n // 64, pixels (n % 64) * coeffs + k, RGB the three channels
    coeffs = 8
    assert px["shN_centroids.webp"].shape[:2] == (math.ceil(meta["shN"]["count"] / 64), 64 * coeffs)
    label = p["shN_labels.webp"][:, 0] + 256 * p["shN_labels.webp"][:, 1]
    cols = (label % 64)[:, None] * coeffs + np.arange(coeffs)
    sh = np.float32(meta["shN"]["codebook"])[px["shN_centroids.webp"][(label // 64)[:, None], cols, :3]]
    back = read_splats(path)
    np.testing.assert_allclose(as_np(back.means), means, rtol=2 * F32, atol=1e-12)
    np.testing.assert_allclose(as_np(back.quats), xyzw[:, [3, 0, 1, 2]], atol=EPS)
    np.testing.assert_allclose(as_np(back.scales), scales, atol=0)
    np.testing.assert_allclose(0.5 + as_np(back.sh0[:, 0]) * SH_C0, rgb, atol=EPS)
    assert_within(alpha(back), engine_alpha, ALPHA + EPS, "alpha")
    np.testing.assert_allclose(as_np(back.shN), sh, atol=0)
    # and against the model, in Morton order
    o = _in_file_order(g)
    assert_within(angle(torch.from_numpy(xyzw[:, [3, 0, 1, 2]]), o.quats), 0.0,
                   smallest_three_angle(QUAT_STEP) + EPS, "rotation angle (engine decode)")
    assert_within(engine_alpha, alpha(o), ALPHA + EPS, "alpha (engine decode)")
    x = as_np(o.means)
    h = (hi.astype(np.float64) - lo) / 65535 / 2
    assert_within(means, x, h * np.exp(np.abs(np.sign(x) * np.log1p(np.abs(x))) + h) + 4 * F32 * np.abs(x),
                   "position (engine decode)")


def test_unbundled_form_and_determinism(tmp_path):
    """`meta.json` with the images beside it, under splat-transform's names (or prefixed, for `x.meta.json`),
    holds exactly what the bundle holds; writing is deterministic."""
    g = random_gaussians(500, 1, seed=6)
    write_splats(g, tmp_path / "a.sog")
    write_splats(g, tmp_path / "b.sog")
    assert (tmp_path / "a.sog").read_bytes() == (tmp_path / "b.sog").read_bytes()
    plain, named = tmp_path / "plain" / "meta.json", tmp_path / "named" / "scene.meta.json"
    write_splats(g, plain)
    write_splats(g, named)
    assert format_from_extension(plain) == format_from_extension(named) == "sog-meta"
    assert format_from_extension("x.sog") == "sog"
    assert write_options("sog") == write_options("sog-meta") == ["sh_degree"]
    roles = ["means_l", "means_u", "quats", "scales", "sh0", "shN_centroids", "shN_labels"]
    assert sorted(p.name for p in plain.parent.iterdir()) == sorted(["meta.json", *(f"{r}.webp" for r in roles)])
    assert sorted(p.name for p in named.parent.iterdir()) == \
        sorted(["scene.meta.json", *(f"scene.{r}.webp" for r in roles)])
    assert sog.unbundled_files(named)[0] == named and len(sog.unbundled_files(named)) == 8
    members, meta = _bundle(tmp_path / "a.sog")
    assert json.loads(plain.read_bytes()) == meta  # the same meta.json, the same images
    assert all((plain.parent / name).read_bytes() == data for name, data in members.items() if name != "meta.json")
    bundled = read_splats(tmp_path / "a.sog")
    for path in (plain, named):
        assert detect_format(path) == "sog-meta"
        back = read_splats(path)
        for key, value in bundled.as_dict().items():
            assert torch.equal(getattr(back, key), value), (path, key)
    renamed = tmp_path / "named" / "whatever.json"  # detected by content, not by name
    renamed.write_bytes(named.read_bytes())
    assert detect_format(renamed) == "sog-meta"
    other = tmp_path / "other.json"
    other.write_text('{"frames": []}')
    with pytest.raises(SplatkitError, match="unrecognised"):
        detect_format(other)


# ---------------------------------------------------------------- other tools' files


def test_splat_transform_reads_ours_and_we_read_its(tmp_path, shared_datasets):
    """With PlayCanvas's splat-transform CLI on PATH (npm i -g @playcanvas/splat-transform; not in CI): it
    decodes our .sog as we do, and we decode its .sog as it does. Positions differ by float32 rounding of the
    bounds only (we round meta.json's bounds to float32, as the engine's shader uniforms do)."""
    tool = shutil.which("splat-transform")
    if tool is None:
        pytest.skip("splat-transform (npm @playcanvas/splat-transform) is not on PATH")
    ply = shared_datasets / "inria_ply_sh3_9k" / "point_cloud_iter7000.ply"
    ours, theirs = tmp_path / "ours.sog", tmp_path / "theirs.sog"
    write_splats(load_ply(ply), ours)
    run = [tool, "-q", "-w", "-g", "cpu"]
    subprocess.run([*run, str(ply), str(theirs)], check=True, timeout=600)
    for sog_file in (ours, theirs):
        decoded = tmp_path / f"{sog_file.stem}-decoded.ply"
        subprocess.run([*run, str(sog_file), str(decoded)], check=True, timeout=600)
        a, b = read_splats(sog_file), load_ply(decoded)
        x = as_np(b.means)
        np.testing.assert_allclose(as_np(a.means), x, rtol=0, atol=1e-6 * (1 + np.abs(x).max()))
        for key in ("scales", "quats", "sh0", "shN"):
            np.testing.assert_allclose(as_np(getattr(a, key)), as_np(getattr(b, key)), atol=EPS, err_msg=key)
        assert_within(alpha(a), alpha(b), ALPHA + EPS, "alpha")


# ---------------------------------------------------------------- malformed files (fuzzed in test_fuzz_readers.py)


def _rezip(members, path):
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


def _webp_bytes(pixels):
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "WEBP", lossless=True, exact=True)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def valid(tmp_path_factory):
    path = tmp_path_factory.mktemp("valid") / "m.sog"
    write_splats(random_gaussians(40, 1, seed=9), path)
    return _bundle(path)


def test_malformed_bundles(tmp_path, valid):
    members, meta = valid
    data = _rezip(members, tmp_path / "ok.sog").read_bytes()
    for cut in (10, 100, len(data) // 2, len(data) - 10):
        (tmp_path / "cut.sog").write_bytes(data[:cut])
        expect_error(tmp_path / "cut.sog")
    expect_error(_rezip({k: v for k, v in members.items() if k != "meta.json"}, tmp_path / "a.sog"), "meta.json")
    expect_error(_rezip({k: v for k, v in members.items() if k != "quats.webp"}, tmp_path / "b.sog"), "quats.webp")
    expect_error(_rezip({**members, "sh0.webp": b"RIFF0000WEBPjunk"}, tmp_path / "c.sog"), "sh0.webp")

    def with_meta(change, name):
        doc = json.loads(json.dumps(meta))
        change(doc)
        return _rezip({**members, "meta.json": json.dumps(doc).encode()}, tmp_path / name)

    expect_error(with_meta(lambda d: d.pop("version"), "v1.sog"), "version 1")
    expect_error(with_meta(lambda d: d.update(version=3), "v3.sog"), "version 3")
    expect_error(with_meta(lambda d: d.update(count=10**6), "count.sog"), "does not fit")
    expect_error(with_meta(lambda d: d.update(count=0), "zero.sog"), "no splats")
    expect_error(with_meta(lambda d: d["scales"]["codebook"].pop(), "book.sog"), "scales.codebook")
    expect_error(with_meta(lambda d: d["means"].update(mins=[0, "x", 0]), "mins.sog"), "means.mins")
    expect_error(with_meta(lambda d: d["means"].update(maxs=[1e300] * 3), "huge.sog"), "NaN or infinite")
    expect_error(with_meta(lambda d: d["shN"].update(count=1), "palette.sog"), "palette entry")
    expect_error(with_meta(lambda d: d["shN"].update(bands=2), "bands.sog"), "shN_centroids.webp")
    expect_error(with_meta(lambda d: d["quats"].update(files=["../quats.webp"]), "dots.sog"), "../quats.webp")
    (tmp_path / "text.sog").write_bytes(b"PK\x03\x04" + bytes(40))
    expect_error(tmp_path / "text.sog", "zip")
    quats = _pixels(members["quats.webp"]).copy()
    quats[0, 3, 3] = 7  # splat 3's quaternion tag
    expect_error(_rezip({**members, "quats.webp": _webp_bytes(quats)}, tmp_path / "tag.sog"), "splat 3", "tag")
    bomb = bytearray(members["means_l.webp"])  # VP8L header: 14 bits width - 1, 14 bits height - 1, ...
    assert bomb[12:16] == b"VP8L"
    bits = struct.unpack_from("<I", bomb, 21)[0] & ~0x0FFFFFFF
    struct.pack_into("<I", bomb, 21, bits | 8191 | (8191 << 14))  # 8192 x 8192: 256 MB of RGBA
    expect_error(_rezip({**members, "means_l.webp": bytes(bomb)}, tmp_path / "bomb.sog"), "8192x8192",
                  "does not fit")  # refused from the header, before decoding
    scales = _pixels(members["scales.webp"])
    expect_error(_rezip({**members, "scales.webp": _webp_bytes(scales[:, :4].copy())}, tmp_path / "size.sog"),
                  "scales.webp", "differ in size")


def test_malformed_unbundled(tmp_path, valid):
    members, meta = valid
    for name, data in members.items():
        (tmp_path / name).write_bytes(data)
    path = tmp_path / "meta.json"
    assert len(read_splats(path)) == 40
    (tmp_path / "sh0.webp").unlink()
    with pytest.raises(SplatkitError, match=r"sh0\.webp: no such file"):  # names the missing image
        read_splats(path)
    path.write_bytes(members["meta.json"][:-5])
    expect_error(path, "not readable JSON")  # a meta.json by name, though its content is cut short
    path.write_bytes(struct.pack("<4I", 1, 2, 3, 4))
    expect_error(path, "unrecognised")
