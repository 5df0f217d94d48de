"""INRIA-layout PLY I/O: exact round trips, real files read against an independent plyfile/numpy reading,
header layout, and malformed inputs raising a `SplatkitError` that names the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from plyfile import PlyData, PlyElement

from splatkit.errors import SplatkitError
from splatkit.io.ply import load_ply, save_ply
from splatkit.model.gaussians import Gaussians

DATASETS = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
INRIA = DATASETS / "inria_ply_sh3_9k" / "point_cloud_iter7000.ply"
DONUT = DATASETS / "mipsplat_donut_sh0" / "fused.ply"


def _random(n, degree, seed=0):
    g = torch.Generator().manual_seed(seed)
    return Gaussians(
        means=torch.randn(n, 3, generator=g) * 10,
        scales=torch.randn(n, 3, generator=g) - 3,
        quats=torch.randn(n, 4, generator=g),
        opacities=torch.randn(n, generator=g) * 4,
        sh0=torch.randn(n, 1, 3, generator=g),
        shN=torch.randn(n, (degree + 1) ** 2 - 1, 3, generator=g),
    )


def _inria_names(n_rest):
    return (["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"] + [f"f_rest_{i}" for i in range(n_rest)]
            + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"])


def _write(path, columns: dict[str, np.ndarray], text=False):
    """A PLY with one float32 vertex property per entry of `columns`, in the dict's order."""
    n = len(next(iter(columns.values())))
    v = np.empty(n, dtype=[(k, "<f4") for k in columns])
    for k, c in columns.items():
        v[k] = c
    PlyData([PlyElement.describe(v, "vertex")], text=text, byte_order="<").write(str(path))


def _columns(n, degree, seed=0, normals=True):
    rng = np.random.default_rng(seed)
    n_rest = 3 * ((degree + 1) ** 2 - 1)
    names = _inria_names(n_rest)
    if not normals:
        names = [k for k in names if k not in ("nx", "ny", "nz")]
    return {k: rng.normal(size=n).astype(np.float32) for k in names}


def _assert_matches_columns(g: Gaussians, cols: dict[str, np.ndarray], degree: int):
    """Compare a loaded model with raw property columns read independently (channel-major f_rest)."""
    stack = lambda *ks: np.stack([np.asarray(cols[k], np.float32) for k in ks], axis=1)  # noqa: E731
    np.testing.assert_array_equal(g.means.numpy(), stack("x", "y", "z"))
    np.testing.assert_array_equal(g.scales.numpy(), stack("scale_0", "scale_1", "scale_2"))
    np.testing.assert_array_equal(g.quats.numpy(), stack("rot_0", "rot_1", "rot_2", "rot_3"))
    np.testing.assert_array_equal(g.opacities.numpy(), np.asarray(cols["opacity"], np.float32))
    np.testing.assert_array_equal(g.sh0.numpy()[:, 0, :], stack("f_dc_0", "f_dc_1", "f_dc_2"))
    k_rest = (degree + 1) ** 2 - 1
    assert g.shN.shape == (len(g), k_rest, 3)
    assert g.sh_degree == degree
    for c in range(3):
        for k in range(k_rest):
            np.testing.assert_array_equal(g.shN[:, k, c].numpy(), np.asarray(cols[f"f_rest_{c * k_rest + k}"]),
                                          err_msg=f"shN[:, {k}, {c}] != f_rest_{c * k_rest + k}")
    for t in g.as_dict().values():
        assert t.dtype == torch.float32


# ---------------------------------------------------------------- round trip and layout


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_round_trip_is_exact(tmp_path, degree):
    g = _random(257, degree, seed=degree)
    path = tmp_path / f"sh{degree}.ply"
    save_ply(g, path)
    back = load_ply(path)
    assert back.sh_degree == degree
    for name, value in g.as_dict().items():
        got = getattr(back, name)
        assert got.shape == value.shape, name
        assert got.dtype == torch.float32, name
        assert torch.equal(got, value), name
    assert [p.name for p in tmp_path.iterdir()] == [f"sh{degree}.ply"]  # no temporary left behind


def test_round_trip_of_a_model_with_grad_and_overwrite(tmp_path):
    g = _random(10, 3)
    g = Gaussians.from_dict({k: v.clone().requires_grad_() for k, v in g.as_dict().items()})
    path = tmp_path / "m.ply"
    save_ply(_random(5, 1, seed=3), path)
    save_ply(g, path)  # replaces the old file
    back = load_ply(path)
    assert len(back) == 10 and back.sh_degree == 3
    assert torch.equal(back.shN, g.shN.detach())


