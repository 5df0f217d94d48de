"""MCMC (Kheradmand et al. 2024): the relocation update against the paper's closed form and what it promises,
and the strategy's growth to its cap."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.integrate import quad

from splatkit.model.gaussians import Gaussians
from splatkit.train.gaussian_model import GaussianModel
from splatkit.train.learning_rates import LearningRates
from splatkit.train.parameterisations import Plain3DGS
from splatkit.train.plugin import SetupContext, StepInfo
from splatkit.train.strategies import MCMCStrategy, ops

# Opacities as float32 holds them (the expected values are computed from the same input, in float64).
CASES = [(float(torch.tensor(o)), n) for o in (0.01, 0.3, 0.7, 0.95, 0.999) for n in (1, 2, 3, 7, 20, 51)]


def _paper_scale_factor(o: float, n: int) -> float:
    """Eq. 9 as printed: o / sum_{i=1..N} sum_{k=0..i-1} C(i-1, k) (-1)^k o_new^(k+1) / sqrt(k+1)."""
    o_new = 1 - (1 - o) ** (1 / n)
    total = sum(math.comb(i - 1, k) * (-1) ** k * o_new ** (k + 1) / math.sqrt(k + 1)
                for i in range(1, n + 1) for k in range(i))
    return o / total


def _relocated(o: float, n: int) -> tuple[float, float]:
    new_o, new_s = ops.relocation(torch.tensor([o]), torch.ones(1, 3), torch.tensor([n]))
    return float(new_o[0]), float(new_s[0, 0])


@pytest.mark.parametrize("o,n", CASES)
def test_relocation_matches_the_closed_form(o, n):
    new_o, factor = _relocated(o, n)
    assert new_o == pytest.approx(1 - (1 - o) ** (1 / n), rel=1e-6)
    assert factor == pytest.approx(_paper_scale_factor(o, n), rel=1e-5)


@pytest.mark.parametrize("o,n", CASES)
def test_copies_composited_give_back_the_original(o, n):
    """At the centre, N copies of opacity o' composite to 1 - (1 - o')^N = o. Along a line through the centre,
    the composited opacity of the N shrunken copies integrates to the original's (what the scale correction is
    derived from), checked by numerical quadrature, independently of the binomial sums."""
    new_o, factor = _relocated(o, n)
    assert 1 - (1 - new_o) ** n == pytest.approx(o, rel=1e-5)

    def composited(x: float) -> float:
        return 1 - (1 - new_o * math.exp(-0.5 * (x / factor) ** 2)) ** n

    integral = quad(composited, -np.inf, np.inf, epsabs=1e-12)[0]
    assert integral == pytest.approx(o * math.sqrt(2 * math.pi), rel=1e-4)


def test_one_copy_is_the_identity():
    assert _relocated(0.4, 1) == pytest.approx((0.4, 1.0))


def _model(opacities: list[float]) -> GaussianModel:
    n = len(opacities)
    g = torch.Generator().manual_seed(0)
    init = Gaussians(torch.randn(n, 3, generator=g), torch.full((n, 3), math.log(0.05)), torch.randn(n, 4, generator=g),
                     torch.logit(torch.tensor(opacities)), torch.randn(n, 1, 3, generator=g), torch.zeros(n, 0, 3))
    model = GaussianModel(Plain3DGS())
    Plain3DGS().create(model, init, LearningRates(), scene_extent=1.0)
    return model


def test_relocation_moves_dead_onto_live_and_conserves_the_centre_opacity():
    model = _model([0.001, 0.6, 0.002, 0.3])
    before = torch.sigmoid(model.params["opacities"].detach()).clone()
    moved = ops.relocate_dead(model, torch.sigmoid(model.params["opacities"]) <= 0.005,
                              torch.Generator().manual_seed(0))
    assert moved == 2 and len(model) == 4
    after = torch.sigmoid(model.params["opacities"].detach())
    # Each live Gaussian now shares its place with its copies: together they composite to its old opacity.
    for live in (1, 3):
        same = (model.params["means"] == model.params["means"][live]).all(dim=-1)
        assert 1 - torch.prod(1 - after[same]) == pytest.approx(float(before[live]), rel=1e-5)
    assert (after > 0.005).all()


def _info(model: GaussianModel, step: int) -> StepInfo:
    return StepInfo(step, 1000, [], [], model.activated(), scene_extent=1.0)


def test_mcmc_grows_by_five_percent_to_its_cap_and_keeps_the_count_there():
    model = _model([0.5] * 100)
    strategy = MCMCStrategy(cap_max=108, refine_start=0, refine_every=1)
    state = strategy.setup(SetupContext(None, None, model, None, steps=1000, scene_extent=1.0, seed=0, resumed=False))
    counts = []
    for step in range(1, 5):
        strategy.after_step(model, state, _info(model, step))
        counts.append(len(model))
    assert counts == [105, 108, 108, 108]


def test_mcmc_noise_spares_opaque_gaussians_and_moves_faint_ones():
    model = _model([0.999, 0.02])
    before = model.params["means"].detach().clone()
    strategy = MCMCStrategy(refine_start=10**9)
    state = strategy.setup(SetupContext(None, None, model, None, steps=1000, scene_extent=1.0, seed=0, resumed=False))
    strategy.after_step(model, state, _info(model, 1))
    moved = (model.params["means"].detach() - before).norm(dim=-1)
    # The gate sigmoid(100 (1 - o - 0.995)) is ~4e-22 at o = 0.999 and ~1 at o = 0.02.
    assert moved[0] < 1e-12 < moved[1]


def test_mcmc_regularisers_are_mean_opacity_and_scale():
    model = _model([0.2, 0.6])
    strategy = MCMCStrategy(opacity_reg=0.5, scale_reg=2.0)
    terms = strategy.losses(model, {}, _info(model, 1))
    assert terms["opacity_reg"].item() == pytest.approx(0.5 * 0.4)
    assert terms["scale_reg"].item() == pytest.approx(2.0 * 0.05)
