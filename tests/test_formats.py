"""Splat file formats (issue 5): antimatter15 .splat, Niantic .spz (read v2/v3/v4, write v3/v4), PlayCanvas
compressed.ply, and the registry that detects a file's format from its content.

Every error bound below is derived from the format's bit depth (the derivation sits next to the constant), not
fitted to results. Quantities are compared where the format quantises them: alpha for opacity,
rgb = 0.5 + SH_C0 * dc for colour, the rotation angle between quaternions, and log-scales."""

from __future__ import annotations

import gzip
import math
import struct

import numpy as np
import pytest
import torch
import zstandard
from plyfile import PlyData, PlyElement
from scipy.spatial.transform import Rotation

from splatkit.data.cameras import Camera
from splatkit.data.demo_scene import look_at
from format_bounds import (EPS, F32, alpha, angle, as_np, assert_within, expect_error, random_gaussians,
                           smallest_three_angle)
from splatkit.errors import SplatkitError
from splatkit.io import compressed_ply, spz
from splatkit.io.formats import detect_format, format_from_extension, read_splats, write_options, write_splats
from splatkit.io.ply import load_ply
from splatkit.model.gaussians import Gaussians
from splatkit.model.morton import morton_order
from splatkit.model.sh import SH_C0
from splatkit.render import rasterize
from splatkit.render.projection import covariance_3d
from splatkit.render.sh import sh_basis
from splatkit.train.metrics import psnr
from splatkit.viewer.camera import frame_points, up_from_points


def _rgb(g):
    return 0.5 + SH_C0 * as_np(g.sh0[:, 0])


# SPZ v3: sign + 9-bit magnitude of |v| / (1/sqrt 2), rounded: half a step is (1/sqrt 2) / 511 / 2.
SPZ_ROTATION = smallest_three_angle(math.sqrt(0.5) / 511 / 2)
# compressed.ply: 10-bit unorm of v * sqrt(2)/2 + 1/2 over v in [-1/sqrt 2, 1/sqrt 2]: half a step is sqrt 2 / 1023 / 2.
CPLY_ROTATION = smallest_three_angle(math.sqrt(2.0) / 1023 / 2)
# .splat: all four components as round(q * 128 + 128) clipped to 255, so off by <= 0.5/128, except one component
# > 127/128 that clips (<= 1/128). After normalising, sin(half angle) <= |q' - q|.
SPLAT_ROTATION = 2.0 * math.asin(math.sqrt(3 * (0.5 / 128) ** 2 + (1 / 128) ** 2))
ALPHA = 0.5 / 255  # every format stores alpha as round(alpha * 255) (bytes 0/255 decode to 0.5/255, 254.5/255)
SPZ_SCALE_RANGE = (-10.0, 255 / 16 - 10.0)  # (s + 10) * 16 in a byte
SPZ_SCALE = 1 / 32  # half of 1/16
SPZ_DC_RANGE = 127.5 / (0.15 * 255)  # dc * 0.15 * 255 + 127.5 in a byte
SPZ_DC = 0.5 / (0.15 * 255)
CPLY_SH = 1 / 64  # 8 bits over [-4, 4], decoded at bucket centres: half of 8/256


