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

from splatkit.train.gaussian_model import GaussianModel
from splatkit.train.plugin import SetupContext, StepInfo
from splatkit.train.strategies import ops
from splatkit.train.strategies.base import STRATEGIES, Strategy


@STRATEGIES.register("adc")
@dataclass
class ADCStrategy(Strategy):
    """Adaptive density control (3DGS): clone, split and prune by screen-space gradient, periodic opacity reset."""

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
    refine_until: float = 1.0
    """Stop refining after this fraction of the run (of each level, with FLoD) if that comes before
    refine_stop."""
    refine_every_phase: tuple[float, ...] = ()
    """Per phase of the run (FLoD's levels), the refinement interval as a fraction of that phase, in place of
    refine_every but never shorter than it (phases beyond the list, or all when it is empty: refine_every).
    --lod sets the reference's five."""
    reset_every: int = 3_000
    seed: int = 0
    """Seed of the split sampler (its state is checkpointed)."""

    def validate(self) -> None:
        self.require(**self.schedule_checks(), reset_every=self.reset_every >= 1)

    def setup(self, ctx: SetupContext) -> dict[str, Any]:
        n = len(ctx.model)
        # Per-Gaussian gradient statistics since the last refinement: they follow every edit of the set.
        ctx.model.add_buffer("grad2d", torch.zeros(n), new_rows="zero")
        ctx.model.add_buffer("grad2d_count", torch.zeros(n), new_rows="zero")
        return {"generator": torch.Generator().manual_seed(self.seed)}

    def pre_backward(self, model: GaussianModel, state: dict, info: StepInfo) -> None:
        for view in info.views:
            view.render.means2d.retain_grad()

    @torch.no_grad()
    def post_backward(self, model: GaussianModel, state: dict, info: StepInfo) -> None:
        if not self.refining(info):
            return
        for view in info.views:
            render = view.render
            visible = (render.radii.amin(dim=-1) > 0).to(render.means2d.dtype)
            # Gradients in NDC units (x W/2, x H/2) so the threshold does not depend on the image size; the loss
            # averages this process's views, so x their count gives each view's own gradient (as gsplat does).
            # Masks multiply rather than select rows: the same sums without a gather and a scatter per step.
            grad, views = render.means2d_grad, len(info.views)
            norm = torch.hypot(grad[:, 0] * (view.width / 2 * views), grad[:, 1] * (view.height / 2 * views))
            model.accumulate("grad2d", norm.mul_(visible))
            model.accumulate("grad2d_count", visible)

    @torch.no_grad()
    def after_step(self, model: GaussianModel, state: dict, info: StepInfo) -> None:
        step, extent = info.phase_step, info.scene_extent
        if self.refines_at(info):
            extra = self._grow(model, state, extent, info.focus)
            self._prune(model, step, extent, extra)
            model.buffers["grad2d"].zero_()
            model.buffers["grad2d_count"].zero_()
        if step > 0 and step % self.reset_every == 0 and self.refining(info):
            ops.reset_opacities(model, 2 * self.prune_opa)

    def _grow(self, model: GaussianModel, state: dict, extent: float, focus: torch.Tensor | None) -> int:
        """Clone and split; with a `focus`, a Gaussian's gradient threshold is divided by its focus. Returns how
        many Gaussians the focus added beyond the plain rule (LPM prunes as many)."""
        mean_grad = model.buffers["grad2d"] / model.buffers["grad2d_count"].clamp(min=1)
        high = mean_grad > (self.grow_grad2d if focus is None else self.grow_grad2d / focus)
        extra = int((high & (mean_grad <= self.grow_grad2d)).sum())
        small = model.activated().scales.max(dim=-1).values <= self.grow_scale3d * extent
        ops.duplicate(model, high & small)
        # Clones were appended at the end; they are never split in the same round.
        clones = torch.zeros(int((high & small).sum()), dtype=torch.bool, device=high.device)
        ops.split(model, torch.cat([high & ~small, clones]), state["generator"])
        return extra

    def _prune(self, model: GaussianModel, step: int, extent: float, extra: int = 0) -> None:
        """Transparent Gaussians, after the first reset huge ones, and the `extra` least opaque ones."""
        current = model.activated()
        prune = current.opacities < self.prune_opa
        if step > self.reset_every:
            prune |= current.scales.max(dim=-1).values > self.prune_scale3d * extent
        if extra > 0:
            prune[torch.topk(current.opacities, min(extra, len(model)), largest=False).indices] = True
        ops.remove(model, prune)