@pytest.mark.parametrize("degree", [0, 1, 3])
def test_written_header_matches_inria_layout(tmp_path, degree):
    path = tmp_path / "h.ply"
    g = _random(7, degree)
    save_ply(g, path)
    raw = path.read_bytes()
    header = raw[: raw.index(b"end_header\n") + len(b"end_header\n")].decode("ascii").splitlines()
    n_rest = 3 * ((degree + 1) ** 2 - 1)
    expected = (["ply", "format binary_little_endian 1.0", "element vertex 7"]
                + [f"property float {name}" for name in _inria_names(n_rest)] + ["end_header"])
    assert [line for line in header if not line.startswith(("comment", "obj_info"))] == expected
    n_props = 17 + n_rest
    assert len(raw) - len("\n".join(header)) - 1 == 7 * n_props * 4  # nothing but the float32 body follows
    # Body written channel-major and with zero normals, as INRIA's writer does.
    body = np.frombuffer(raw[len("\n".join(header)) + 1:], "<f4").reshape(7, n_props)
    assert (body[:, 3:6] == 0).all()
    k_rest = n_rest // 3
    for c in range(3):
        np.testing.assert_array_equal(body[:, 9 + c * k_rest: 9 + (c + 1) * k_rest], g.shN[:, :, c].numpy())
    np.testing.assert_array_equal(body[:, -4:], g.quats.numpy())
    np.testing.assert_array_equal(body[:, 9 + n_rest], g.opacities.numpy())


# ---------------------------------------------------------------- reading


def test_file_without_normals_loads(tmp_path):
    cols = _columns(50, 2, normals=False)
    _write(tmp_path / "nonormals.ply", cols)
    _assert_matches_columns(load_ply(tmp_path / "nonormals.ply"), cols, 2)


def test_ascii_ply_loads(tmp_path):
    cols = _columns(20, 1, seed=4)
    _write(tmp_path / "ascii.ply", cols, text=True)
    _assert_matches_columns(load_ply(tmp_path / "ascii.ply"), cols, 1)


@pytest.mark.parametrize("degree", [1, 2, 3])
def test_shuffled_property_order_loads_in_numeric_order(tmp_path, degree):
    cols = _columns(40, degree, seed=degree)
    names = list(cols)
    rng = np.random.default_rng(1)
    shuffled = [names[i] for i in rng.permutation(len(names))]
    # also make sure f_rest_10 comes before f_rest_2 (lexicographic order) when degree > 1
    _write(tmp_path / "shuffled.ply", {k: cols[k] for k in shuffled})
    _assert_matches_columns(load_ply(tmp_path / "shuffled.ply"), cols, degree)
    rest = sorted((k for k in names if k.startswith("f_rest_")), key=str)
    _write(tmp_path / "lexical.ply", {**{k: cols[k] for k in names if not k.startswith("f_rest_")},
                                      **{k: cols[k] for k in rest}})
    _assert_matches_columns(load_ply(tmp_path / "lexical.ply"), cols, degree)


def _read_independently(path):
    ply = PlyData.read(str(path))
    v = ply["vertex"].data
    return {name: np.asarray(v[name]) for name in v.dtype.names}, [p.name for p in ply["vertex"].properties]


def test_reads_real_inria_sh3_file():
    if not INRIA.is_file():
        pytest.skip(f"{INRIA} is not available")
    cols, names = _read_independently(INRIA)
    assert names == _inria_names(45)
    g = load_ply(INRIA)
    assert len(g) == 9080 and g.sh_degree == 3
    _assert_matches_columns(g, cols, 3)
    # the channel-major layout, spelled out once: shN[:, k, c] is f_rest_{c*15+k}
    np.testing.assert_array_equal(g.shN[:, 0, 1].numpy(), cols["f_rest_15"])
    np.testing.assert_array_equal(g.shN[:, 14, 2].numpy(), cols["f_rest_44"])
    np.testing.assert_array_equal(g.shN[:, 1, 0].numpy(), cols["f_rest_1"])
    # numbers from the dataset's SOURCE.md
    bbox_lo, bbox_hi = g.means.min(0).values.numpy(), g.means.max(0).values.numpy()
    np.testing.assert_allclose(bbox_lo, [-410, -406, -292], atol=1.5)
    np.testing.assert_allclose(bbox_hi, [471, 337, 1004], atol=1.5)
    assert abs(float(g.activated_scales[:, 0].median()) - 20.7) < 0.5
    assert abs(float(g.activated_opacities.median()) - 0.06) < 0.01


