"""Appearance embeddings (`--appearance`): the decoded offsets against the closed form of the module's note (an
independent concatenate-then-multiply evaluation), the gauge (zero offsets at the mean embedding, the mean held
constant in the gradient), that frozen zero embeddings change no bit of training, bitwise resume, and that
--resume cannot switch the option off."""

from __future__ import annotations

import pytest
import torch

from splatkit.cli import main
from splatkit.model.gaussians import Gaussians
from splatkit.train import checkpoint
from splatkit.train.appearance import DECODER, EMBEDDINGS, FEATURES, AppearanceEmbeddings, appearance_offsets
from splatkit.train.gaussian_model import GaussianModel
from splatkit.train.learning_rates import LearningRates
from splatkit.train.parameterisations import Plain3DGS
from splatkit.train.run_record import read_run

from photo_models import LAST, assert_resumes_bitwise, frozen_params_beside_plain

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
