"""Plain 3DGS (Kerbl et al. 2023): each attribute is its own parameter behind a fixed activation."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from splatkit.model.gaussians import PARAM_NAMES, ActivatedGaussians, Gaussians
from splatkit.train.gaussian_model import GaussianModel
from splatkit.train.learning_rates import LearningRates
from splatkit.train.parameterisations.base import PARAMETERISATIONS, Parameterisation


@PARAMETERISATIONS.register("3dgs")
@dataclass
class Plain3DGS(Parameterisation):
    """Plain 3DGS: means, log-scales, quaternions, opacity logits and SH coefficients, optimised directly."""

    def create(self, model: GaussianModel, init: Gaussians, lr: LearningRates, scene_extent: float) -> None:
        for name in PARAM_NAMES:
            rate = getattr(lr, name)
            if name == "means":  # positions move in scene units, slower and slower (3DGS)
                model.add_param(name, init.means, lr=rate * scene_extent,
                                lr_final=rate * scene_extent * lr.means_final)
            else:
                model.add_param(name, getattr(init, name), lr=rate)

    def _raw(self, model: GaussianModel) -> Gaussians:
        return Gaussians.from_dict(model.params)

    def activate(self, model: GaussianModel) -> ActivatedGaussians:
        return self._raw(model).activated()

    def export(self, model: GaussianModel) -> Gaussians:
        return self._raw(model)

    def raw(self, model: GaussianModel, rows: torch.Tensor, *, scales: torch.Tensor | None = None,
            opacities: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        out = {}
        if scales is not None:
            out["scales"] = torch.log(scales)
        if opacities is not None:
            out["opacities"] = torch.logit(opacities)
        return out
