"""Edits to the Gaussian set that keep parameters and Adam's moment estimates in step.

Everything goes through `update_params`, so clone, split, prune and reset are a few lines each.
"""

from __future__ import annotations

from typing import Callable

import torch

from splatkit.model.gaussians import Gaussians
from splatkit.render.projection import quat_to_rotmat
from splatkit.train.strategies.base import Optimizers, Params

ParamFn = Callable[[str, torch.Tensor], torch.Tensor]
StateFn = Callable[[str, torch.Tensor], torch.Tensor]


@torch.no_grad()
def update_params(params: Params, optimizers: Optimizers, param_fn: ParamFn, state_fn: StateFn,
                  names: list[str] | None = None) -> None:
    """Replace each named parameter by `param_fn(name, p)` and each of its Adam moments by `state_fn(key, m)`."""
    for name in list(params) if names is None else names:
        new = torch.nn.Parameter(param_fn(name, params[name].data), requires_grad=params[name].requires_grad)
        optimizer = optimizers[name]
        old = optimizer.param_groups[0]["params"][0]
        state = optimizer.state.pop(old, {})
        for key, value in state.items():
            if key != "step" and isinstance(value, torch.Tensor) and value.dim() > 0:
                state[key] = state_fn(key, value)
        optimizer.param_groups[0]["params"] = [new]
        optimizer.state[new] = state
        params[name] = new


def append(params: Params, optimizers: Optimizers, new_values: dict[str, torch.Tensor]) -> None:
    """Append Gaussians; their Adam moments start at zero."""
    for name, rows in new_values.items():
        update_params(
            params, optimizers,
            lambda _, p, rows=rows: torch.cat([p, rows]),
            lambda _, m, count=rows.shape[0]: torch.cat([m, m.new_zeros((count, *m.shape[1:]))]),
            names=[name],
        )


def remove(params: Params, optimizers: Optimizers, mask: torch.Tensor) -> None:
    """Delete the Gaussians where `mask` is True."""
    keep = ~mask
    update_params(params, optimizers, lambda _, p: p[keep], lambda _, m: m[keep])


def duplicate(params: Params, optimizers: Optimizers, mask: torch.Tensor) -> None:
    """Clone the selected Gaussians unchanged (3DGS 'clone' for small Gaussians with large gradients)."""
    append(params, optimizers, {name: p.data[mask] for name, p in params.items()})


@torch.no_grad()
def split(params: Params, optimizers: Optimizers, mask: torch.Tensor, generator: torch.Generator,
          shrink: float = 1.6) -> None:
    """Replace each selected Gaussian by two, drawn from it and shrunk by `shrink` (3DGS 'split')."""
    sel = {name: p.data[mask] for name, p in params.items()}
    scales = torch.exp(sel["scales"])
    rot = quat_to_rotmat(sel["quats"])
    noise = torch.randn((2, *scales.shape), generator=generator, dtype=scales.dtype)
    offsets = torch.einsum("nij,bnj->bni", rot, scales * noise)
    children = {name: torch.cat([v, v]) for name, v in sel.items()}
    children["means"] = (sel["means"][None] + offsets).reshape(-1, 3)
    children["scales"] = torch.log(scales / shrink).repeat(2, 1)
    remove(params, optimizers, mask)
    append(params, optimizers, children)


@torch.no_grad()
def reset_opacities(params: Params, optimizers: Optimizers, value: float) -> None:
    """Clamp every opacity to at most `value` and forget its Adam moments (the 3DGS opacity reset)."""
    logit = torch.logit(torch.tensor(value)).item()
    update_params(params, optimizers, lambda _, p: p.clamp(max=logit), lambda _, m: torch.zeros_like(m),
                  names=["opacities"])


def as_gaussians(params: Params) -> Gaussians:
    return Gaussians.from_dict(params)
