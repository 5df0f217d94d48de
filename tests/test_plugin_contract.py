"""The trainer/plug-in contract end to end: a test plug-in declares a per-Gaussian buffer, a frozen per-Gaussian
parameter, a shared trainable parameter with its own learning rate and a loss term, and checks what each hook
sees (two views a step); real ADC edits during training must carry its tensors along, and a resume must bring
them back."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import pytest
import torch

from splatkit.train.config import TrainConfig
from splatkit.train.gaussian_model import GaussianModel
from splatkit.train.plugin import SetupContext, StepInfo
from splatkit.train.strategies import ADCStrategy
from splatkit.train.trainer import start

pytestmark = pytest.mark.xdist_group("tiny_scene")


@dataclass
class TaggingADC(ADCStrategy):
    """ADC plus tensors of its own: `tag` (buffer, copies inherit it), `shadow` (frozen per-Gaussian parameter,
    the same tag as float) and `decoder` (shared, trained through a loss term)."""

    def setup(self, ctx: SetupContext) -> dict[str, Any]:
        state = super().setup(ctx)
        n = len(ctx.model)
        assert ctx.scene.cameras and ctx.run_dir.is_dir() and ctx.steps == 40
        ctx.model.add_buffer("tag", torch.arange(n), new_rows="copy")
        ctx.model.add_param("shadow", torch.arange(n, dtype=torch.float32)[:, None], lr=None)
        ctx.model.add_param("decoder", torch.ones(4, 4), lr=1e-2, per_gaussian=False)
        return {**state, "seen": 0}

    def losses(self, model: GaussianModel, state: dict, info: StepInfo) -> dict[str, torch.Tensor]:
        return {"decoder_l2": 1e-3 * model.params["decoder"].square().sum()}

    def post_backward(self, model: GaussianModel, state: dict, info: StepInfo) -> None:
        super().post_backward(model, state, info)
        assert [view.slot for view in info.views] == [0, 1] and len(set(info.batch)) == 2  # --batch-size 2
        for view in info.views:
            assert view.camera_index == info.batch[view.slot]
            assert view.target.shape == view.render.rgb.shape == (view.height, view.width, 3)
        state["first_error"] = (info.views[0].render.rgb.detach() - info.views[0].target).abs().sum(-1)
        assert model.params["shadow"].grad is None and model.params["decoder"].grad is not None
        state["seen"] += 1

    def after_step(self, model: GaussianModel, state: dict, info: StepInfo) -> None:
        super().after_step(model, state, info)
        assert len(model.buffers["tag"]) == len(model) == len(model.params["shadow"])
        assert torch.equal(model.buffers["tag"].float(), model.params["shadow"][:, 0])


def test_plugin_tensors_follow_real_edits_and_resume(tiny_scene, tmp_path):
    strategy = TaggingADC(refine_start=5, refine_every=10, reset_every=25, grow_grad2d=2e-5)
    cfg = TrainConfig(scene=str(tiny_scene), out=tmp_path / "run", steps=40, backend="native", device="cpu",
                      strategy=strategy, eval_steps=(), batch_size=2)
    trainer = start(cfg)
    initial = len(trainer.model)
    for _ in range(20):
        trainer.train_step()
    trainer.save_checkpoint()
    for _ in range(20):
        trainer.train_step()
    # The live viewer's error map: the last step's first view, L1 summed over RGB.
    torch.testing.assert_close(trainer.last_error, trainer.states["strategy"].pop("first_error"))
    model = trainer.model
    assert len(model) != initial  # ADC cloned, split and pruned
    tags = model.buffers["tag"]
    assert len(set(tags.tolist())) < len(model) and tags.max() < initial  # copies carry their parent's tag
    assert not torch.equal(model.params["decoder"].detach(), torch.ones(4, 4))  # its own Adam stepped it
    assert trainer.states["strategy"]["seen"] == 40
    # A resume from step 20 restores every plug-in tensor and the plug-in's state dict.
    resumed = start(dataclasses.replace(cfg, resume=True))
    assert resumed.step == 20 and resumed.states["strategy"]["seen"] == 20
    saved = torch.load(next((tmp_path / "run" / "checkpoints").glob("*.pt")), weights_only=False)
    assert torch.equal(resumed.model.buffers["tag"], saved["buffers"]["tag"])
    assert torch.equal(resumed.model.params["decoder"].detach(), saved["params"]["decoder"])
    assert "shadow" not in resumed.model.optimizers
