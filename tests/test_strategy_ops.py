"""Gaussian-set edits keep parameters and Adam moments aligned; ADC clones, splits, prunes and resets."""

from __future__ import annotations

import torch

from splatkit.render.api import RenderOutput
from splatkit.train.strategies import ADCStrategy
from splatkit.train.strategies import ops


def _setup(n: int = 6):
    g = torch.Generator().manual_seed(0)
    params = {
        "means": torch.nn.Parameter(torch.randn(n, 3, generator=g)),
        "scales": torch.nn.Parameter(torch.log(torch.rand(n, 3, generator=g) * 0.1 + 0.01)),
        "quats": torch.nn.Parameter(torch.randn(n, 4, generator=g)),
        "opacities": torch.nn.Parameter(torch.randn(n, generator=g)),
        "sh0": torch.nn.Parameter(torch.randn(n, 1, 3, generator=g)),
        "shN": torch.nn.Parameter(torch.randn(n, 3, 3, generator=g)),
    }
    optimizers = {k: torch.optim.Adam([p], lr=1e-2) for k, p in params.items()}
    # One step so the Adam moments are non-zero and identifiable per row.
    loss = sum((p * torch.arange(1, n + 1).view(-1, *[1] * (p.dim() - 1))).sum() for p in params.values())
    loss.backward()
    for o in optimizers.values():
        o.step()
        o.zero_grad()
    return params, optimizers


def _moments(optimizers, name):
    return optimizers[name].state[optimizers[name].param_groups[0]["params"][0]]


def test_remove_keeps_rows_and_moments_aligned():
    params, optimizers = _setup()
    before = {k: p.detach().clone() for k, p in params.items()}
    avg_before = _moments(optimizers, "means")["exp_avg"].clone()
    mask = torch.tensor([True, False, True, False, False, True])
    ops.remove(params, optimizers, mask)
    for k, p in params.items():
        torch.testing.assert_close(p.detach(), before[k][~mask])
        assert optimizers[k].param_groups[0]["params"][0] is p
    torch.testing.assert_close(_moments(optimizers, "means")["exp_avg"], avg_before[~mask])


def test_duplicate_appends_copies_with_zero_moments():
    params, optimizers = _setup()
    mask = torch.tensor([False, True, False, False, True, False])
    before = params["means"].detach().clone()
    ops.duplicate(params, optimizers, mask)
    assert params["means"].shape[0] == 8
    torch.testing.assert_close(params["means"][6:].detach(), before[mask])
    state = _moments(optimizers, "means")
    assert state["exp_avg"].shape == (8, 3)
    assert torch.count_nonzero(state["exp_avg"][6:]) == 0 and torch.count_nonzero(state["exp_avg"][:6]) > 0


def test_split_samples_children_inside_parent_and_shrinks_them():
    params, optimizers = _setup()
    mask = torch.tensor([True, False, False, False, False, False])
    parent_mean, parent_scale = params["means"][0].detach().clone(), params["scales"][0].detach().clone()
    ops.split(params, optimizers, mask, torch.Generator().manual_seed(1))
    assert params["means"].shape[0] == 7  # one removed, two appended
    children = params["means"][-2:].detach()
    # Children lie within a few parent standard deviations of the parent's centre.
    assert ((children - parent_mean).norm(dim=-1) < 4 * torch.exp(parent_scale).max()).all()
    torch.testing.assert_close(params["scales"][-1].detach(), parent_scale - torch.log(torch.tensor(1.6)))


def test_reset_opacities_clamps_and_zeroes_moments():
    params, optimizers = _setup()
    ops.reset_opacities(params, optimizers, 0.01)
    assert (torch.sigmoid(params["opacities"]) <= 0.01 + 1e-6).all()
    assert torch.count_nonzero(_moments(optimizers, "opacities")["exp_avg"]) == 0


def test_adc_clones_small_splits_large_and_prunes_transparent():
    params, optimizers = _setup(4)
    with torch.no_grad():
        params["scales"][:] = torch.log(torch.tensor([0.001, 0.5, 0.001, 0.001]))[:, None]
        params["opacities"][:] = torch.logit(torch.tensor([0.5, 0.5, 0.5, 0.001]))
    strategy = ADCStrategy(refine_start=0, refine_every=1)
    state = strategy.initialize_state()
    means2d = torch.zeros(4, 2, requires_grad=True)
    empty = torch.zeros(2, 2)
    render = RenderOutput(empty, empty, empty, means2d, torch.ones(4, 2, dtype=torch.int32), None)
    info = {"render": render, "width": 2, "height": 2, "scene_extent": 1.0}
    # Gaussians 0 and 1 get a large screen-space gradient, 2 and 3 none.
    (means2d * torch.tensor([[1.0, 0], [1.0, 0], [0, 0], [0, 0]])).sum().backward()
    strategy.post_backward(params, optimizers, state, 1, info)
    strategy.after_step(params, optimizers, state, 1, info)
    scales = torch.exp(params["scales"]).max(dim=-1).values
    # 0 cloned (2 small copies), 1 split into 2 smaller ones, 2 kept, 3 pruned: 5 Gaussians.
    assert params["means"].shape[0] == 5
    assert int((scales < 0.01).sum()) == 3 and int(((scales > 0.2) & (scales < 0.35)).sum()) == 2
    assert (torch.sigmoid(params["opacities"]) > 0.005).all()
