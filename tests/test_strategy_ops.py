"""Gaussian-set edits keep parameters, Adam moments and plug-in buffers aligned; ADC clones, splits, prunes and
resets; frozen and shared tensors are left alone."""

from __future__ import annotations

import torch

from splatkit.model.gaussians import Gaussians
from splatkit.render.api import RenderOutput
from splatkit.train.gaussian_model import GaussianModel
from splatkit.train.learning_rates import LearningRates
from splatkit.train.parameterisations import Plain3DGS
from splatkit.train.plugin import SetupContext, StepInfo, View
from splatkit.train.strategies import ADCStrategy, ops


def _model(n: int = 6, *, with_extras: bool = False) -> GaussianModel:
    """A plain-3DGS model after one Adam step (so moments are non-zero and differ per row). With extras: a
    per-Gaussian buffer inherited by copies (`level`), one zeroed for new Gaussians (`hits`), a shared trainable
    tensor (`decoder`), a frozen shared one (`frozen_level`) and a frozen per-Gaussian one (`anchor`)."""
    g = torch.Generator().manual_seed(0)
    init = Gaussians(torch.randn(n, 3, generator=g), torch.log(torch.rand(n, 3, generator=g) * 0.1 + 0.01),
                     torch.randn(n, 4, generator=g), torch.randn(n, generator=g), torch.randn(n, 1, 3, generator=g),
                     torch.randn(n, 3, 3, generator=g))
    model = GaussianModel(Plain3DGS())
    Plain3DGS().create(model, init, LearningRates(), scene_extent=1.0)
    if with_extras:
        model.add_buffer("level", torch.arange(n) * 10, new_rows="copy")
        model.add_buffer("hits", torch.arange(1, n + 1).float(), new_rows="zero")
        model.add_param("decoder", torch.randn(4, 4, generator=g), lr=1e-2, per_gaussian=False)
        model.add_param("frozen_level", torch.randn(5, 3, generator=g), lr=None, per_gaussian=False)
        model.add_param("anchor", torch.arange(n).float()[:, None].repeat(1, 3), lr=None)
    weights = torch.arange(1, n + 1, dtype=torch.float32)
    loss = sum((p * weights.view(-1, *[1] * (p.dim() - 1))).sum() for name, p in model.params.items()
               if p.requires_grad and name != "decoder")
    if with_extras:
        loss = loss + model.params["decoder"].sum()
    loss.backward()
    model.step()
    return model


def _moments(model: GaussianModel, name: str) -> dict:
    return model.optimizers[name].state[model.params[name]]


def test_remove_keeps_rows_and_moments_aligned():
    model = _model(with_extras=True)
    before = {k: p.detach().clone() for k, p in model.params.items()}
    avg_before = _moments(model, "means")["exp_avg"].clone()
    mask = torch.tensor([True, False, True, False, False, True])
    ops.remove(model, mask)
    for name in ("means", "scales", "quats", "opacities", "sh0", "shN", "anchor"):
        torch.testing.assert_close(model.params[name].detach(), before[name][~mask])
    for name, optimizer in model.optimizers.items():
        assert optimizer.param_groups[0]["params"][0] is model.params[name]
    torch.testing.assert_close(_moments(model, "means")["exp_avg"], avg_before[~mask])
    assert model.buffers["level"].tolist() == [10, 30, 40] and model.buffers["hits"].tolist() == [2.0, 4.0, 5.0]


def test_duplicate_appends_copies_with_zero_moments_and_their_buffers():
    model = _model(with_extras=True)
    mask = torch.tensor([False, True, False, False, True, False])
    before = model.params["means"].detach().clone()
    ops.duplicate(model, mask)
    assert len(model) == 8
    torch.testing.assert_close(model.params["means"][6:].detach(), before[mask])
    state = _moments(model, "means")
    assert state["exp_avg"].shape == (8, 3)
    assert torch.count_nonzero(state["exp_avg"][6:]) == 0 and torch.count_nonzero(state["exp_avg"][:6]) > 0
    assert model.buffers["level"].tolist() == [0, 10, 20, 30, 40, 50, 10, 40]  # copies inherit their level
    assert model.buffers["hits"][6:].tolist() == [0.0, 0.0]  # accumulators start afresh
    assert model.params["anchor"][6:, 0].tolist() == [1.0, 4.0]  # frozen per-Gaussian rows follow, no optimiser


def test_split_samples_children_inside_parent_and_shrinks_them():
    model = _model(with_extras=True)
    mask = torch.tensor([True, False, False, False, False, False])
    parent_mean, parent_scale = model.params["means"][0].detach().clone(), model.params["scales"][0].detach().clone()
    ops.split(model, mask, torch.Generator().manual_seed(1))
    assert len(model) == 7  # one removed, two appended
    children = model.params["means"][-2:].detach()
    # Children lie within a few parent standard deviations of the parent's centre.
    assert ((children - parent_mean).norm(dim=-1) < 4 * torch.exp(parent_scale).max()).all()
    torch.testing.assert_close(model.params["scales"][-1].detach(), parent_scale - torch.log(torch.tensor(1.6)))
    assert model.buffers["level"].tolist() == [10, 20, 30, 40, 50, 0, 0]


