"""Exposure compensation (`--exposure`) and the left/right held-out protocol (`eval --fit-exposure`): the affine
transform's algebra, the held-out fit against known transforms and numpy's least-squares lines, that frozen
identity transforms change no bit of training, bitwise resume, that the transforms average to the identity, and
that the fit never reads a scored pixel."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from splatkit.cli import main
from splatkit.errors import SplatkitError
from splatkit.io.formats import read_splats
from splatkit.train.evaluate import evaluate
from splatkit.train.exposure import PARAM, apply_exposure, exposure_transforms, fit_exposure
from splatkit.train.run_record import read_run

from photo_models import LAST, Photos, assert_resumes_bitwise, frozen_params_beside_plain, with_a_half_inverted


def _random_transform(generator: torch.Generator) -> torch.Tensor:
    return torch.eye(3, 4) + 0.2 * (torch.rand(3, 4, generator=generator) - 0.5)


def test_transform_is_exact_at_the_identity_and_affine_elsewhere():
    generator = torch.Generator().manual_seed(0)
    rgb = torch.rand(5, 7, 3, generator=generator)
    assert torch.equal(apply_exposure(rgb, torch.eye(3, 4)), rgb)
    transform = _random_transform(generator)
    expected = torch.einsum("ij,hwj->hwi", transform[:, :3].double(), rgb.double()) + transform[:, 3].double()
    torch.testing.assert_close(apply_exposure(rgb, transform).double(), expected, rtol=0, atol=1e-6)


def test_fit_is_each_channels_least_squares_line_and_ignores_masked_pixels():
    generator = torch.Generator().manual_seed(1)
    render = torch.rand(24, 32, 3, generator=generator)
    gains, offsets = torch.tensor([0.7, 1.1, 0.9]), torch.tensor([0.05, -0.02, 0.0])
    known = torch.cat([torch.diag(gains), offsets[:, None]], dim=1)
    # float32 inputs: the residual of an exact per-channel map is rounding, far below 1e-5 on 2 unknowns each
    torch.testing.assert_close(fit_exposure(render, apply_exposure(render, known)), known, rtol=0, atol=1e-5)
    mixed = apply_exposure(render, _random_transform(generator))  # channels mixed: the fit stays per channel
    fitted = fit_exposure(render, mixed).double().numpy()
    for c in range(3):  # each channel's least-squares line, as numpy fits it
        x, y = render[..., c].double().numpy().ravel(), mixed[..., c].double().numpy().ravel()
        slope, intercept = np.polyfit(x, y, 1)
        np.testing.assert_allclose(fitted[c, [c, 3]], [slope, intercept], rtol=0, atol=1e-6)
    assert not fitted[:, :3][~np.eye(3, dtype=bool)].any()
    keep = torch.rand(24, 32, 1, generator=generator) > 0.3
    spoiled = torch.where(keep, apply_exposure(render, known), torch.full_like(render, float("nan")))
    torch.testing.assert_close(fit_exposure(render, spoiled, keep), known, rtol=0, atol=1e-5)  # never reads NaN
    with pytest.raises(SplatkitError, match="at least 2 kept pixels"):
        fit_exposure(render, mixed, torch.zeros(24, 32, 1, dtype=torch.bool))


def test_frozen_identity_transforms_leave_training_bitwise_unchanged(tiny_scene, tmp_path):
    own = frozen_params_beside_plain(tiny_scene, tmp_path, exposure=True, exposure_lr=0.0)
    assert list(own) == [PARAM] and not own[PARAM].any()


def test_transforms_train_average_to_the_identity_and_resume_bitwise(tiny_scene, tmp_path, capsys):
    run = assert_resumes_bitwise(tiny_scene, tmp_path, exposure=True)
    record = read_run(run)
    scene = record.load_scene()
    model = record.checkpoint_model(run / LAST)
    train_ids = torch.tensor(scene.train_ids)
    transforms = exposure_transforms(model, train_ids)
    assert not torch.equal(transforms[train_ids], torch.eye(3, 4).expand(len(train_ids), 3, 4))  # they moved
    torch.testing.assert_close(transforms[train_ids].mean(0), torch.eye(3, 4), rtol=0, atol=1e-6)  # the gauge
    assert torch.equal(transforms[scene.test_ids], torch.eye(3, 4).expand(len(scene.test_ids), 3, 4))
    # --resume cannot switch it off: the checkpoints hold the transforms
    assert main(["train", str(tiny_scene), "--out", str(run), "--steps", "60", "--no-exposure", "--resume"]) == 2
    assert "--resume cannot change exposure (True -> False)" in capsys.readouterr().err


def test_left_half_fit_never_reads_the_scored_half(tiny_run):
    record = read_run(tiny_run)
    scene = record.load_scene()
    ids = scene.train_ids[:3]
    model = read_splats(tiny_run / "point_cloud.ply").transformed(scene.to_normalized)
    generator = np.random.default_rng(2)
    photos = {i: generator.random((scene.cameras[i].height, scene.cameras[i].width, 3), dtype=np.float32)
              for i in ids}
    other_right, other_left = with_a_half_inverted(photos)
    results = [evaluate(model, scene, Photos(p), ids, backend="native", fit_exposure=True)
               for p in (photos, other_right, other_left)]
    assert all(r["protocol"] == "fit-exposure" for r in results)
    for a, b, c in zip(*(r["views"] for r in results)):
        assert a["exposure"] == b["exposure"]  # the right half changed: the fit did not
        assert a["psnr"] != b["psnr"]  # ...and it is what is scored
        assert a["exposure"] != c["exposure"]  # the left half is what is fitted
    assert evaluate(model, scene, Photos(photos), ids, backend="native")["protocol"] == "plain"
