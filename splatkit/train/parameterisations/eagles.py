"""EAGLES (Girish, Gupta and Shrivastava, "EAGLES: Efficient Accelerated 3D Gaussians with Lightweight
EncodingS", ECCV 2024; reference code `Sharath-girish/efficientgaussian`): attributes as quantized latents.

Each coded attribute is a per-Gaussian latent vector, rounded to integers in the forward pass (straight-through
gradient) and decoded by one linear layer shared by all Gaussians: SH rest 16 -> 45 through a fixed DCT basis
with a learned per-output scale, rotation 8 -> 4 and opacity 1 -> 1 through learned matrices (the reference's
`configs/efficient-3dgs.yaml`). Integer latents have low entropy, so the compact file stores them in a few bits
each. Positions, scales and DC colour stay floats by default (`coded` adds scale and DC colour).

Latents train at 0.1x the attribute's 3DGS rate, divided by the norm of their decoder's weights (so a step moves
the decoded value by about the same amount whatever the decoder has grown to; opacity is not divided, as in the
reference). Decoders are shared parameters with their own Adam. Latents are per-Gaussian parameters, so every
clone, split, prune and relocation carries them and their Adam moments (`GaussianModel`).

Influence pruning (the reference's `prune_influence`): each Gaussian's influence, the sum of its blending weights
alpha * T over the pixels it touches, is accumulated over the training renders; every `prune_every` of the run
until `prune_until`, the `prune_quantile` least influential are removed and the sums restart.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, Literal

import torch

from splatkit.errors import SplatkitError
from splatkit.model.gaussians import ActivatedGaussians, Gaussians
from splatkit.model.quantized import CODABLE, LatentCode, QuantizedGaussians, dct_basis, quantize, round_ste
from splatkit.model.sh import sh_degree_from_bases
from splatkit.train.gaussian_model import GaussianModel
from splatkit.train.learning_rates import LearningRates
from splatkit.train.parameterisations.base import PARAMETERISATIONS, Parameterisation
from splatkit.train.plugin import SetupContext, StepInfo

Codable = Literal["sh0", "shN", "scales", "quats", "opacities"]


@dataclass(frozen=True)
class _Decoder:
    """The reference's decoder of one attribute: basis ("dct": fixed DCT rows times a learned per-output scale;
    "linear": a learned matrix), initial weights ~ N(0, std^2), Adam rate, and whether the latents' rate is
    divided by the weights' norm."""

    basis: Literal["dct", "linear"]
    std: float
    lr: float
    normalise: bool


# The reference's settings for its three coded attributes; scale and DC colour (off there by default) get a
# rotation-like decoder, whose integer step is about 1% of a log-scale or colour unit at initialisation.
DECODERS = {"shN": _Decoder("dct", 5e-4, 5e-3, True), "quats": _Decoder("linear", 1e-2, 1e-2, True),
            "opacities": _Decoder("linear", 0.5, 0.3, False), "sh0": _Decoder("linear", 1e-2, 1e-2, True),
            "scales": _Decoder("linear", 1e-2, 1e-2, True)}


@functools.cache
def _basis(latent_dim: int, width: int, device: torch.device) -> torch.Tensor:
    return dct_basis(latent_dim, width).to(device)


