"""FLoD (Seo et al., "FLoD: Integrating Flexible Level of Detail into 3D Gaussian Splatting for Customizable
Rendering", arXiv 2408.12894; reference code `3DGS-FLoD/flod`): levels of detail trained one after another.

Level l's Gaussians cannot be smaller than s_min(l) = tau / rho^(l - 1) (the top level: no floor): the activated
scale is exp(s) + s_min(l), so coarse levels hold few, large Gaussians and each next level may refine them.
The run is split into one phase per level (`phases`); at the end of a level its Gaussians are frozen as that
level (kept as shared tensors without gradient or optimiser state, never edited again) and copied to seed the
next, each copy re-parameterised so its actual scale is unchanged under the new, smaller floor; every optimiser
moment restarts, as the reference sets up a new optimiser per level. During a level, Gaussians closer than half
its floor to their three nearest neighbours (on average) are pruned as overlapping (all but the most opaque in
each floor-sized cell), every `overlap_every` of the level until `overlap_until` of it.

`export` gives every level at once, with its index in `Gaussians.level`; commands that render pick a level
(or a selective set) from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from splatkit.errors import SplatkitError
from splatkit.model.gaussians import PARAM_NAMES, ActivatedGaussians, Gaussians, knn_mean_distance
from splatkit.train.gaussian_model import GaussianModel
from splatkit.train.learning_rates import LearningRates
from splatkit.train.parameterisations.base import PARAMETERISATIONS, Parameterisation
from splatkit.train.parameterisations.plain import Plain3DGS
from splatkit.train.plugin import SetupContext, StepInfo

MIN_SCALE = 1e-7  # the reference's clamp when a wanted scale falls below the floor


@PARAMETERISATIONS.register("flod")
@dataclass
class FLoD(Parameterisation):
    """Levels of detail (FLoD): levels trained one after another, each with a floor under its Gaussians' sizes."""

    levels: int = 5
    tau: float = 0.2
    """Size floor of level 1, in training-frame units (the camera rig's radius is 1)."""
    rho: float = 4.0
    """Each next level's floor is this many times smaller (the top level has none)."""
    level_steps: tuple[float, ...] = (10, 15, 20, 25, 30)
    """Relative step budgets of the levels, scaled to --steps (the reference: 10k, 15k, 20k, 25k, 30k)."""
    overlap_every: float = 0.1
    """Overlap pruning interval as a fraction of a level (the reference: 1,000 steps of 10,000-30,000)."""
    overlap_until: float = 0.5
    """Overlap pruning stops after this fraction of a level (the reference: with densification, 40-50%)."""

    def validate(self) -> None:
        rules = {"levels": (self.levels >= 1, "must be at least 1"), "tau": (self.tau > 0, "must be positive"),
                 "rho": (self.rho > 1, "must be above 1"),
                 "level_steps": (len(self.level_steps) == self.levels and min(self.level_steps, default=0) > 0,
                                 f"one positive budget per level ({self.levels})"),
                 "overlap_every": (0 < self.overlap_every <= 1, "must be in (0, 1]"),
                 "overlap_until": (0 <= self.overlap_until <= 1, "must be in [0, 1]")}
        for name, (ok, rule) in rules.items():
            if not ok:
                raise SplatkitError(f"--parameterisation.{name.replace('_', '-')} {getattr(self, name)}: {rule}")

    def floor(self, level: int) -> float:
        """s_min(level), world units of the training frame: tau / rho^(level - 1), 0 at the top level."""
        return 0.0 if level >= self.levels else self.tau / self.rho ** (level - 1)

    def phases(self, steps: int) -> list[int]:
        """Each level's steps: `level_steps` shared out of `steps`. Raises SplatkitError when a level would get
        none (a run shorter than its levels)."""
        total = sum(self.level_steps)
        ends = [round(steps * sum(self.level_steps[:i + 1]) / total) for i in range(self.levels)]
        lengths = [b - a for a, b in zip([0, *ends[:-1]], ends)]
        if steps > 0 and min(lengths) < 1:
            raise SplatkitError(f"--steps {steps} leaves level {lengths.index(min(lengths)) + 1} of {self.levels} "
                                "without a step: train longer or with fewer --parameterisation.levels")
        return lengths

    # ------------------------------------------------------------------ parameters

    def create(self, model: GaussianModel, init: Gaussians, lr: LearningRates, scene_extent: float) -> None:
        floor = self.floor(1)
        start = Gaussians(init.means, self._unfloored(init.scales, floor), init.quats, init.opacities, init.sh0,
                          init.shN)
        Plain3DGS().create(model, start, lr, scene_extent)
        model.add_param("level", torch.tensor(1), lr=None, per_gaussian=False)  # the level being trained
        # The finished levels (raw INRIA form and level index), empty until the first switch.
        for name in PARAM_NAMES:
            model.add_param(f"frozen_{name}", getattr(init, name)[:0], lr=None, per_gaussian=False)
        model.add_param("frozen_level", torch.zeros(0, dtype=torch.int64), lr=None, per_gaussian=False)

    @staticmethod
    def _unfloored(log_scales: torch.Tensor, floor: float) -> torch.Tensor:
        """Raw s with exp(s) + floor = exp(log_scales), clamped where the scale is below the floor."""
        return torch.log((torch.exp(log_scales) - floor).clamp(min=MIN_SCALE))

    def current_level(self, model: GaussianModel) -> int:
        return int(model.params["level"])

    def _current(self, model: GaussianModel) -> Gaussians:
        """The level being trained, raw INRIA form (log of the floored scale), differentiable."""
        params = model.params
        scales = torch.log(torch.exp(params["scales"]) + self.floor(self.current_level(model)))
        return Gaussians(params["means"], scales, params["quats"], params["opacities"], params["sh0"],
                         params["shN"])

    def activate(self, model: GaussianModel) -> ActivatedGaussians:
        return self._current(model).activated()

    def export(self, model: GaussianModel) -> Gaussians:
        current = self._current(model)
        level = torch.full((len(model),), self.current_level(model), dtype=torch.int64, device=model.device)
        frozen = {name: model.params[f"frozen_{name}"] for name in PARAM_NAMES}
        return Gaussians.from_dict({**{name: torch.cat([frozen[name], getattr(current, name)])
                                       for name in PARAM_NAMES},
                                    "level": torch.cat([model.params["frozen_level"], level])})

    def raw(self, model: GaussianModel, rows: torch.Tensor, *, scales: torch.Tensor | None = None,
            opacities: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        out = {}
        if scales is not None:
            out["scales"] = torch.log((scales - self.floor(self.current_level(model))).clamp(min=MIN_SCALE))
        if opacities is not None:
            out["opacities"] = torch.logit(opacities)
        return out

    # ------------------------------------------------------------------ hooks

    def setup(self, ctx: SetupContext) -> dict[str, Any]:
        return {"overlap_pruned": 0}

    @torch.no_grad()
    def after_step(self, model: GaussianModel, state: dict, info: StepInfo) -> None:
        level, length = self.current_level(model), max(1, info.phase_steps)
        every = max(1, round(self.overlap_every * length))
        if self.floor(level) > 0 and 0 < info.phase_step <= self.overlap_until * length and \
                info.phase_step % every == 0 and len(model) > 3:
            prune = self.overlapping(model, 0.5 * self.floor(level))
            model.keep(~prune)
            state["overlap_pruned"] += int(prune.sum())
        if info.phase_step == info.phase_steps - 1 and level < self.levels:
            self.next_level(model)

    @staticmethod
    @torch.no_grad()
    def overlapping(model: GaussianModel, threshold: float) -> torch.Tensor:
        """(N,) bool, the Gaussians overlap pruning removes: those whose mean distance to their 3 nearest
        neighbours is under `threshold` (the reference's test), except the most opaque of them in each cell of
        a `threshold`-sized grid. The reference removes every crowded Gaussian at once, which empties a level
        whose points all crowd closer than that (fox's 50,000 random initial points at level 1); one per cell
        keeps the coverage the level's floor can resolve."""
        means = model.params["means"].detach()
        crowded = torch.from_numpy(knn_mean_distance(means.cpu().numpy()) < threshold).to(means.device)
        cells = torch.floor(means[crowded] / threshold).long()
        _, cell = torch.unique(cells, dim=0, return_inverse=True)
        opacity = model.params["opacities"].detach()[crowded].reshape(-1)
        order = torch.argsort(opacity, descending=True, stable=True)
        order = order[torch.argsort(cell[order], stable=True)]  # by cell, the most opaque first in each
        first = torch.ones(len(order), dtype=torch.bool, device=means.device)
        first[1:] = cell[order][1:] != cell[order][:-1]
        prune = crowded.clone()
        prune[torch.nonzero(crowded).reshape(-1)[order[first]]] = False
        return prune

    @torch.no_grad()
    def next_level(self, model: GaussianModel) -> None:
        """Freeze the trained level and seed the next with copies of its Gaussians, whose raw scales are
        re-parameterised so exp(s') + s_min(next) = exp(s) + s_min(level): the copies render as their parents."""
        level = self.current_level(model)
        finished = self.export(model)
        for name in (*PARAM_NAMES, "level"):
            model.add_param(f"frozen_{name}", getattr(finished, name), lr=None, per_gaussian=False)
        sizes = torch.exp(model.params["scales"]) + self.floor(level)
        model.params["scales"].copy_(self._unfloored(torch.log(sizes), self.floor(level + 1)))
        model.params["level"].fill_(level + 1)
        model.restart_moments()

    def log(self, model: GaussianModel, state: dict) -> dict[str, float]:
        pruned, state["overlap_pruned"] = state["overlap_pruned"], 0
        return {"level": float(self.current_level(model)), "overlap_pruned": float(pruned)}
