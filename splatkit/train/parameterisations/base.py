"""The interface between a model's raw parameters and the Gaussians the rasterizer draws."""

from __future__ import annotations

import torch

from splatkit.model.gaussians import ActivatedGaussians, Gaussians
from splatkit.model.quantized import QuantizedGaussians, quantize
from splatkit.train.gaussian_model import GaussianModel
from splatkit.train.learning_rates import LearningRates
from splatkit.train.plugin import Plugin, Registry


class Parameterisation(Plugin):
    """How raw parameters become Gaussians: plain 3DGS activations, quantized latents through shared decoders
    (EAGLES), per-level scale bounds (FLoD). It declares the parameters, activates them every step, and tells
    strategies which raw rows give a Gaussian a wanted scale or opacity (split, relocation, opacity reset)."""

    def create(self, model: GaussianModel, init: Gaussians, lr: LearningRates, scene_extent: float) -> None:
        """Declare the parameters (`model.add_param`) of the initial Gaussians `init` (raw, training frame)."""
        raise NotImplementedError

    def activate(self, model: GaussianModel) -> ActivatedGaussians:
        """The Gaussians to rasterize, differentiable with respect to `model.params`."""
        raise NotImplementedError

    def export(self, model: GaussianModel) -> Gaussians:
        """The model in raw INRIA form for files and viewers (default: the inverse activations of `activate`)."""
        return Gaussians.from_activated(self.activate(model))

    def phases(self, steps: int) -> list[int]:
        """The run's phases as step counts summing to `steps` (FLoD: one per level). Strategies' schedules and
        the learning-rate decay start again in each phase; the default is one phase."""
        return [steps]

    def quantized(self, model: GaussianModel) -> QuantizedGaussians:
        """The model as a compact file stores it (default: every attribute in float16, positions gridded)."""
        return quantize(self.export(model))

    def raw(self, model: GaussianModel, rows: torch.Tensor, *, scales: torch.Tensor | None = None,
            opacities: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Parameter rows that give Gaussians `rows` these activated `scales` (R, 3) (world units) and/or
        `opacities` (R,) in (0, 1), as `{parameter name: (R, ...) values}` for `GaussianModel.append/assign`."""
        raise NotImplementedError


PARAMETERISATIONS: Registry[Parameterisation] = Registry("parameterisation")
