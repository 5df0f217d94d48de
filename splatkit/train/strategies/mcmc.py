"""3DGS as Markov chain Monte Carlo (Kheradmand et al. 2024), with gsplat's MCMCStrategy defaults.

Gaussians are samples, not objects to clone: every `refine_every` steps the dead ones (opacity at most
`min_opacity`) are moved onto live ones drawn by opacity, and the set grows by 5% the same way until `cap_max`,
each drawn Gaussian sharing its opacity and size with its copies so the picture does not change
(`ops.relocation`). After every step the means take a stochastic-gradient Langevin step: noise shaped by each
Gaussian's covariance, scaled by the means' learning rate and almost switched off for opaque Gaussians. L1
regularisers on opacity and scale let unneeded Gaussians fade and die. The count never exceeds `cap_max`, which
makes the cost of a run predictable: on a CPU, time per step follows the number of Gaussians.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from splatkit.render.projection import covariance_3d
from splatkit.train.gaussian_model import GaussianModel
from splatkit.train.plugin import SetupContext, StepInfo
from splatkit.train.strategies import ops
from splatkit.train.strategies.base import STRATEGIES, Strategy


@STRATEGIES.register("mcmc")
@dataclass
class MCMCStrategy(Strategy):
    """3DGS as MCMC: relocate dead Gaussians, grow 5% per refinement up to a hard cap, noise on the means."""

    init_opacity: ClassVar[float] = 0.5
    init_scale: ClassVar[float] = 0.1

    cap_max: int = 1_000_000
    """Most Gaussians the run may hold (more initial points than this are subsampled to it)."""
    noise_lr: float = 5e5
    """Langevin noise on the means, times the means' current learning rate."""
    refine_start: int = 500
    refine_stop: int = 25_000
    refine_every: int = 100
    refine_until: float = 1.0
    """Stop relocating and growing after this fraction of the run (of each level, with FLoD) if that comes
    before refine_stop."""
    refine_every_phase: tuple[float, ...] = ()
    """Per phase of the run (FLoD's levels), the refinement interval as a fraction of that phase, in place of
    refine_every but never shorter than it (phases beyond the list, or all when it is empty: refine_every).
    --lod sets the reference's five."""
    min_opacity: float = 0.005
    """Gaussians at or below this opacity are dead and get relocated."""
    growth: float = 0.05
    """Grow the set by this fraction per refinement (until cap_max)."""
    opacity_reg: float = 0.01
    """Weight of the mean opacity in the loss."""
    scale_reg: float = 0.01
    """Weight of the mean scale (world units) in the loss."""
    seed: int = 0
    """Seed of the relocation sampler and the noise (their state is checkpointed)."""

    def validate(self) -> None:
        self.require(cap_max=self.cap_max >= 1, growth=self.growth >= 0, min_opacity=0 <= self.min_opacity < 1,
                     **self.schedule_checks())

    def setup(self, ctx: SetupContext) -> dict[str, Any]:
        generator = torch.Generator().manual_seed(self.seed)
        if len(ctx.model) > self.cap_max:  # the cap holds from the first step: keep a random subset of the points
            keep = torch.randperm(len(ctx.model), generator=generator)[:self.cap_max].sort().values
            ctx.model.keep(keep.to(ctx.model.device))
        return {"generator": generator}

    def losses(self, model: GaussianModel, state: dict, info: StepInfo) -> dict[str, torch.Tensor]:
        return {"opacity_reg": self.opacity_reg * info.gaussians.opacities.abs().mean(),
                "scale_reg": self.scale_reg * info.gaussians.scales.abs().mean()}

    @torch.no_grad()
    def after_step(self, model: GaussianModel, state: dict, info: StepInfo) -> None:
        if self.refines_at(info):  # relocation and growth sample by opacity, times the focus where given
            opacities = model.activated().opacities
            ops.relocate_dead(model, opacities <= self.min_opacity, state["generator"], self.min_opacity, info.focus)
            target = min(self.cap_max, int((1.0 + self.growth) * len(model)))
            ops.add_by_opacity(model, target - len(model), state["generator"], self.min_opacity, info.focus)
        self._perturb_means(model, state["generator"])

    def _perturb_means(self, model: GaussianModel, generator: torch.Generator) -> None:
        """SGLD step on the means: covariance-shaped noise, gated off as opacity approaches 1 (paper eq. 10-11)."""
        current = model.activated()
        gate = torch.sigmoid(100.0 * ((1.0 - current.opacities) - 0.995))
        noise = ops.randn(generator, tuple(model.params["means"].shape), model.device)
        noise = noise * (gate * model.learning_rate("means") * self.noise_lr)[:, None]
        covars = covariance_3d(current.quats, current.scales)
        model.params["means"].add_(torch.einsum("nij,nj->ni", covars, noise))