@PARAMETERISATIONS.register("eagles")
@dataclass
class EaglesQuantized(Parameterisation):
    """Quantized latents (EAGLES): SH rest, rotation and opacity as integer latents through shared decoders."""

    coded: tuple[Codable, ...] = ("shN", "quats", "opacities")
    """Attributes stored as quantized latents (the rest stay floats); any of sh0 shN scales quats opacities."""
    shN_dim: int = 16
    """Latent size of the SH rest (45 values at degree 3)."""
    quats_dim: int = 8
    opacities_dim: int = 1
    sh0_dim: int = 3
    scales_dim: int = 3
    latent_lr: float = 0.1
    """Latent learning rate as a fraction of the attribute's 3DGS rate (before the decoder-norm division)."""
    influence_prune: bool = True
    """Prune the least influential Gaussians (sum of alpha * T over their pixels) on the schedule below."""
    prune_every: float = 0.17
    """Influence pruning interval as a fraction of the run (the reference: 5,100 of 30,000 steps)."""
    prune_until: float = 0.9
    """Last influence pruning, as a fraction of the run (the reference: 27,000 of 30,000)."""
    prune_quantile: float = 0.15
    """Fraction of Gaussians removed at each influence pruning."""
    seed: int = 0
    """Seed of the decoders' initial weights."""

    def validate(self) -> None:
        rules = {"coded": (len(set(self.coded)) == len(self.coded), "each attribute once"),
                 "latent_lr": (self.latent_lr > 0, "must be positive"),
                 "prune_every": (0 < self.prune_every <= 1, "must be in (0, 1]"),
                 "prune_until": (0 <= self.prune_until <= 1, "must be in [0, 1]"),
                 "prune_quantile": (0 <= self.prune_quantile < 1, "must be in [0, 1)"),
                 **{f"{n}_dim": (self.latent_dim(n) >= 1, "must be at least 1") for n in CODABLE}}
        for name, (ok, rule) in rules.items():
            if not ok:
                raise SplatkitError(f"--parameterisation.{name.replace('_', '-')} {getattr(self, name)}: {rule}")

    def render_needs(self) -> frozenset[str]:
        return frozenset({"weight_sums"}) if self.influence_prune else frozenset()

    def latent_dim(self, name: str) -> int:
        return getattr(self, f"{name}_dim")

    # ------------------------------------------------------------------ parameters

    def create(self, model: GaussianModel, init: Gaussians, lr: LearningRates, scene_extent: float) -> None:
        generator = torch.Generator().manual_seed(self.seed)
        model.add_param("means", init.means, lr=lr.means * scene_extent,
                        lr_final=lr.means * scene_extent * lr.means_final)
        for name in CODABLE:
            value = getattr(init, name)
            if name not in self.coded:
                model.add_param(name, value, lr=getattr(lr, name))
                continue
            spec, width = DECODERS[name], math.prod(value.shape[1:])
            rows = (1 if spec.basis == "dct" else self.latent_dim(name), width)
            model.add_param(f"{name}_decoder", torch.randn(rows, generator=generator) * spec.std, lr=spec.lr,
                            per_gaussian=False)
            model.add_param(f"{name}_bias", torch.zeros(width), lr=spec.lr, per_gaussian=False)
            # The SH rest starts at zero (as 3DGS's does); the others from the latents that decode nearest to
            # the initial values (the reference's `invert`).
            latents = torch.zeros(len(init), self.latent_dim(name)) if name == "shN" else \
                self._encode(model, name, value.reshape(len(init), width))
            model.add_param(f"{name}_latents", latents, lr=self._latent_rate(model, name, getattr(lr, name)))

    def _matrix(self, model: GaussianModel, name: str) -> torch.Tensor:
        """(D, C) the decoder's effective matrix."""
        weight = model.params[f"{name}_decoder"]
        if DECODERS[name].basis == "dct":
            return _basis(self.latent_dim(name), weight.shape[1], weight.device) * weight
        return weight

    def _latent_rate(self, model: GaussianModel, name: str, attribute_rate: float) -> float:
        """`latent_lr` times the attribute's 3DGS rate, over the decoder weights' norm where the reference
        divides."""
        base = attribute_rate * self.latent_lr
        if DECODERS[name].normalise:
            base /= float(model.params[f"{name}_decoder"].detach().norm()) + 1e-12
        return base

    @torch.no_grad()
    def _encode(self, model: GaussianModel, name: str, values: torch.Tensor) -> torch.Tensor:
        """(R, D) latents whose decoded values are nearest to `values` (R, C) (least squares, min-norm)."""
        matrix = self._matrix(model, name).detach().double()
        residual = values.double().to(matrix) - model.params[f"{name}_bias"].detach().double()
        return (residual @ torch.linalg.pinv(matrix)).float()

    def code(self, model: GaussianModel, name: str, *, straight_through: bool = True) -> LatentCode:
        """Attribute `name`'s latents (rounded: with a straight-through gradient, or plainly) and decoder."""
        latents = model.params[f"{name}_latents"]
        rounded = round_ste(latents) if straight_through else torch.round(latents.detach())
        return LatentCode(rounded, self._matrix(model, name), model.params[f"{name}_bias"])

    def _raw(self, model: GaussianModel, *, straight_through: bool) -> Gaussians:
        values = {"means": model.params["means"]}
        n = len(model)
        for name in CODABLE:
            if name in self.coded:
                decoded = self.code(model, name, straight_through=straight_through).decode()
                values[name] = decoded.reshape(n, *QuantizedGaussians.row_shape(name, self._degree(model)))
            else:
                values[name] = model.params[name]
        return Gaussians.from_dict(values)

    def _degree(self, model: GaussianModel) -> int:
        if "shN" in model.params:
            return sh_degree_from_bases(1 + model.params["shN"].shape[1])
        return sh_degree_from_bases(1 + model.params["shN_bias"].shape[0] // 3)

    def activate(self, model: GaussianModel) -> ActivatedGaussians:
        return self._raw(model, straight_through=True).activated()

    def export(self, model: GaussianModel) -> Gaussians:
        return self._raw(model, straight_through=False)

    def quantized(self, model: GaussianModel) -> QuantizedGaussians:
        codes = {name: self.code(model, name, straight_through=False) for name in self.coded}
        return quantize(self.export(model), codes)

    def raw(self, model: GaussianModel, rows: torch.Tensor, *, scales: torch.Tensor | None = None,
            opacities: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        out = {}
        for name, wanted in (("scales", None if scales is None else torch.log(scales)),
                             ("opacities", None if opacities is None else torch.logit(opacities))):
            if wanted is None:
                continue
            if name in self.coded:
                out[f"{name}_latents"] = torch.round(self._encode(model, name, wanted.reshape(len(rows), -1)))
            else:
                out[name] = wanted
        return out

    # ------------------------------------------------------------------ hooks

    def setup(self, ctx: SetupContext) -> dict[str, Any]:
        ctx.model.add_buffer("influence", torch.zeros(len(ctx.model)), new_rows="zero")
        every = max(1, round(self.prune_every * ctx.steps))
        return {"_prune_steps": set(range(every, int(self.prune_until * ctx.steps) + 1, every)) - {ctx.steps},
                "_rates": {name: getattr(ctx.lr, name) for name in self.coded}, "pruned": 0}

    @torch.no_grad()
    def post_backward(self, model: GaussianModel, state: dict, info: StepInfo) -> None:
        for name in self.coded:  # the reference's `latent_scale_norm: div`, refreshed every step
            model.set_learning_rate(f"{name}_latents", self._latent_rate(model, name, state["_rates"][name]))
        if self.influence_prune:
            for view in info.views:
                model.accumulate("influence", view.render.weight_sums.reshape(-1)[:len(model)])

    @torch.no_grad()
    def after_step(self, model: GaussianModel, state: dict, info: StepInfo) -> None:
        if self.influence_prune and info.step in state["_prune_steps"] and len(model) > 1:
            influence = model.buffers["influence"]
            prune = influence <= torch.quantile(influence, self.prune_quantile)
            model.keep(~prune)
            model.buffers["influence"].zero_()
            state["pruned"] += int(prune.sum())

    def log(self, model: GaussianModel, state: dict) -> dict[str, float]:
        pruned, state["pruned"] = state["pruned"], 0
        norms = {f"{name}_decoder_norm": float(model.params[f"{name}_decoder"].detach().norm())
                 for name in self.coded}
        return {"influence_pruned": float(pruned), **norms}