def _spz_sh_bound(bits):
    """round(x * 128) + 128 (off by <= 0.5), then to the nearest multiple of B = 2^(8 - bits) (off by <= B // 2:
    nothing at 8 bits)."""
    return (2 ** (8 - bits) // 2 + 0.5) / 128


def _spz_sh_range(sh):
    """SPZ SH bytes decode to [-1, 127/128] in the file's RUB frame, so coefficients that flip sign into RDF
    span [-127/128, 1] instead."""
    flip = spz.FLIP_SH[: sh.shape[1], None]
    return np.clip(sh * flip, -1.0, 127 / 128) * flip


def _write(directory, g, name, **options):
    write_splats(g, directory / name, **options)
    return directory / name


@pytest.fixture(params=["random", "inria"])
def model(request):
    """A random SH-3 model and the real INRIA SH-3 file (9080 splats, coordinates up to ~1000)."""
    if request.param == "random":
        return random_gaussians(1000, 3, seed=11)
    path = request.getfixturevalue("shared_datasets") / "inria_ply_sh3_9k" / "point_cloud_iter7000.ply"
    return load_ply(path)


# ---------------------------------------------------------------- fixtures with known values


def _fixture(shared_datasets, name):
    return shared_datasets / "splat_transform_fixtures" / name


# SOURCE.md / create-fixtures.mjs: 4 splats on a 2x2 grid (x, z in {-1, 0}, y = 0), linear scale 0.1, opacity byte
# 230, colour bytes r = 85 or 170 by column, g by row, b = 128.
GRID = np.array([[-1, 0, -1], [0, 0, -1], [-1, 0, 0], [0, 0, 0]], np.float64)
COLOR_BYTES = np.array([[85, 85, 128], [170, 85, 128], [85, 170, 128], [170, 170, 128]], np.float64)


def test_splat_fixture_known_values(shared_datasets):
    path = _fixture(shared_datasets, "minimal.splat")
    assert detect_format(path) == "splat"
    g = read_splats(path)
    assert len(g) == 4 and g.sh_degree == 0
    np.testing.assert_array_equal(as_np(g.means), GRID)
    np.testing.assert_allclose(as_np(g.activated_scales), 0.1, rtol=1e-6)
    np.testing.assert_allclose(alpha(g), 230 / 255, atol=EPS)
    np.testing.assert_allclose(_rgb(g), COLOR_BYTES / 255, atol=EPS)
    # The rotation bytes are (128, 128, 128, 255). .splat stores w first, so that is (w,x,y,z) = (0, 0, 0, 1):
    # a half turn about z (the fixture's generator assumed x,y,z,w). With equal scales the covariance is the
    # identity rotation's, which is what SOURCE.md's "identity rotation" amounts to.
    np.testing.assert_allclose(as_np(g.quats), [[0, 0, 0, 1]] * 4, atol=EPS)
    cov = covariance_3d(g.quats, g.activated_scales)
    np.testing.assert_allclose(as_np(cov), np.broadcast_to(np.eye(3) * 0.01, (4, 3, 3)), atol=1e-8)


@pytest.mark.parametrize("name", ["minimal-v2.spz", "minimal-raw.spz"])
def test_spz_v2_fixtures_known_values(shared_datasets, name):
    """Hand-written by the generator (gzipped, and a raw un-gzipped payload): fractional bits 8, rotation bytes
    128. It wrote the grid without SPZ's RUB axes, so read per the spec (RUB -> RDF) z comes out negated."""
    path = _fixture(shared_datasets, name)
    assert detect_format(path) == "spz"
    assert spz.read_spz_header(path) == spz.SpzHeader(version=2, num_points=4, sh_degree=0, fractional_bits=8, flags=0)
    g = read_splats(path)
    np.testing.assert_array_equal(as_np(g.means), GRID * [1, -1, -1])
    np.testing.assert_array_equal(as_np(g.scales), np.full((4, 3), 123 / 16 - 10))  # byte 123 = round((ln 0.1 + 10) * 16)
    np.testing.assert_allclose(as_np(g.sh0[:, 0]), (COLOR_BYTES / 255 - 0.5) / 0.15, atol=EPS)
    np.testing.assert_allclose(alpha(g), 230 / 255, atol=EPS)
    c = 128 / 127.5 - 1  # v2 stores x, y, z as (v + 1) * 127.5; y and z flip into RDF
    np.testing.assert_allclose(as_np(g.quats), [[math.sqrt(1 - 3 * c * c), c, -c, -c]] * 4, atol=EPS)


@pytest.mark.parametrize("name,version", [("minimal-v3.spz", 3), ("minimal-v4.spz", 4)])
def test_spz_v3_v4_fixtures_match_the_splat_fixture(shared_datasets, name, version):
    """Written through the spz library from the same RDF grid as minimal.splat: read back into RDF they give the
    .splat fixture's values within SPZ's quantisation, which also pins down the RUB <-> RDF flip."""
    path = _fixture(shared_datasets, name)
    assert detect_format(path) == "spz"
    assert spz.read_spz_header(path) == spz.SpzHeader(version, 4, 0, 12, 0)
    g = read_splats(path)
    ref = read_splats(_fixture(shared_datasets, "minimal.splat"))
    np.testing.assert_array_equal(as_np(g.means), GRID)
    assert_within(g.scales, ref.scales, SPZ_SCALE, "log-scale")
    assert_within(g.sh0, ref.sh0, SPZ_DC, "SH DC")
    assert_within(alpha(g), alpha(ref), ALPHA, "alpha")
    np.testing.assert_array_equal(as_np(g.quats), [[1, 0, 0, 0]] * 4)  # 0xC0000000: largest is w, others 0


def test_spz_v4_fixture_decodes_like_v3(shared_datasets):
    v3 = read_splats(_fixture(shared_datasets, "minimal-v3.spz"))
    v4 = read_splats(_fixture(shared_datasets, "minimal-v4.spz"))
    for name, value in v3.as_dict().items():
        assert torch.equal(getattr(v4, name), value), name


@pytest.mark.parametrize("rel", ["inria_ply_sh3_9k/point_cloud_iter7000.ply", "mipsplat_donut_sh0/fused.ply"])
def test_inria_files_read_exactly(shared_datasets, rel):
    path = shared_datasets / rel
    assert detect_format(path) == "ply"
    got, want = read_splats(path), load_ply(path)
    for name, value in want.as_dict().items():
        assert torch.equal(getattr(got, name), value), name


# ---------------------------------------------------------------- the same scene written by two tools


def _chunk_bounds(path, n):
    """Per-splat chunk bounds of a compressed PLY, read independently with plyfile: (lo, hi) of positions,
    log-scales and (if present) colour, each (n, 3)."""
    chunk = PlyData.read(str(path))["chunk"].data
    ci = np.arange(n) // compressed_ply.CHUNK

    def cols(*names):
        return np.stack([np.asarray(chunk[k], np.float64) for k in names], axis=1)[ci]

    return {
        "pos": (cols("min_x", "min_y", "min_z"), cols("max_x", "max_y", "max_z")),
        "scale": (cols("min_scale_x", "min_scale_y", "min_scale_z"), cols("max_scale_x", "max_scale_y", "max_scale_z")),
        "rgb": (cols("min_r", "min_g", "min_b"), cols("max_r", "max_g", "max_b")),
    }


STEPS_11_10_11 = np.array([2047.0, 1023.0, 2047.0])


def test_biker_compressed_ply_and_spz_agree(shared_datasets):
    """playcanvas_splats: one 152,746-splat scene as SuperSplat compressed.ply and as SPZ v4. Both hold the splats
    in the same order; each attribute agrees within the sum of the two formats' quantisation bounds."""
    cpath = shared_datasets / "playcanvas_splats" / "biker.compressed.ply"
    spath = shared_datasets / "playcanvas_splats" / "biker.spz"
    assert detect_format(cpath) == "compressed-ply" and detect_format(spath) == "spz"
    assert spz.read_spz_header(spath) == spz.SpzHeader(4, 152746, 0, 12, 0)
    a, b = read_splats(cpath), read_splats(spath)
    assert len(a) == len(b) == 152746 and a.sh_degree == b.sh_degree == 0
    bounds = _chunk_bounds(cpath, len(a))
    lo, hi = bounds["pos"]
    pos_bound = (hi - lo) / (2 * STEPS_11_10_11) + 2.0**-13 + 2 * F32 * np.abs(as_np(a.means))
    assert_within(a.means, b.means, pos_bound, "position (same order)")
    lo, hi = bounds["scale"]
    # The compressed file holds log-scales below SPZ's floor of -10; SPZ clips them there.
    assert_within(np.clip(as_np(a.scales), *SPZ_SCALE_RANGE), b.scales, (hi - lo) / (2 * STEPS_11_10_11) + SPZ_SCALE
                   + EPS, "log-scale")
    assert_within(angle(a.quats, b.quats), 0.0, CPLY_ROTATION + SPZ_ROTATION + EPS, "rotation angle")
    lo, hi = bounds["rgb"]
    rgb_a = 0.5 + SH_C0 * np.clip(as_np(a.sh0[:, 0]), -SPZ_DC_RANGE, SPZ_DC_RANGE)
    assert_within(rgb_a, _rgb(b), (hi - lo) / 510 + SH_C0 * SPZ_DC + EPS, "rgb")
    assert_within(alpha(a), alpha(b), 2 * ALPHA + EPS, "alpha")


def test_biker_compressed_ply_and_spz_render_alike(shared_datasets):
    """The same biker scene from the two third-party files, rendered from views framing it from four sides:
    the pictures agree far more closely than with another view's (a sanity floor that can fail)."""
    a = read_splats(shared_datasets / "playcanvas_splats" / "biker.compressed.ply")
    b = read_splats(shared_datasets / "playcanvas_splats" / "biker.spz")
    means = a.means.double().numpy()
    up = up_from_points(means)
    views = []
    for azimuth in range(0, 360, 90):
        framing = frame_points(means, up)
        offset = framing.position - framing.look_at
        turned = Rotation.from_rotvec(up * math.radians(azimuth)).apply(offset)
        K = np.array([[240.0, 0, 160], [0, 240.0, 120], [0, 0, 1]])
        views.append(Camera("v", 320, 240, K, look_at(framing.look_at + turned, framing.look_at, up)))
    out_a = [rasterize(a, camera) for camera in views]
    assert all(float((out.alpha > 0.5).float().mean()) > 0.1 for out in out_a)  # the biker fills the view
    ra = [out.rgb.clamp(0, 1) for out in out_a]
    rb = [rasterize(b, camera).rgb.clamp(0, 1) for camera in views]
    scores = [(psnr(ra[i], rb[i]), psnr(ra[i], rb[(i + 2) % 4])) for i in range(4)]  # vs the opposite side
    print("biker compressed.ply vs spz, PSNR per view (same, opposite):", scores)
    for same, other in scores:
        assert same > 45.0 and same > other + 20.0, scores  # measured 58-62 dB vs 20-21 dB

# ---------------------------------------------------------------- round trips with derived bounds


def test_ply_round_trip_is_exact_and_can_drop_bands(tmp_path, model):
    write_splats(model, tmp_path / "m.ply")
    back = read_splats(tmp_path / "m.ply")
    for name, value in model.as_dict().items():
        assert torch.equal(getattr(back, name), value), name
    write_splats(model, tmp_path / "d1.ply", sh_degree=1)
    d1 = read_splats(tmp_path / "d1.ply")
    assert d1.sh_degree == 1 and torch.equal(d1.shN, model.shN[:, :3])


def test_splat_round_trip(tmp_path, model):
    path = tmp_path / "m.splat"
    write_splats(model, path)
    back = read_splats(path)
    assert len(back) == len(model) and back.sh_degree == 0
    # Written largest-first; positions are stored as float32, so they identify each splat exactly (duplicates in
    # the real file are duplicates in every attribute).
    lookup = {row.tobytes(): i for i, row in enumerate(model.means.numpy())}
    o = model.subset(torch.tensor([lookup[row.tobytes()] for row in back.means.numpy()]))
    key = as_np(o.scales).sum(axis=1) + np.log(alpha(o))
    assert (np.diff(key) <= 1e-9).all(), "not sorted largest and most opaque first"
    np.testing.assert_array_equal(as_np(back.means), as_np(o.means))
    assert_within(back.scales, o.scales, 2 * F32 * (1 + np.abs(as_np(o.scales))), "log-scale")
    assert_within(angle(back.quats, o.quats), 0.0, SPLAT_ROTATION + EPS, "rotation angle")
    assert_within(_rgb(back), np.clip(_rgb(o), 0, 1), 0.5 / 255 + EPS, "rgb")
    assert_within(alpha(back), alpha(o), ALPHA + EPS, "alpha")


@pytest.mark.parametrize("version", [3, 4])
@pytest.mark.parametrize("bits", [(5, 4), (8, 8)])
def test_spz_round_trip(tmp_path, model, version, bits):
    path = tmp_path / "m.spz"
    write_splats(model, path, version=version, sh1_bits=bits[0], sh_rest_bits=bits[1])
    header = spz.read_spz_header(path)
    assert (header.version, header.num_points, header.sh_degree, header.fractional_bits) == (version, len(model), 3, 12)
    back = read_splats(path)
    assert len(back) == len(model) and back.sh_degree == 3  # order is kept
    assert_within(back.means, model.means, 2.0**-13 + 2 * F32 * np.abs(as_np(model.means)), "position")
    assert_within(back.scales, np.clip(as_np(model.scales), *SPZ_SCALE_RANGE), SPZ_SCALE + EPS, "log-scale")
    assert_within(angle(back.quats, model.quats), 0.0, SPZ_ROTATION + EPS, "rotation angle")
    assert_within(back.sh0, np.clip(as_np(model.sh0), -SPZ_DC_RANGE, SPZ_DC_RANGE), SPZ_DC + EPS, "SH DC")
    assert_within(alpha(back), alpha(model), ALPHA + EPS, "alpha")
    want = _spz_sh_range(as_np(model.shN))
    assert_within(back.shN[:, :3], want[:, :3], _spz_sh_bound(bits[0]) + EPS, "SH degree 1")
    assert_within(back.shN[:, 3:], want[:, 3:], _spz_sh_bound(bits[1]) + EPS, "SH degree 2-3")


def test_compressed_ply_round_trip(tmp_path, model):
    path = tmp_path / "m.compressed.ply"
    write_splats(model, path)
    back = read_splats(path)
    assert len(back) == len(model) and back.sh_degree == 3
    # The writer sorts in Morton order; the same order maps file rows to model rows (positions confirm it).
    o = model.subset(torch.from_numpy(morton_order(as_np(model.means))))
    bounds = _chunk_bounds(path, len(model))
    lo, hi = bounds["pos"]
    assert_within(back.means, o.means, (hi - lo) / (2 * STEPS_11_10_11) + 2 * F32 * np.abs(as_np(o.means)), "position")
    lo, hi = bounds["scale"]
    want = np.clip(as_np(o.scales), -compressed_ply.SCALE_LIMIT, compressed_ply.SCALE_LIMIT)
    assert_within(back.scales, want, (hi - lo) / (2 * STEPS_11_10_11) + 2 * F32 * (1 + np.abs(want)), "log-scale")
    assert_within(angle(back.quats, o.quats), 0.0, CPLY_ROTATION + EPS, "rotation angle")
    lo, hi = bounds["rgb"]
    assert_within(_rgb(back), _rgb(o), (hi - lo) / 510 + EPS, "rgb")  # chunk colour bounds: no clipping
    assert_within(alpha(back), alpha(o), ALPHA + EPS, "alpha")
    assert_within(back.shN, np.clip(as_np(o.shN), -4, 4), CPLY_SH + EPS, "SH")


def test_compressed_ply_older_12_property_layout(tmp_path):
    """Older files have no chunk colour bounds; their packed_color RGB is the colour itself (byte / 255). Built
    here with plyfile from hand-packed words."""
    names = compressed_ply.CHUNK_PROPS[:12]
    chunk = np.array([(0, 0, 0, 1, 2, 3, -3, -3, -3, -1, -1, -1)], dtype=[(p, "<f4") for p in names])
    far, mid = (2047 << 21) | 2047, 1023 << 11  # 11/10/11 bits: (1, 0, 1) and (0, 1, 0) of each range
    half = 512  # 10-bit unorm of a zero component: (512/1023 - 0.5) * sqrt 2 = 0.0007
    rotations = [(half << 20) | (half << 10) | half, (half << 20) | (half << 10) | 1023]  # w largest; z = 1/sqrt 2
    colors = [(255 << 24) | (0 << 16) | (51 << 8) | 204, (0 << 24) | (255 << 16) | (102 << 8) | 51]
    vertex = np.array(list(zip([far, mid], rotations, [far, mid], colors)),
                      dtype=[(p, "<u4") for p in compressed_ply.VERTEX_PROPS])
    path = tmp_path / "old.ply"
    elements = [PlyElement.describe(chunk, "chunk"), PlyElement.describe(vertex, "vertex")]
    PlyData(elements, byte_order="<").write(str(path))
    assert detect_format(path) == "compressed-ply"
    g = read_splats(path)
    np.testing.assert_allclose(as_np(g.means), [[1, 0, 3], [0, 2, 0]], atol=1e-6)
    np.testing.assert_allclose(as_np(g.scales), [[-1, -3, -1], [-3, -1, -3]], atol=1e-6)
    np.testing.assert_allclose(_rgb(g), [[1, 0, 0.2], [0, 1, 0.4]], atol=1e-6)
    np.testing.assert_allclose(alpha(g), [0.8, 0.2], atol=1e-6)
    want = torch.tensor([[1.0, 0, 0, 0], [math.sqrt(0.5), 0, 0, math.sqrt(0.5)]])
    assert_within(angle(g.quats, want), 0.0, CPLY_ROTATION, "rotation angle")


def test_compressed_ply_chunks_are_spatially_compact(tmp_path):
    """What the Morton order is for: each 256-splat chunk covers a small part of the scene, so the 10-11 bits
    within its bounds are fine-grained. Chunking the same splats in their given (random) order would not."""
    g = random_gaussians(20_000, 0, seed=4)
    path = tmp_path / "m.compressed.ply"
    write_splats(g, path)
    lo, hi = _chunk_bounds(path, len(g))["pos"]
    unsorted = as_np(g.means)[: len(g) // 256 * 256].reshape(-1, 256, 3)
    unsorted_diagonal = np.linalg.norm(unsorted.max(axis=1) - unsorted.min(axis=1), axis=1)
    assert np.median(np.linalg.norm(hi - lo, axis=1)) < 0.5 * np.median(unsorted_diagonal)


@pytest.mark.parametrize("fmt,ext", [("compressed-ply", ".compressed.ply"), ("spz", ".spz")])
def test_sh_degree_option_drops_bands(tmp_path, fmt, ext):
    g = random_gaussians(300, 3, seed=5)
    write_splats(g, tmp_path / f"full{ext}")
    write_splats(g, tmp_path / f"d1{ext}", sh_degree=1)
    write_splats(g, tmp_path / f"d0{ext}", sh_degree=0)
    full, d1, d0 = (read_splats(tmp_path / f"{name}{ext}") for name in ("full", "d1", "d0"))
    assert (full.sh_degree, d1.sh_degree, d0.sh_degree) == (3, 1, 0)
    assert torch.equal(d1.shN, full.shN[:, :3]) and torch.equal(d0.means, full.means)
    sizes = [(tmp_path / f"{name}{ext}").stat().st_size for name in ("d0", "d1", "full")]
    assert sizes[0] < sizes[1] < sizes[2]
    with pytest.raises(SplatkitError, match="sh_degree"):
        write_splats(g, tmp_path / f"bad{ext}", sh_degree=4)


def test_spz_flags_and_fractional_bits(tmp_path):
    g = random_gaussians(50, 0, seed=2)
    write_splats(g, tmp_path / "aa.spz", antialiased=True, version=4)
    assert spz.read_spz_header(tmp_path / "aa.spz").antialiased
    assert not spz.read_spz_header(_write(tmp_path, g, "plain.spz")).antialiased
    # A scene reaching 5000 units does not fit 12 fractional bits in 24 (2047.9 max); 10 bits reach 8191.9.
    big = Gaussians(g.means.clamp(-10, 10) * 100 + 4000, g.scales, g.quats, g.opacities, g.sh0, g.shN)
    assert float(big.means.max()) == 5000
    write_splats(big, tmp_path / "big.spz")
    bits = spz.read_spz_header(tmp_path / "big.spz").fractional_bits
    assert bits == 10 and float(big.means.abs().max()) * 2**bits < 2**23
    back = read_splats(tmp_path / "big.spz")
    assert_within(back.means, big.means, 2.0 ** -(bits + 1) + 2 * F32 * np.abs(as_np(big.means)), "position")
    huge = Gaussians(g.means * 0 + 1e7, g.scales, g.quats, g.opacities, g.sh0, g.shN)
    with pytest.raises(SplatkitError, match="24-bit"):
        write_splats(huge, tmp_path / "huge.spz")


def test_spz_sh_flips_match_the_renderers_basis():
    """Flipping y and z (RDF <-> RUB) must map each SH basis function to +-itself with spz's FLIP_SH signs, so
    colours seen from mirrored directions are unchanged."""
    dirs = torch.nn.functional.normalize(torch.randn(200, 3, generator=torch.Generator().manual_seed(1)), dim=-1)
    basis, flipped = sh_basis(3, dirs), sh_basis(3, dirs * torch.tensor([1.0, -1.0, -1.0]))
    signs = torch.from_numpy(np.concatenate([[1.0], spz.FLIP_SH])).float()
    torch.testing.assert_close(flipped, basis * signs, atol=1e-6, rtol=0)


def test_written_layouts_follow_the_specs(tmp_path):
    """Read what the writers produce independently of splatkit's readers (plyfile, raw bytes), so a layout bug
    shared by a writer and its reader cannot hide behind a passing round trip."""
    g = random_gaussians(300, 3, seed=8)
    n = len(g)
    # compressed.ply: the exact element/property layout the PlayCanvas engine insists on; SH channel-major.
    ply = PlyData.read(str(_write(tmp_path, g, "m.compressed.ply")))
    assert [e.name for e in ply.elements] == ["chunk", "vertex", "sh"]
    assert [p.name for p in ply["chunk"].properties] == compressed_ply.CHUNK_PROPS
    assert [(p.name, p.val_dtype) for p in ply["vertex"].properties] == [(p, "u4") for p in compressed_ply.VERTEX_PROPS]
    assert [(p.name, p.val_dtype) for p in ply["sh"].properties] == [(f"f_rest_{i}", "u1") for i in range(45)]
    o = g.subset(torch.from_numpy(morton_order(as_np(g.means))))
    for k, c in [(0, 0), (0, 1), (14, 2), (3, 1)]:
        q = np.asarray(ply["sh"][f"f_rest_{c * 15 + k}"], np.float64)
        assert_within((q + 0.5) / 256 * 8 - 4, np.clip(as_np(o.shN[:, k, c]), -4, 4), CPLY_SH + EPS, f"f_rest {k},{c}")
    # spz v3: 16-byte header, then planar arrays; positions and SH in RUB, SH colour-innermost.
    raw = gzip.decompress(_write(tmp_path, g, "m.spz", sh1_bits=8, sh_rest_bits=8).read_bytes())
    assert raw[:4] == b"NGSP" and struct.unpack_from("<IIBBBB", raw, 4) == (3, n, 3, 12, 0, 0)
    pos = np.frombuffer(raw, np.uint8, 9 * n, 16).reshape(n, 3, 3).astype(np.int64)
    fixed = pos[..., 0] + (pos[..., 1] << 8) + (pos[..., 2] << 16)
    fixed = np.where(fixed >= 2**23, fixed - 2**24, fixed)
    np.testing.assert_array_equal(fixed, np.rint(as_np(g.means) * [1, -1, -1] * 4096))
    sh = np.frombuffer(raw, np.uint8, 45 * n, 16 + n * (9 + 1 + 3 + 3 + 4)).reshape(n, 15, 3)
    assert_within((sh - 128.0) / 128.0, np.clip(as_np(g.shN) * spz.FLIP_SH[:, None], -1, 127 / 128),
                   _spz_sh_bound(8) + EPS, "SH bytes")
    # spz v4: plaintext 32-byte header, a table of contents, then one zstd stream per array, holding v3's arrays.
    v4 = _write(tmp_path, g, "m4.spz", version=4, sh1_bits=8, sh_rest_bits=8).read_bytes()
    assert struct.unpack_from("<4sIIBBBBI", v4) == (b"NGSP", 4, n, 3, 12, 0, 6, 32)
    toc = np.frombuffer(v4, "<u8", 12, 32).reshape(6, 2)
    ends = 32 + 6 * 16 + np.cumsum(toc[:, 0])
    arrays = [zstandard.ZstdDecompressor().decompress(v4[end - size:end]) for size, end in zip(toc[:, 0], ends)]
    assert [len(a) for a in arrays] == list(toc[:, 1]) and ends[-1] == len(v4)
    assert b"".join(arrays) == raw[16:]
    # .splat: the rotation bytes are w, x, y, z.
    rec = np.frombuffer(_write(tmp_path, g, "m.splat").read_bytes(), np.uint8).reshape(n, 32)
    first = int(np.argmax(as_np(g.scales).sum(axis=1) + np.log(alpha(g))))
    want = as_np(g.activated_quats[first]) * 128 + 128
    assert_within(rec[0, 28:32], np.clip(want, 0, 255), 0.5 + EPS, "rotation bytes")


# ---------------------------------------------------------------- registry


def test_detection_goes_by_content_not_extension(tmp_path):
    g = random_gaussians(300, 1, seed=3)
    files = {"ply": _write(tmp_path, g, "a.ply"), "compressed-ply": _write(tmp_path, g, "a.compressed.ply"),
             "spz": _write(tmp_path, g, "a.spz"), "splat": _write(tmp_path, g, "a.splat")}
    v4 = _write(tmp_path, g, "v4.spz", version=4)
    for fmt, path in files.items():
        assert detect_format(path) == fmt
    assert detect_format(v4) == "spz"
    # renamed files keep their format (.splat alone has no magic, so it needs its extension)
    for fmt in ("ply", "compressed-ply", "spz"):
        renamed = tmp_path / f"renamed-{fmt}.bin"
        renamed.write_bytes(files[fmt].read_bytes())
        assert detect_format(renamed) == fmt
        assert len(read_splats(renamed)) == 300
    plain = tmp_path / "looks-plain.ply"
    plain.write_bytes(files["compressed-ply"].read_bytes())
    assert detect_format(plain) == "compressed-ply"
    unknown = tmp_path / "a.bin"
    unknown.write_bytes(files["splat"].read_bytes())
    expect_error(unknown, "unrecognised", reader=read_splats)


def test_format_names_extensions_and_options(tmp_path):
    assert format_from_extension("x/scene.PLY") == "ply"
    assert format_from_extension("scene.compressed.ply") == "compressed-ply"
    assert format_from_extension("scene.spz") == "spz" and format_from_extension("s.splat") == "splat"
    with pytest.raises(SplatkitError, match="extension"):
        format_from_extension("scene.glb")
    assert write_options("splat") == [] and write_options("ply") == ["sh_degree"]
    assert set(write_options("spz")) == {"version", "sh_degree", "antialiased", "sh1_bits", "sh_rest_bits"}
    g = random_gaussians(10, 1)
    write_splats(g, tmp_path / "named.bin", format="spz")
    assert detect_format(tmp_path / "named.bin") == "spz"
    for bad in [dict(format="glb"), dict(format="splat", sh_degree=0), dict(format="spz", version=2),
                dict(format="spz", sh1_bits=9), dict(format="ply", quality=3)]:
        with pytest.raises(SplatkitError) as info:
            write_splats(g, tmp_path / "out.bin", **bad)
        assert str(tmp_path / "out.bin") in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "out.bin").exists()


@pytest.mark.parametrize("name", ["a.ply", "a.compressed.ply", "a.spz", "a.splat", "a.sog", "a.spkz"])
def test_writes_are_atomic_and_refuse_unwritable_models(tmp_path, name):
    path = _write(tmp_path, random_gaussians(20, 1), name)
    before = path.read_bytes()
    bad = random_gaussians(20, 1)
    bad.means[3, 1] = float("nan")
    for g in (bad, random_gaussians(0, 1)):
        with pytest.raises(SplatkitError):
            write_splats(g, path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # no temporary left behind


# ---------------------------------------------------------------- malformed files (fuzzed in test_fuzz_readers.py)


@pytest.fixture(scope="module")
def valid(tmp_path_factory):
    """Small valid files of every format (20 splats, SH degree 1; 300 splats for two compressed chunks)."""
    d = tmp_path_factory.mktemp("valid")
    small, two_chunks = random_gaussians(20, 1, seed=9), random_gaussians(300, 1, seed=9)
    files = {"splat": _write(d, small, "m.splat"), "spz-v3": _write(d, small, "v3.spz"),
             "spz-v4": _write(d, small, "v4.spz", version=4),
             "compressed-ply": _write(d, two_chunks, "m.compressed.ply")}
    files["spz-raw"] = d / "raw.spz"  # an un-gzipped legacy payload
    files["spz-raw"].write_bytes(gzip.decompress(files["spz-v3"].read_bytes()))
    return {k: p.read_bytes() for k, p in files.items()}


READER = {"splat": read_splats, "spz-v3": spz.load_spz, "spz-v4": spz.load_spz, "spz-raw": spz.load_spz,
          "compressed-ply": compressed_ply.load_compressed_ply}
SUFFIX = {"splat": ".splat", "compressed-ply": ".compressed.ply"}


def _put(tmp_path, kind, data):
    path = tmp_path / f"bad{SUFFIX.get(kind, '.spz')}"
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("kind", list(READER))
def test_truncated_files(tmp_path, valid, kind):
    data = valid[kind]
    cuts = {0, 3, 10, 20, 31, 33, 100, len(data) // 2, len(data) - 1}
    if kind == "compressed-ply":
        cuts |= {data.index(b"end_header"), data.index(b"end_header") + 11}
    for cut in sorted(c for c in cuts if c < len(data) and not (kind == "splat" and c and c % 32 == 0)):
        expect_error(_put(tmp_path, kind, data[:cut]), reader=READER[kind])


def test_missing_file(tmp_path):
    for reader in (read_splats, spz.load_spz, compressed_ply.load_compressed_ply, detect_format):
        expect_error(tmp_path / "nope.spz", "no such file", reader=reader)


def test_splat_bad_sizes_and_values(tmp_path, valid):
    data = valid["splat"]
    expect_error(_put(tmp_path, "splat", data + b"\0" * 5), "32")
    for offset, value, word in [(4, np.nan, "NaN"), (0, np.inf, "NaN"), (12, 0.0, "scale"), (16, -1.0, "scale"),
                                (20, np.inf, "scale")]:
        bad = bytearray(data)
        bad[32 + offset:32 + offset + 4] = struct.pack("<f", value)
        expect_error(_put(tmp_path, "splat", bytes(bad)), word)


def _ply_header_with(data, old, new):
    assert old in data
    return data.replace(old, new, 1)


def test_compressed_ply_wrong_counts_and_layout(tmp_path, valid):
    data = valid["compressed-ply"]
    cases = [
        (b"element vertex 300", b"element vertex 301", "300 rows for 301"),
        (b"element vertex 300", b"element vertex 299", "300 rows for 299"),
        (b"element vertex 300", b"element vertex 1000", "chunks"),
        (b"element chunk 2", b"element chunk 3", "chunks"),
        (b"element sh 300", b"element sh 299", "sh element"),
        (b"property uint packed_rotation", b"property float packed_rotation", "vertex element"),
        (b"property float max_b", b"property float max_q", "chunk element"),
        (b"property uchar f_rest_8", b"property uchar f_rest_9", "sh element"),
        (b"binary_little_endian", b"binary_big_endian", "binary_little_endian"),
        (b"element chunk 2", b"element chunks 2", "elements"),
        (b"ply\n", b"plx\n", "not a PLY"),
        (b"end_header", b"end_headr", "end_header"),
        (b"element vertex 300", b"element vertex 1000000000000", "chunks"),  # absurd, and rejected cheaply
    ]
    for old, new, word in cases:
        expect_error(_put(tmp_path, "compressed-ply", _ply_header_with(data, old, new)), word,
                      reader=compressed_ply.load_compressed_ply)
    # counts that agree with each other but claim 10^12 splats: the file size check rejects it before allocating
    claim = data
    for old, new in [(b"vertex 300", b"vertex 1000000000000"), (b"chunk 2", b"chunk 3906250000"),
                     (b"sh 300", b"sh 1000000000000")]:
        claim = _ply_header_with(claim, b"element " + old, b"element " + new)
    expect_error(_put(tmp_path, "compressed-ply", claim), "header describes")
    body = data.index(b"end_header\n") + 11
    bad = bytearray(data)
    bad[body + 4:body + 8] = struct.pack("<f", np.nan)  # min_y of chunk 0
    expect_error(_put(tmp_path, "compressed-ply", bytes(bad)), "NaN")


def test_absurd_inria_ply_header(tmp_path):
    names = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1", "scale_2",
             "rot_0", "rot_1", "rot_2", "rot_3"]
    header = "ply\nformat binary_little_endian 1.0\nelement vertex 1000000000000\n"
    header += "".join(f"property float {n}\n" for n in names) + "end_header\n"
    path = tmp_path / "absurd.ply"
    path.write_bytes(header.encode() + bytes(14 * 4 * 10))
    expect_error(path)


def _with_legacy_header(payload, **fields):
    magic, version, n, degree, bits, flags, reserved = spz.LEGACY_HEADER.unpack_from(payload)
    values = dict(magic=magic, version=version, n=n, degree=degree, bits=bits, flags=flags)
    values.update(fields)
    return spz.LEGACY_HEADER.pack(*values.values(), reserved) + payload[spz.LEGACY_HEADER.size:]


def test_spz_legacy_bad_headers(tmp_path, valid):
    raw = valid["spz-raw"]
    cases = [  # header fields, then the words expected for the gzip form and for the raw form
        (dict(magic=b"NGSQ"), "magic", "magic"), (dict(version=1), "version 1", "version 1"),
        (dict(version=5), "version 5", "version 5"), (dict(n=21), "truncated", "truncated"),
        (dict(n=19), "unexpected data", "unexpected data"), (dict(n=0), "no splats", "no splats"),
        (dict(n=2**32 - 1), "claims", "truncated"), (dict(degree=4), "SH degree 4", "SH degree 4"),
        (dict(degree=2), "truncated", "truncated"), (dict(bits=40), "fractional bits", "fractional bits"),
        (dict(version=2), "unexpected data", "unexpected data"),  # v2 rotations are 3 bytes, not 4
    ]
    for fields, gz_word, raw_word in cases:
        payload = _with_legacy_header(raw, **fields)
        expect_error(_put(tmp_path, "spz-v3", gzip.compress(payload)), gz_word, reader=spz.load_spz)
        expect_error(_put(tmp_path, "spz-raw", payload), raw_word, reader=spz.load_spz)
    expect_error(_put(tmp_path, "spz-v3", gzip.compress(_with_legacy_header(raw, version=4))), "gzip",
                  reader=spz.load_spz)
    corrupt = bytearray(valid["spz-v3"])
    corrupt[-6] ^= 0xFF  # inside the CRC / size trailer
    expect_error(_put(tmp_path, "spz-v3", bytes(corrupt)), "gzip", reader=spz.load_spz)
    expect_error(_put(tmp_path, "spz-v3", b"\x1f\x8b" + bytes(30)), "gzip", reader=spz.load_spz)


def test_spz_gzip_bomb_is_refused_without_inflating_it(tmp_path, valid):
    """A stream that inflates to far more than its header's point count allows is cut off at that count."""
    raw = _with_legacy_header(valid["spz-raw"], flags=0)
    bomb = gzip.compress(raw + bytes(50_000_000), compresslevel=9)  # 50 MB of trailing zeros in ~50 kB
    expect_error(_put(tmp_path, "spz-v3", bomb), "unexpected data", reader=spz.load_spz)


def _with_v4_header(data, **fields):
    names = ["magic", "version", "n", "degree", "bits", "flags", "streams", "toc"]
    values = dict(zip(names, spz.V4_HEADER.unpack_from(data)))
    values.update(fields)
    return spz.V4_HEADER.pack(*values.values()) + data[spz.V4_HEADER.size:]


def test_spz_v4_bad_headers(tmp_path, valid):
    data = valid["spz-v4"]
    cases = [
        (dict(magic=b"NGSQ"), "not an SPZ"), (dict(n=21), "stream 0 holds"), (dict(n=0), "no splats"),
        (dict(n=2**32 - 1), "claims"), (dict(degree=4), "SH degree 4"), (dict(degree=0), "streams"),
        (dict(streams=5), "streams"), (dict(toc=16), "table of contents"), (dict(toc=10**6), "table of contents"),
        (dict(toc=48), "stream"), (dict(bits=24), "fractional bits"),
    ]
    for fields, word in cases:
        expect_error(_put(tmp_path, "spz-v4", _with_v4_header(data, **fields)), word, reader=spz.load_spz)
    expect_error(_put(tmp_path, "spz-v4", data + b"\0"), "unexpected data", reader=spz.load_spz)
    toc = bytearray(data)
    struct.pack_into("<Q", toc, 32, struct.unpack_from("<Q", data, 32)[0] - 1)  # stream 0 one byte short
    expect_error(_put(tmp_path, "spz-v4", bytes(toc)), "stream", reader=spz.load_spz)
    stream0 = 32 + 16 * 6
    corrupt = bytearray(data)
    corrupt[stream0:stream0 + 4] = b"\0\0\0\0"  # zstd frame magic
    expect_error(_put(tmp_path, "spz-v4", bytes(corrupt)), "zstd", reader=spz.load_spz)
