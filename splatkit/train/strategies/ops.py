"""Edits of the Gaussian set that strategies compose: clone, split, prune, opacity reset, MCMC relocation.

Each is a few lines over `GaussianModel.append/keep/assign/relocate`, which carry every per-Gaussian tensor (and
its Adam moments) along, and over the parameterisation's `raw()`, which turns a wanted scale or opacity into the
parameters that produce it. Randomness comes from a CPU `torch.Generator` (the run's seed, checkpointed) and is
moved to the model's device, so a run draws the same numbers on every device.
"""

from __future__ import annotations

import functools
import math

import torch

from splatkit.render.projection import quat_to_rotmat
from splatkit.train.gaussian_model import GaussianModel


def _rows(mask: torch.Tensor) -> torch.Tensor:
    return mask.nonzero(as_tuple=True)[0]


def randn(generator: torch.Generator, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """Standard normal samples drawn on the CPU from `generator`, on `device`."""
    return torch.randn(shape, generator=generator).to(device)


@torch.no_grad()
def duplicate(model: GaussianModel, mask: torch.Tensor) -> None:
    """Clone the selected Gaussians unchanged (3DGS 'clone' for small Gaussians with large gradients); the
    copies are appended at the end."""
    model.append(_rows(mask))


@torch.no_grad()
def remove(model: GaussianModel, mask: torch.Tensor) -> None:
    """Delete the Gaussians where `mask` (N,) is True."""
    model.keep(~mask)


@torch.no_grad()
def split(model: GaussianModel, mask: torch.Tensor, generator: torch.Generator, shrink: float = 1.6) -> None:
    """Replace each selected Gaussian by two whose centres are drawn from it and whose scales are its own divided
    by `shrink` (3DGS 'split'); the children are appended at the end, the parents removed."""
    rows = _rows(mask)
    parents = model.activated()
    scales, rot = parents.scales[rows], quat_to_rotmat(parents.quats[rows])
    noise = randn(generator, (2, len(rows), 3), scales.device)
    offsets = torch.einsum("nij,bnj->bni", rot, scales * noise).reshape(-1, 3)
    sources = rows.repeat(2)
    values = model.parameterisation.raw(model, sources, scales=(scales / shrink).repeat(2, 1))
    model.append(sources, {**values, "means": model.params["means"][sources] + offsets})
    model.keep(torch.cat([~mask, mask.new_ones(len(sources))]))


@torch.no_grad()
def reset_opacities(model: GaussianModel, value: float, mask: torch.Tensor | None = None) -> None:
    """Lower every opacity above `value` to `value` and restart the opacity parameters' Adam moments (the 3DGS
    opacity reset); with `mask` (N,), only the selected Gaussians (LPM resets one error zone)."""
    rows = torch.arange(len(model), device=model.device) if mask is None else _rows(mask)
    high = model.activated().opacities[rows] > value
    wanted = model.parameterisation.raw(model, rows[high], opacities=torch.full((int(high.sum()),), value,
                                                                                  device=model.device))
    values = {}
    for name, raw in wanted.items():
        values[name] = model.params[name][rows].clone()
        values[name][high] = raw
    model.assign(rows, values)


_N_MAX = 51  # most copies one Gaussian is split into per relocation (gsplat's table size)


@functools.cache
def _relocation_coefficients(device: torch.device) -> torch.Tensor:
    """c[n, k] = sum over i = 1..n of binom(i-1, k) (-1)^k / sqrt(k+1): the scale correction's inner sums for a
    Gaussian shared by n copies, as a table (n_max+1, n_max) in float64."""
    table = torch.zeros(_N_MAX + 1, _N_MAX, dtype=torch.float64)
    for i in range(1, _N_MAX + 1):
        for k in range(i):
            table[i, k] = math.comb(i - 1, k) * (-1) ** k / math.sqrt(k + 1)
    return table.cumsum(0).to(device)


def relocation(opacities: torch.Tensor, scales: torch.Tensor, copies: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Opacity and scale of each of `copies` (R,) identical Gaussians that together stand for one with
    `opacities` (R,) and `scales` (R, 3) (3DGS as MCMC, Kheradmand et al. 2024, eq. 9): new opacity
    1 - (1 - o)^(1/N), so the N copies composited at the centre give back o; scales times
    o / sum_{i=1..N} sum_{k=0..i-1} binom(i-1, k) (-1)^k o_new^(k+1) / sqrt(k+1), which keeps the integral of
    the composited opacity. Computed in float64 (the alternating sum cancels); N is capped at 51."""
    n = copies.clamp(1, _N_MAX).long()
    o = opacities.double()
    new_o = 1.0 - torch.pow(1.0 - o, 1.0 / n.double())
    powers = new_o[:, None] ** torch.arange(1, _N_MAX + 1, dtype=torch.float64, device=o.device)
    denominator = (_relocation_coefficients(o.device)[n] * powers).sum(-1)
    new_scales = scales * (o / denominator).to(scales.dtype)[:, None]
    return new_o.to(opacities.dtype), new_scales


def _sample_by_opacity(opacities: torch.Tensor, count: int, generator: torch.Generator,
                       weights: torch.Tensor | None = None) -> torch.Tensor:
    probs = opacities.detach().double().cpu()
    if weights is not None:
        probs = probs * weights.detach().double().cpu()
    return torch.multinomial(probs / probs.sum(), count, replacement=True, generator=generator).to(opacities.device)


@torch.no_grad()
def _shared_values(model: GaussianModel, opacities: torch.Tensor, scales: torch.Tensor, sampled: torch.Tensor,
                   copies: torch.Tensor, min_opacity: float) -> dict[str, torch.Tensor]:
    new_o, new_s = relocation(opacities[sampled], scales[sampled], copies)
    new_o = new_o.clamp(min_opacity, 1.0 - torch.finfo(torch.float32).eps)
    return model.parameterisation.raw(model, sampled, scales=new_s, opacities=new_o)


@torch.no_grad()
def relocate_dead(model: GaussianModel, dead: torch.Tensor, generator: torch.Generator,
                  min_opacity: float = 0.005, weights: torch.Tensor | None = None) -> int:
    """Move the Gaussians where `dead` (N,) is True onto live ones sampled in proportion to opacity (times
    `weights` (N,), e.g. LPM's zones); each sampled Gaussian and its new copies share its opacity and size by
    `relocation()`. Returns how many moved."""
    dead_rows, alive_rows = _rows(dead), _rows(~dead)
    if len(dead_rows) == 0 or len(alive_rows) == 0:
        return 0
    current = model.activated()
    sampled = alive_rows[_sample_by_opacity(current.opacities[alive_rows], len(dead_rows), generator,
                                            None if weights is None else weights[alive_rows])]
    copies = torch.bincount(sampled, minlength=len(model))[sampled] + 1
    values = _shared_values(model, current.opacities, current.scales, sampled, copies, min_opacity)
    model.relocate(sampled, sampled, values)
    model.relocate(dead_rows, sampled)
    return len(dead_rows)


@torch.no_grad()
def add_by_opacity(model: GaussianModel, count: int, generator: torch.Generator, min_opacity: float = 0.005,
                   weights: torch.Tensor | None = None) -> int:
    """Append `count` Gaussians copied from ones sampled in proportion to opacity (times `weights` (N,)), sharing
    opacity and size with them by `relocation()` (MCMC growth). Returns `count`."""
    if count <= 0:
        return 0
    current = model.activated()
    sampled = _sample_by_opacity(current.opacities, count, generator, weights)
    copies = torch.bincount(sampled, minlength=len(model))[sampled] + 1
    values = _shared_values(model, current.opacities, current.scales, sampled, copies, min_opacity)
    model.assign(sampled, values)
    model.append(sampled)
    return count