def test_reads_real_mipsplat_donut_sh0_file(tmp_path):
    if not DONUT.is_file():
        pytest.skip(f"{DONUT} is not available")
    cols, names = _read_independently(DONUT)
    assert "nx" not in names and not any(n.startswith("f_rest") for n in names)
    g = load_ply(DONUT)
    assert len(g) == 45624 and g.sh_degree == 0 and g.shN.shape == (45624, 0, 3)
    _assert_matches_columns(g, cols, 0)
    assert abs(float(g.activated_opacities.median()) - 0.65) < 0.01
    assert abs(float(g.activated_opacities.mean()) - 0.59) < 0.01
    # re-saving gives the INRIA layout (with normals) and the same values
    save_ply(g, tmp_path / "donut.ply")
    _assert_matches_columns(load_ply(tmp_path / "donut.ply"), cols, 0)


# ---------------------------------------------------------------- malformed files


def _expect_error(path, *words):
    with pytest.raises(SplatkitError) as info:
        load_ply(path)
    message = str(info.value)
    assert str(path) in message, message
    for w in words:
        assert w in message, message
    return message


def test_missing_file(tmp_path):
    _expect_error(tmp_path / "nope.ply")


def test_not_a_ply(tmp_path):
    p = tmp_path / "not.ply"
    p.write_text("hello, I am not a point cloud\n")
    _expect_error(p)
    p2 = tmp_path / "empty.ply"
    p2.write_bytes(b"")
    _expect_error(p2)
    p3 = tmp_path / "garbage.ply"
    p3.write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    _expect_error(p3)


@pytest.mark.parametrize("cut", [1, 100, 1000])
def test_truncated_body(tmp_path, cut):
    p = tmp_path / "trunc.ply"
    save_ply(_random(100, 3), p)
    data = p.read_bytes()
    p.write_bytes(data[:-cut])
    _expect_error(p)


def test_truncated_header(tmp_path):
    p = tmp_path / "trunc_header.ply"
    save_ply(_random(10, 1), p)
    data = p.read_bytes()
    p.write_bytes(data[: data.index(b"end_header") - 5])
    _expect_error(p)


@pytest.mark.parametrize("drop", ["opacity", "rot_3", "x", "f_dc_2", "scale_1"])
def test_missing_properties(tmp_path, drop):
    cols = _columns(10, 1)
    del cols[drop]
    p = tmp_path / "missing.ply"
    _write(p, cols)
    _expect_error(p, drop)


def test_no_vertex_element(tmp_path):
    p = tmp_path / "faces.ply"
    face = np.empty(2, dtype=[("x", "<f4")])
    face["x"] = 1
    PlyData([PlyElement.describe(face, "face")]).write(str(p))
    _expect_error(p)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("where", ["x", "f_rest_7", "opacity", "rot_0"])
def test_non_finite_values(tmp_path, bad, where):
    cols = _columns(10, 1)
    cols[where][4] = bad
    p = tmp_path / "nan.ply"
    _write(p, cols)
    _expect_error(p, "NaN")


@pytest.mark.parametrize("n_rest", [3, 6, 12, 18, 30, 4, 72])
def test_f_rest_count_matching_no_supported_degree(tmp_path, n_rest):
    # 3 -> 2 bases, 6 -> 3, 12 -> 5, 18 -> 7, 30 -> 11 (no degree); 4 (not a multiple of 3); 72 -> degree 4
    cols = _columns(10, 0)
    rng = np.random.default_rng(0)
    cols.update({f"f_rest_{i}": rng.normal(size=10).astype(np.float32) for i in range(n_rest)})
    p = tmp_path / "rest.ply"
    _write(p, cols)
    _expect_error(p, "f_rest" if n_rest != 72 else "degree")


def test_f_rest_with_gaps_in_numbering(tmp_path):
    # 9 properties (a valid count) but numbered 0..7 and 9: f_rest_8 is missing, so the channel-major
    # layout cannot be recovered; loading it silently would shift f_rest_9 into f_rest_8's slot.
    cols = _columns(10, 1)
    cols["f_rest_9"] = cols.pop("f_rest_8")
    p = tmp_path / "gap.ply"
    _write(p, cols)
    _expect_error(p)


def test_error_is_one_line_with_path_first(tmp_path):
    p = tmp_path / "bad.ply"
    p.write_text("ply\nformat ascii 1.0\nelement vertex 2\nproperty float x\nend_header\n1\n")
    message = _expect_error(p)
    assert message.startswith(str(p))
