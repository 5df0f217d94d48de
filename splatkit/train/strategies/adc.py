"""Adaptive density control of 3DGS (Kerbl et al. 2023), with gsplat's DefaultStrategy defaults.

Every `refine_every` steps between `refine_start` and `refine_stop`: Gaussians whose view-averaged screen-space
gradient exceeds `grow_grad2d` are cloned when small or split when large; nearly transparent ones (and, after
the first opacity reset, huge ones) are pruned. Every `reset_every` steps all opacities drop to 2x the
pruning threshold, so floaters must earn their opacity back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from splatkit.train.strategies import ops
from splatkit.train.strategies.base import Optimizers, Params, Strategy


@dataclass
class ADCStrategy(Strategy):
    prune_opa: float = 0.005
    """Prune Gaussians whose opacity falls below this."""
    grow_grad2d: float = 2e-4
    """Clone/split Gaussians whose mean screen-space gradient (in NDC units) exceeds this."""
    grow_scale3d: float = 0.01
    """Clone below, split above this largest scale (times the scene extent)."""
    prune_scale3d: float = 0.1
    """After the first reset, prune Gaussians larger than this (times the scene extent)."""
    refine_start: int = 500
    refine_stop: int = 15_000
    refine_every: int = 100
    reset_every: int = 3_000
    seed: int = 0
    """Seed of the split sampler (its state is checkpointed)."""

    def initialize_state(self) -> dict[str, Any]:
        generator = torch.Generator().manual_seed(self.seed)
        return {"grad2d": None, "count": None, "generator": generator}

    def pre_backward(self, params: Params, optimizers: Optimizers, state: dict, step: int, info: dict) -> None:
        info["render"].means2d.retain_grad()

    @torch.no_grad()
    def post_backward(self, params: Params, optimizers: Optimizers, state: dict, step: int, info: dict) -> None:
        if step >= self.refine_stop:
            return
        render = info["render"]
        n = params["means"].shape[0]
        if state["grad2d"] is None or state["grad2d"].shape[0] != n:
            state["grad2d"] = torch.zeros(n, device=params["means"].device)
            state["count"] = torch.zeros(n, device=params["means"].device)
        visible = (render.radii > 0).all(dim=-1)
        # Gradients in NDC units (x W/2, x H/2) so the threshold does not depend on the image size.
        grad = render.means2d_grad[visible]
        grad = grad * grad.new_tensor([info["width"] / 2, info["height"] / 2])
        state["grad2d"][visible] += grad.norm(dim=-1)
        state["count"][visible] += 1

    @torch.no_grad()
    def after_step(self, params: Params, optimizers: Optimizers, state: dict, step: int, info: dict) -> None:
        extent = info["scene_extent"]
        if self.refine_start < step < self.refine_stop and step % self.refine_every == 0:
            self._grow(params, optimizers, state, extent)
            self._prune(params, optimizers, step, extent)
            state["grad2d"] = state["count"] = None
        if step > 0 and step % self.reset_every == 0 and step < self.refine_stop:
            ops.reset_opacities(params, optimizers, 2 * self.prune_opa)

    def _grow(self, params: Params, optimizers: Optimizers, state: dict, extent: float) -> None:
        if state["grad2d"] is None:
            return
        mean_grad = state["grad2d"] / state["count"].clamp(min=1)
        high = mean_grad > self.grow_grad2d
        small = torch.exp(params["scales"]).max(dim=-1).values <= self.grow_scale3d * extent
        ops.duplicate(params, optimizers, high & small)
        # Clones were appended at the end; they are never split in the same round.
        to_split = torch.cat([high & ~small, torch.zeros(int((high & small).sum()), dtype=torch.bool, device=high.device)])
        ops.split(params, optimizers, to_split, state["generator"])

    def _prune(self, params: Params, optimizers: Optimizers, step: int, extent: float) -> None:
        prune = torch.sigmoid(params["opacities"]) < self.prune_opa
        if step > self.reset_every:
            prune |= torch.exp(params["scales"]).max(dim=-1).values > self.prune_scale3d * extent
        ops.remove(params, optimizers, prune)
