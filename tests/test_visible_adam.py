"""The native Adam step (GaussianModel.step; row-masked for `--visible-adam`, dense for the native backend)
against Adam's closed form (Kingma & Ba 2015) in float64 and torch's Adam, and the rows it must leave alone, bit
for bit.

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


def _model(native_adam: bool = False) -> GaussianModel:
    model = GaussianModel(Plain3DGS(), "cpu", native_adam=native_adam)
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
    # A shared parameter (not per Gaussian) takes a dense Adam step whatever is visible.
    dense = decoder_dense.param_groups[0]["params"][0].detach()
    decoder_bound = STEPS * (16 * U * LR / (1 - BETA1) + U * float(dense.abs().max()))
    assert float((model.params["decoder"].detach() - dense).abs().max()) <= decoder_bound
    assert float((model.params["shN"].detach().double() - start).abs().max()) > 10 * LR * 0.5  # it did move


@pytest.mark.parametrize("visible", [True, False], ids=["all-rows-visible", "dense-native"])
def test_native_step_equals_torch_adam_and_keeps_its_state_layout(visible: bool) -> None:
    """Every row visible, or the native backend's dense step: torch's Adam to the same rounding bound, with the
    optimiser state torch's fused Adam keeps (a float32 step count, the two moments), so a checkpoint carries on in
    torch's optimiser."""
    model = _model(native_adam=not visible)
    references = {name: torch.nn.Parameter(p.detach().clone()) for name, p in model.params.items()}
    dense = {name: torch.optim.Adam([p], lr=LR, eps=EPS, fused=True) for name, p in references.items()}
    generator = torch.Generator().manual_seed(2)
    largest = 0.0  # |gradient|, which bounds |exp_avg| and sqrt(exp_avg_sq)
    for _ in range(STEPS):
        for name, p in model.params.items():
            p.grad = torch.randn(p.shape, generator=generator)
            references[name].grad = p.grad.clone()
            largest = max(largest, float(p.grad.abs().max()))
        model.step(torch.ones(N, dtype=torch.bool) if visible else None)
        for optimizer in dense.values():
            optimizer.step()
    for name, p in model.params.items():
        reference = references[name].detach()
        bound = STEPS * (16 * U * LR / (1 - BETA1) + U * float(reference.abs().max()))
        assert float((p.detach() - reference).abs().max()) <= bound, name
        state, torch_state = model.optimizers[name].state[p], dense[name].state[references[name]]
        assert state.keys() == torch_state.keys() and state["step"].dtype == torch_state["step"].dtype
        assert float(state["step"]) == STEPS
        # A moment's update rounds about three times, each by at most U times a value no larger than the largest
        # gradient (or its square); K steps add their errors. 4 rather than 3 allows an FMA in either.
        for moment, scale in (("exp_avg", largest), ("exp_avg_sq", largest**2)):
            error = float((state[moment] - torch_state[moment]).abs().max())
            assert error <= STEPS * 4 * U * scale, (name, moment, error)
