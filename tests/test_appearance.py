"""Appearance embeddings (`--appearance`): the decoded offsets against the closed form of the module's note (an
independent concatenate-then-multiply evaluation), the gauge (zero offsets at the mean embedding, the mean held
constant in the gradient), that frozen zero embeddings change no bit of training, bitwise resume, that
--resume cannot switch the option off, and the held-out protocol's embedding fit (left half only, and what it
recovers)."""

from __future__ import annotations

import json

import pytest
import torch

from splatkit.cli import main
from splatkit.io.formats import read_splats
from splatkit.model.gaussians import Gaussians
from splatkit.train import checkpoint
from splatkit.train.appearance import DECODER, EMBEDDINGS, FEATURES, AppearanceEmbeddings, appearance_offsets
from splatkit.train.gaussian_model import GaussianModel
from splatkit.train.learning_rates import LearningRates
from splatkit.render import rasterize
from splatkit.train.evaluate import evaluate
from splatkit.train.parameterisations import Plain3DGS
from splatkit.train.run_record import read_run
from splatkit.train.trainer import train

from photo_models import (LAST, Photos, assert_resumes_bitwise, frozen_params_beside_plain, short_run,
                          with_a_half_inverted)

pytestmark = pytest.mark.xdist_group("tiny_scene")


def _model(n: int, cameras: int, generator: torch.Generator) -> GaussianModel:
    model = GaussianModel(Plain3DGS())
    init = Gaussians(torch.randn(n, 3, generator=generator), torch.zeros(n, 3), torch.tensor([[1.0, 0, 0, 0]] * n),
                     torch.zeros(n), torch.zeros(n, 1, 3), torch.zeros(n, 15, 3))
    Plain3DGS().create(model, init, LearningRates(), 1.0)
    AppearanceEmbeddings().declare(model, cameras)
    return model


def test_offsets_follow_the_closed_form_and_vanish_at_the_mean_embedding():
    generator = torch.Generator().manual_seed(0)
    model = _model(50, 6, generator)
    assert not model.params[EMBEDDINGS].any()  # zero at the start: every photo at the mean appearance
    with torch.no_grad():
        model.params[EMBEDDINGS].copy_(torch.randn(6, 16, generator=generator))
    train_ids = torch.tensor([0, 2, 3, 5])
    w1, b1, w2 = (model.params[name].detach().double() for name in DECODER)
    features = model.params[FEATURES].detach().double()
    embeddings = model.params[EMBEDDINGS].detach().double()
    mean = embeddings[train_ids].mean(dim=0)

    def decoded(embedding: torch.Tensor) -> torch.Tensor:  # W2 relu(W1 [e; f] + b1), one Gaussian at a time
        return torch.stack([w2 @ torch.relu(w1 @ torch.cat([embedding, f]) + b1) for f in features])

    for camera in (0, 3, 4):
        expected = decoded(embeddings[camera]) - decoded(mean)
        torch.testing.assert_close(appearance_offsets(model, camera, train_ids).double(), expected, rtol=0,
                                   atol=1e-5)
    with torch.no_grad():
        model.params[EMBEDDINGS][1] = model.params[EMBEDDINGS][train_ids].mean(dim=0)
    assert not appearance_offsets(model, 1, train_ids).any()  # the mean embedding: the model's own colours
    appearance_offsets(model, 3, train_ids).square().sum().backward()
    moved = model.params[EMBEDDINGS].grad.abs().sum(dim=1) > 0
    assert moved.tolist() == [False, False, False, True, False, False]  # the mean is held constant


def test_frozen_zero_embeddings_leave_training_bitwise_unchanged(tiny_scene, tmp_path):
    own = frozen_params_beside_plain(tiny_scene, tmp_path, appearance=True, appearance_lr=0.0)
    assert set(own) == {EMBEDDINGS, FEATURES, *DECODER}
    assert not own[EMBEDDINGS].any()
    assert len(own[FEATURES]) == len(checkpoint.load_checkpoint(tmp_path / "frozen" / LAST)["params"]["means"])


def test_embeddings_train_resume_bitwise_and_cannot_be_switched_off(tiny_scene, tmp_path, capsys):
    run = assert_resumes_bitwise(tiny_scene, tmp_path, appearance=True, appearance_lr=0.05)
    record = read_run(run)
    scene = record.load_scene()
    model = record.checkpoint_model(run / LAST)
    embeddings = model.params[EMBEDDINGS]
    assert embeddings[scene.train_ids].abs().sum(dim=1).gt(0).all()  # every training photo's moved
    assert not embeddings[scene.test_ids].any()  # held-out photos never trained: the mean appearance
    offsets = appearance_offsets(model, scene.train_ids[0], torch.tensor(scene.train_ids))
    assert offsets.abs().max() > 0 and len(offsets) == len(model)
    assert main(["train", str(tiny_scene), "--out", str(run), "--steps", "60", "--no-appearance", "--resume"]) == 2
    assert "--resume cannot change appearance (True -> False)" in capsys.readouterr().err


def test_held_out_embedding_is_fitted_on_the_left_half_alone_and_recovers_a_known_one(tiny_scene, tmp_path):
    run = tmp_path / "run"
    train(short_run(tiny_scene, run, appearance=True, appearance_lr=0.05), show_progress=False)
    record = read_run(run)
    scene = record.load_scene()
    decoder = record.appearance(scene)
    model = read_splats(run / "point_cloud.ply").transformed(scene.to_normalized)
    ids, background = scene.test_ids, scene.background or (0.0, 0.0, 0.0)
    # Each held-out photo as the model renders it under a known embedding near the training ones.
    generator = torch.Generator().manual_seed(5)
    known = {i: decoder.mean + 0.3 * torch.randn(len(decoder.mean), generator=generator) for i in ids}
    photos = {i: rasterize(decoder.through(model.activated(), known[i]), scene.cameras[i], background=background,
                           backend="native").rgb.clamp(0, 1).numpy() for i in ids}
    transform_only = evaluate(model, scene, Photos(photos), ids, backend="native", fit_exposure=True)
    fitted = evaluate(model, scene, Photos(photos), ids, backend="native", fit_exposure=True, appearance=decoder)
    for alone, both in zip(transform_only["views"], fitted["views"]):
        assert "embedding" not in alone and len(both["embedding"]) == len(decoder.mean)
        # An affine transform cannot follow each Gaussian's own colour change; the fitted embedding does.
        assert both["psnr"] > max(alone["psnr"] + 6.0, 35.0), (alone["psnr"], both["psnr"])
    other_right, other_left = with_a_half_inverted(photos)
    for changed, same in ((other_right, True), (other_left, False)):
        result = evaluate(model, scene, Photos(changed), ids, backend="native", fit_exposure=True, appearance=decoder)
        for a, b in zip(fitted["views"], result["views"]):
            assert (a["embedding"] == b["embedding"]) is same  # the left half alone is fitted...
            assert a["psnr"] != b["psnr"]  # ...and the right half scored
    # The command: an --appearance run's held-out views get an embedding each, and the protocol is named.
    assert main(["eval", str(run), "--fit-exposure", "--backend", "native"]) == 0
    written = json.loads((run / "eval" / "fit-exposure" / "metrics.json").read_text())
    assert written["protocol"] == "fit-exposure" and all("embedding" in v for v in written["views"])
