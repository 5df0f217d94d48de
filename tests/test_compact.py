"""The compact model file (.spkz): an EAGLES model round-trips exactly (the same render, bit for bit), latent
streams cost what their empirical entropy says (computed here independently with scipy), rare values survive
the escape path, a frame change folds into the decoders, the positions' grid keeps its derived error bound, and
damaged files get one line."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import scipy.stats
import torch
from scipy.spatial import cKDTree

from splatkit.cli import main
from splatkit.data.cameras import Camera
from splatkit.data.scene import Similarity
from splatkit.errors import SplatkitError
from splatkit.io.compact import encode_latents, load_compact, read_compact, save_compact, write_compact
from splatkit.io.formats import detect_format
from splatkit.model.gaussians import init_from_points
from splatkit.model.quantized import GRID_STEPS, POSITION_BITS, quantize
from splatkit.render import rasterize
from splatkit.train.gaussian_model import GaussianModel
from splatkit.train.learning_rates import LearningRates
from splatkit.train.parameterisations import EaglesQuantized
from splatkit.train.run_record import read_run


def _eagles_model(n: int = 3000, seed: int = 0, coded=("shN", "quats", "opacities")):
    """An EAGLES model with spread-out latents (as after training) around a unit sphere."""
    rng = np.random.default_rng(seed)
    points = rng.normal(size=(n, 3))
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    init = init_from_points(points, rng.uniform(size=(n, 3)), sh_degree=3, seed=seed)
    parameterisation = EaglesQuantized(coded=coded)
    model = GaussianModel(parameterisation)
    parameterisation.create(model, init, LearningRates(), scene_extent=1.0)
    with torch.no_grad():
        for name in coded:
            latents = model.params[f"{name}_latents"]
            latents.add_(torch.from_numpy(rng.laplace(0.0, 3.0, latents.shape).round()).float())
        if "shN" in coded:
            model.params["shN_decoder"].mul_(100.0)  # visible view-dependent colour
    return model, parameterisation


def _camera() -> Camera:
    return Camera.from_pose("c", np.eye(3), np.array([0.2, -0.1, -3.5]), math.radians(50), 96, 72)


def test_an_eagles_model_round_trips_bit_for_bit(tmp_path):
    model, parameterisation = _eagles_model()
    q = parameterisation.quantized(model)
    assert q.attributes["quats"].latents.shape == (3000, 8) and q.attributes["scales"].latents.shape == (3000, 3)
    save_compact(q, tmp_path / "m.spkz")
    back = load_compact(tmp_path / "m.spkz")
    assert torch.equal(back.means_grid, q.means_grid)
    for name, value in q.attributes.items():
        for part in ("latents", "matrix", "bias"):
            assert torch.equal(getattr(back.attributes[name], part), getattr(value, part)), (name, part)
    ours, theirs = q.decoded(), read_compact(tmp_path / "m.spkz")
    for name, value in ours.as_dict().items():
        assert torch.equal(value, getattr(theirs, name)), name
    a = rasterize(ours, _camera(), sh_degree=3, backend="native").rgb
    b = rasterize(theirs, _camera(), sh_degree=3, backend="native").rgb
    assert a.std() > 0.01 and torch.equal(a, b)


def test_the_shipped_model_is_the_trained_one_within_the_files_precision():
    model, parameterisation = _eagles_model()
    trained, shipped = model.gaussians(), parameterisation.quantized(model).decoded()
    # The file keeps Gaussians in spatial (Morton) order: pair each shipped one with its nearest trained one.
    order = torch.from_numpy(cKDTree(trained.means.numpy()).query(shipped.means.numpy())[1])
    assert sorted(order.tolist()) == list(range(len(trained)))
    trained = trained.subset(order)
    for name in ("shN", "quats", "opacities"):  # latent-coded: exactly what training decodes
        assert torch.equal(getattr(shipped, name), getattr(trained, name)), name
    for name in ("scales", "sh0"):  # on their uniform grids: within half a step
        error = (getattr(shipped, name) - getattr(trained, name)).abs()
        assert (error <= 0.5 * GRID_STEPS[name] * (1 + 1e-5)).all(), name
    # Positions: nearest point of a 16-bit grid over t = sign(x) log(1 + |x|): at most half a step in t.
    t = lambda x: torch.sign(x.double()) * torch.log1p(x.double().abs())  # noqa: E731
    span = t(trained.means).max(0).values - t(trained.means).min(0).values
    error = (t(shipped.means) - t(trained.means)).abs()
    assert (error <= 0.5 * span / (2**POSITION_BITS - 1) + 1e-6).all()


def test_latent_streams_cost_their_empirical_entropy_within_two_percent():
    rng = np.random.default_rng(3)
    latents = np.stack([np.round(rng.laplace(0, s, 200_000)) for s in (0.3, 1.0, 4.0, 20.0)], axis=1)
    stream, table, escaped = encode_latents(latents.astype(np.int64))
    entropy_bits = 0.0
    for column in latents.T:  # scipy's entropy of the column's value frequencies; rare values as one symbol
        values, counts = np.unique(column, return_counts=True)
        rare = counts <= 1e-4 * len(column)
        kept = np.append(counts[~rare], counts[rare].sum())
        entropy_bits += scipy.stats.entropy(kept[kept > 0], base=2) * len(column)
    assert abs(len(stream) - entropy_bits / 8) <= 0.02 * entropy_bits / 8
    assert len(table) + len(escaped) < 0.02 * len(stream)


def test_rare_values_are_escaped_and_come_back(tmp_path):
    model, parameterisation = _eagles_model(n=20_000, coded=("opacities",))
    with torch.no_grad():  # a few outliers, each alone (rarer than 1 in 10,000)
        model.params["opacities_latents"][[5, 77, 19_999]] = torch.tensor([[900.0], [-4_000.0], [123_456.0]])
    q = parameterisation.quantized(model)
    save_compact(q, tmp_path / "m.spkz")
    back = load_compact(tmp_path / "m.spkz").attributes["opacities"].latents
    assert torch.equal(back, q.attributes["opacities"].latents)
    assert {900.0, -4_000.0, 123_456.0} <= set(back[:, 0].tolist())


def test_a_frame_change_folds_into_the_decoders():
    model, parameterisation = _eagles_model(n=500, coded=("shN", "quats", "opacities", "scales"))
    q = parameterisation.quantized(model)
    rotation = torch.tensor([[0.36, 0.48, -0.8], [-0.8, 0.6, 0.0], [0.48, 0.64, 0.6]], dtype=torch.float64)
    t = Similarity(2.5, np.array([0.1, -0.2, 0.3]), rotation.numpy())
    moved, expected = q.transformed(t), q.decoded().transformed(t)
    got = moved.decoded()
    order = torch.from_numpy(cKDTree(expected.means.numpy()).query(got.means.numpy())[1])  # spatial order
    assert sorted(order.tolist()) == list(range(len(q)))
    expected = expected.subset(order)
    for name in ("shN", "quats", "opacities", "scales"):  # no latent changed
        assert torch.equal(moved.attributes[name].latents, q.attributes[name].latents[order])
    torch.testing.assert_close(got.shN, expected.shN, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(torch.nn.functional.normalize(got.quats, dim=-1),
                               torch.nn.functional.normalize(expected.quats, dim=-1), atol=1e-5, rtol=0)
    torch.testing.assert_close(got.scales, expected.scales, atol=1e-5, rtol=0)
    torch.testing.assert_close(got.means, expected.means, atol=1e-3, rtol=1e-4)


def test_any_model_writes_on_uniform_grids_and_with_fewer_bands(tmp_path):
    rng = np.random.default_rng(0)
    g = init_from_points(rng.normal(size=(400, 3)), rng.uniform(size=(400, 3)), sh_degree=3)
    g.shN.normal_(0, 0.1)
    write_compact(g, tmp_path / "m.spkz", sh_degree=1)
    back = read_compact(tmp_path / "m.spkz")
    order = torch.from_numpy(cKDTree(g.means.numpy()).query(back.means.numpy())[1])
    assert sorted(order.tolist()) == list(range(len(g)))
    g = g.subset(order)

    def on_grid(values: torch.Tensor, step: float) -> torch.Tensor:
        return (torch.round(values.double() / step) * step).float()

    assert back.sh_degree == 1
    torch.testing.assert_close(back.shN, on_grid(g.shN[:, :3], GRID_STEPS["shN"]), rtol=1e-6, atol=0)
    torch.testing.assert_close(back.opacities, on_grid(g.opacities, GRID_STEPS["opacities"]), rtol=1e-6, atol=0)
    unit = torch.nn.functional.normalize(g.quats, dim=-1)  # rotations kept, not the quaternions' lengths
    torch.testing.assert_close(back.quats, on_grid(unit, GRID_STEPS["quats"]), rtol=1e-6, atol=0)
    shipped = quantize(g).with_sh_degree(1).decoded()
    assert torch.equal(back.means, shipped.means)


@pytest.mark.parametrize("damage, message", [
    (lambda b: b[:3], "no SPKZ magic"),
    (lambda b: b"XXXX" + b[4:], "no SPKZ magic"),
    (lambda b: b[:4] + bytes([9]) + b[5:], "version 9"),
    (lambda b: b[:-10], "truncated"),
    (lambda b: b + b"\0", "padded"),
    (lambda b: b[:9] + b"[" + b[10:], "corrupt header"),
])
def test_a_damaged_file_gets_one_line(tmp_path, damage, message):
    model, parameterisation = _eagles_model(n=300)
    save_compact(parameterisation.quantized(model), tmp_path / "m.spkz")
    (tmp_path / "bad.spkz").write_bytes(damage((tmp_path / "m.spkz").read_bytes()))
    with pytest.raises(SplatkitError, match=message) as info:
        read_compact(tmp_path / "bad.spkz")
    assert "bad.spkz" in str(info.value) and "\n" not in str(info.value)


def test_a_damaged_latent_table_gets_one_line(tmp_path):
    model, parameterisation = _eagles_model(n=300, coded=("opacities",))
    path = tmp_path / "m.spkz"
    save_compact(parameterisation.quantized(model), path)
    data = bytearray(path.read_bytes())
    refused = 0
    for offset in range(len(data) - 200, len(data), 7):  # flip bytes across the last sections, one at a time
        damaged = bytearray(data)
        damaged[offset] ^= 0x5A
        (tmp_path / "bad.spkz").write_bytes(bytes(damaged))
        try:
            read_compact(tmp_path / "bad.spkz")  # a flip inside a decoder's floats still reads (other values)
        except SplatkitError as exc:
            assert "\n" not in str(exc) and "bad.spkz" in str(exc)
            refused += 1
    assert refused >= 5  # the tables, streams and escapes behind them are checked, not taken on trust


def test_train_quantize_then_export_info_and_eval_the_compact_file(tiny_scene, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", str(tiny_scene), "--out", str(run), "--steps", "60", "--quantize", "--log-every", "20",
                 "--backend", "native", "--eval-steps"]) == 0
    config = json.loads((run / "config.json").read_text())["config"]
    assert config["parameterisation"]["name"] == "eagles" and config["coarse_to_fine"]
    log = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert sum(line["influence_pruned"] for line in log) > 0
    out = tmp_path / "m.spkz"
    assert main(["export", str(run), "--format", "compact", "-o", str(out)]) == 0
    assert detect_format(out) == "compact" and main(["info", str(out)]) == 0
    # The file holds the run's own latents, moved into the capture's frame by its decoders.
    record = read_run(run)
    trained = record.final_quantized()
    # info names each attribute's latent size -> decoded width and how many distinct integers the file holds.
    shown = " ".join(capsys.readouterr().err.split())
    assert "format compact" in shown
    values = len(trained.attributes["opacities"].latents.unique())
    assert "shN 16->45" in shown and "quats 8->4" in shown and f"opacities 1->1 ({values:,} values)" in shown
    shipped = load_compact(out)
    assert len(shipped) == len(trained)
    for name in ("shN", "quats", "opacities"):
        assert torch.equal(shipped.attributes[name].latents.sort(0).values,
                           trained.attributes[name].latents.sort(0).values)
    back = shipped.transformed(record.to_normalized).decoded()
    order = torch.from_numpy(cKDTree(trained.means().numpy()).query(back.means.numpy())[1])
    torch.testing.assert_close(back.shN, trained.decoded().shN[order], atol=1e-4, rtol=1e-3)
    assert main(["eval", str(run), "--model", str(out)]) == 0
    file_psnr = json.loads((run / "eval" / "m.spkz" / "metrics.json").read_text())["mean"]["psnr"]
    run_psnr = json.loads((run / "metrics.json").read_text())["psnr"]
    assert abs(file_psnr - run_psnr) <= 0.3  # the whole budget for compression; the file's grids cost less


def test_a_model_without_sh_bands_converts_to_compact_and_back(tmp_path):
    rng = np.random.default_rng(0)
    g = init_from_points(rng.normal(size=(300, 3)), rng.uniform(size=(300, 3)), sh_degree=0)
    write_compact(g, tmp_path / "m.spkz")
    back = read_compact(tmp_path / "m.spkz")
    assert back.sh_degree == 0 and back.shN.shape == (300, 0, 3) and len(back) == 300