def test_edits_leave_shared_and_frozen_tensors_alone_and_adam_skips_frozen():
    model = _model(with_extras=True)
    decoder, frozen = model.params["decoder"].detach().clone(), model.params["frozen_level"].detach().clone()
    decoder_param = model.params["decoder"]
    ops.duplicate(model, torch.tensor([True, False, False, False, False, True]))
    ops.split(model, torch.tensor([False, True] + [False] * 6), torch.Generator().manual_seed(2))
    ops.remove(model, torch.tensor([False, False, True] + [False] * 6))
    ops.relocate_dead(model, torch.tensor([True] + [False] * 7), torch.Generator().manual_seed(3))
    assert model.params["decoder"] is decoder_param and torch.equal(model.params["decoder"].detach(), decoder)
    assert torch.equal(model.params["frozen_level"].detach(), frozen)
    assert "frozen_level" not in model.optimizers and not model.params["frozen_level"].requires_grad
    # An optimiser step moves the shared decoder but never a frozen tensor.
    (model.params["decoder"].sum() + model.params["means"].sum()).backward()
    model.step()
    assert not torch.equal(model.params["decoder"].detach(), decoder)
    assert torch.equal(model.params["frozen_level"].detach(), frozen)


def test_relocate_copies_rows_and_buffers_and_restarts_moments():
    model = _model(with_extras=True)
    ops.relocate_dead(model, torch.tensor([True, False, False, False, False, False]),
                      torch.Generator().manual_seed(0))
    source = int(model.buffers["level"][0]) // 10  # the dead row took its source's level
    assert source != 0
    torch.testing.assert_close(model.params["means"][0], model.params["means"][source])
    torch.testing.assert_close(model.params["opacities"][0], model.params["opacities"][source])
    for row in (0, source):
        assert torch.count_nonzero(_moments(model, "means")["exp_avg"][row]) == 0
        assert model.buffers["hits"][row] == 0
    assert len(model) == 6


def test_reset_opacities_clamps_and_zeroes_moments():
    model = _model()
    ops.reset_opacities(model, 0.01)
    assert (torch.sigmoid(model.params["opacities"]) <= 0.01 + 1e-6).all()
    assert torch.count_nonzero(_moments(model, "opacities")["exp_avg"]) == 0


def test_reset_opacities_in_a_zone_leaves_the_rest():
    model = _model()
    before = model.params["opacities"].detach().clone()
    moments = _moments(model, "opacities")["exp_avg"].clone()
    zone = torch.tensor([True, True, False, False, True, False])
    ops.reset_opacities(model, 0.01, mask=zone)
    after = model.params["opacities"].detach()
    assert (torch.sigmoid(after[zone]) <= 0.01 + 1e-6).all()
    assert torch.equal(after[~zone], before[~zone])
    assert torch.count_nonzero(_moments(model, "opacities")["exp_avg"][zone]) == 0
    assert torch.equal(_moments(model, "opacities")["exp_avg"][~zone], moments[~zone])


def test_adc_clones_small_splits_large_and_prunes_transparent():
    model = _model(4)
    with torch.no_grad():
        model.params["scales"][:] = torch.log(torch.tensor([0.001, 0.5, 0.001, 0.001]))[:, None]
        model.params["opacities"][:] = torch.logit(torch.tensor([0.5, 0.5, 0.5, 0.001]))
    strategy = ADCStrategy(refine_start=0, refine_every=1)
    state = strategy.setup(SetupContext(None, None, model, None, steps=10, scene_extent=1.0, seed=0, resumed=False))
    means2d = torch.zeros(4, 2, requires_grad=True)
    empty = torch.zeros(2, 2)
    render = RenderOutput(empty, empty, empty, means2d, torch.ones(4, 2, dtype=torch.int32), None)
    camera = type("Cam", (), {"width": 2, "height": 2})()
    info = StepInfo(1, 10, [View(camera, 0, 0, empty, render)], [0], model.activated(), scene_extent=1.0)
    # Gaussians 0 and 1 get a large screen-space gradient, 2 and 3 none.
    (means2d * torch.tensor([[1.0, 0], [1.0, 0], [0, 0], [0, 0]])).sum().backward()
    strategy.post_backward(model, state, info)
    model.fold_statistics(lambda pending: None)
    strategy.after_step(model, state, info)
    scales = torch.exp(model.params["scales"]).max(dim=-1).values
    # 0 cloned (2 small copies), 1 split into 2 smaller ones, 2 kept, 3 pruned: 5 Gaussians.
    assert len(model) == 5
    assert int((scales < 0.01).sum()) == 3 and int(((scales > 0.2) & (scales < 0.35)).sum()) == 2
    assert (torch.sigmoid(model.params["opacities"]) > 0.005).all()
    assert model.buffers["grad2d"].shape == (5,) and not model.buffers["grad2d"].any()
