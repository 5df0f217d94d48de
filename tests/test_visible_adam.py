"""Visible-only Adam (`--visible-adam`, GaussianModel.step(visible)): the native row-masked step against Adam's
closed form (Kingma & Ba 2015) in float64, and the rows it must leave alone, bit for bit.

Tolerance, derived: one float32 Adam update rounds about ten times (two moment updates, a square root, a division,
the bias corrections), so each step's change of a parameter errs by at most 16 U of that change's magnitude (lr
times at most ~1/(1 - beta1) for Adam's normalised step) plus U |param| for the final addition; over K steps the
errors add up, so K (16 U lr / (1 - beta1) + U max|param|) bounds the drift from the exact values.
"""

from __future__ import annotations

import pytest
import torch

from splatkit.render.native_build import compiler_available
from splatkit.train.gaussian_model import GaussianModel
from splatkit.train.parameterisations import Plain3DGS

pytestmark = [
    pytest.mark.xdist_group("native"),
    pytest.mark.skipif(not compiler_available(), reason="no C++ compiler for the native extension"),
]

U = 2.0**-24
N, STEPS, LR, BETA1, BETA2, EPS = 64, 12, 0.01, 0.9, 0.999, 1e-15


def _model() -> GaussianModel:
    model = GaussianModel(Plain3DGS(), "cpu")
    generator = torch.Generator().manual_seed(0)
    model.add_param("shN", torch.randn(N, 15, 3, generator=generator), lr=LR)
    model.add_param("decoder", torch.randn(4, 4, generator=generator), lr=LR, per_gaussian=False)
    return model


def _reference_step(state: dict, grad: torch.Tensor, rows: torch.Tensor, step: int) -> None:
    """Adam's closed form in float64 on the rows given; the bias corrections use the global step."""
    p, m, v = state["p"], state["m"], state["v"]
    g = grad.double()[rows]
    m[rows] = BETA1 * m[rows] + (1 - BETA1) * g
    v[rows] = BETA2 * v[rows] + (1 - BETA2) * g * g
    m_hat, v_hat = m[rows] / (1 - BETA1**step), v[rows] / (1 - BETA2**step)
    p[rows] = p[rows] - LR * m_hat / (v_hat.sqrt() + EPS)


def test_visible_rows_step_as_adam_and_the_others_keep_values_and_moments() -> None:
    model = _model()
    generator = torch.Generator().manual_seed(1)
    start = model.params["shN"].detach().double().clone()
    state = {"p": start.clone(), "m": torch.zeros_like(start), "v": torch.zeros_like(start)}
    decoder_dense = torch.optim.Adam([torch.nn.Parameter(model.params["decoder"].detach().clone())], lr=LR, eps=EPS)
    never = torch.zeros(N, dtype=torch.bool)
    never[:5] = True  # rows no view ever renders
    for step in range(1, STEPS + 1):
        visible = (torch.rand(N, generator=generator) > 0.4) & ~never
        grads = {name: torch.randn(p.shape, generator=generator) for name, p in model.params.items()}
        before = {k: v.clone() for k, v in model.optimizers["shN"].state.get(model.params["shN"], {}).items()}
        for name, p in model.params.items():
            p.grad = grads[name].clone()
        decoder_dense.param_groups[0]["params"][0].grad = grads["decoder"].clone()
        shN_before = model.params["shN"].detach().clone()
        model.step(visible)
        decoder_dense.step()
        _reference_step(state, grads["shN"], visible, step)
        shN = model.params["shN"].detach()
        hidden = ~visible
        assert torch.equal(shN[hidden], shN_before[hidden])  # bit for bit
        if before:
            moments = model.optimizers["shN"].state[model.params["shN"]]
            assert torch.equal(moments["exp_avg"][hidden], before["exp_avg"][hidden])
            assert torch.equal(moments["exp_avg_sq"][hidden], before["exp_avg_sq"][hidden])
        assert all(p.grad is None for p in model.params.values())
    bound = STEPS * (16 * U * LR / (1 - BETA1) + U * float(start.abs().max()))
    error = float((model.params["shN"].detach().double() - state["p"]).abs().max())
    assert error <= bound, (error, bound)
    assert torch.equal(model.params["shN"].detach()[never], start[never].float())
    # A shared parameter (not per Gaussian) takes torch's dense Adam step whatever is visible.
    assert torch.equal(model.params["decoder"].detach(), decoder_dense.param_groups[0]["params"][0].detach())
    assert float((model.params["shN"].detach().double() - start).abs().max()) > 10 * LR * 0.5  # it did move


def test_all_rows_visible_equals_torch_adam() -> None:
    """Every row visible: the native step is torch's Adam, to the same rounding bound."""
    model = _model()
    reference = torch.nn.Parameter(model.params["shN"].detach().clone())
    dense = torch.optim.Adam([reference], lr=LR, eps=EPS)
    generator = torch.Generator().manual_seed(2)
    for _ in range(STEPS):
        grad = torch.randn(N, 15, 3, generator=generator)
        model.params["shN"].grad, reference.grad = grad.clone(), grad.clone()
        model.step(torch.ones(N, dtype=torch.bool))
        dense.step()
    bound = STEPS * (16 * U * LR / (1 - BETA1) + U * float(reference.detach().abs().max()))
    assert float((model.params["shN"].detach() - reference.detach()).abs().max()) <= bound
