"""Appearance embeddings (`--appearance`): a learnable embedding per training photo that a small decoder turns
into a colour offset of each Gaussian, as seen in that photo (gsplat's `app_opt`, after NeRF-W's appearance
embeddings, Martin-Brualla et al. 2021). Where `--exposure` changes a whole photo by one affine colour transform,
an embedding can change each Gaussian's colour its own way: lighting that moved between photos, a reflection
that came and went, a photo's vignetting or tone curve.

Camera i sees Gaussian g with its DC colour shifted by

    offset(g, i) = W2 (relu(W1 [e_i; f_g] + b1) - relu(W1 [e_mean; f_g] + b1)),

with e_i the photo's embedding (D), f_g the Gaussian's appearance feature (F, carried through every clone,
split, prune and relocation like its other attributes), W1 (H x (D + F)), b1 and W2 (3 x H) the decoder, and
e_mean the mean of the training photos' embeddings. The offset is view-independent (no view direction enters),
so the rendered colour stays 0.5 + SH_C0 sh0 + (the SH bands' view dependence) + offset.

Gauge: the offset is zero at the mean embedding, so the model's own colours are the photos' mean appearance:
what exports, the viewer and plain held-out scoring show (held-out photos take the mean embedding). The mean is
held constant in the gradient, as exposure's mean transform is (see splatkit.train.exposure): photo i's loss
moves e_i alone. Embeddings start at zero (every offset zero: the first step renders as without the option);
the decoder and features start at torch's layer initialisation and gsplat's uniform features.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any, Callable, ClassVar

import torch

from splatkit.errors import SplatkitError
from splatkit.model.gaussians import ActivatedGaussians
from splatkit.model.sh import SH_C0
from splatkit.train.metrics import ignore_masked, masked_mean
from splatkit.train.plugin import Plugin, SetupContext

if TYPE_CHECKING:
    from splatkit.train.gaussian_model import GaussianModel

EMBEDDINGS, FEATURES = "appearance_embeddings", "appearance_features"
DECODER = ("appearance_w1", "appearance_b1", "appearance_w2")


FIT_STEPS, FIT_LR = 100, 0.01  # a held-out view's embedding fit: Adam steps and rate (training spreads ~0.3)


def decoded_offsets(features: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor,
                    embedding: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """(N, 3) colour offsets (linear [0, 1] RGB units) of Gaussians with `features` (N, F) under `embedding`
    (D,): the module's formula, zero at `mean` (D,). float32, differentiable in every input."""
    dim = embedding.shape[-1]
    shared = features @ w1[:, dim:].T + b1  # (N, H): the features' share, common to both terms
    seen = torch.relu(shared + w1[:, :dim] @ embedding)
    average = torch.relu(shared + w1[:, :dim] @ mean)
    return (seen - average) @ w2.T


def with_offsets(gaussians: ActivatedGaussians, offsets: torch.Tensor) -> ActivatedGaussians:
    """`gaussians` with `offsets` ((N, 3), linear RGB) added to their rendered colours, through the DC term."""
    return replace(gaussians, sh0=gaussians.sh0 + offsets[:, None, :] / SH_C0)


def appearance_offsets(model: "GaussianModel", camera_index: int, train_ids: torch.Tensor) -> torch.Tensor:
    """(N, 3) float32 colour offsets (linear [0, 1] RGB units) of the model's Gaussians as training camera
    `camera_index` sees them: zero at the mean of the embeddings of `train_ids` ((T,) long), differentiable in
    the camera's embedding, the features and the decoder (the mean held constant)."""
    p = model.params
    embeddings = p[EMBEDDINGS]
    return decoded_offsets(p[FEATURES], *(p[name] for name in DECODER), embeddings[camera_index],
                           embeddings[train_ids].mean(dim=0).detach())


@dataclass(frozen=True)
class AppearanceDecoder:
    """A trained run's appearance model, detached, for views it never trained: a held-out photo is rendered
    under an embedding fitted to it (`eval --fit-exposure` on an `--appearance` run), as NeRF-W fits a held-out
    image's embedding on its left half."""

    features: torch.Tensor  # (N, F), row g for Gaussian g of the run's model (its final export's order)
    w1: torch.Tensor
    b1: torch.Tensor
    w2: torch.Tensor
    mean: torch.Tensor  # (D,) the training photos' mean embedding: the model's own colours

    @classmethod
    def of(cls, model: "GaussianModel", train_ids: list[int]) -> "AppearanceDecoder":
        p = model.params
        ids = torch.as_tensor(train_ids, dtype=torch.long)
        return cls(p[FEATURES].detach(), *(p[name].detach() for name in DECODER),
                   mean=p[EMBEDDINGS].detach()[ids].mean(dim=0))

    def to(self, device: torch.device | str) -> "AppearanceDecoder":
        return AppearanceDecoder(*(getattr(self, f.name).to(device) for f in fields(self)))

    def through(self, gaussians: ActivatedGaussians, embedding: torch.Tensor) -> ActivatedGaussians:
        """`gaussians` (the run's N, in order) with their DC colours as a photo of `embedding` (D,) sees them."""
        return with_offsets(gaussians, decoded_offsets(self.features, self.w1, self.b1, self.w2, embedding, self.mean))

    def fit(self, gaussians: ActivatedGaussians, render: Callable[[ActivatedGaussians], torch.Tensor],
            target: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        """The embedding (D,) float32 under which `render` (Gaussians -> (H', W', 3) image, e.g. a view's left
        half) comes closest to `target` (H', W', 3) in mean squared error over the kept pixels (`keep`
        (H', W', 1) bool or None): FIT_STEPS Adam steps from the mean embedding, the Gaussians and decoder frozen.
        Deterministic for the same inputs; reads nothing but `render`'s pixels and `target`."""
        embedding = self.mean.clone().requires_grad_()
        optimizer = torch.optim.Adam([embedding], lr=FIT_LR)
        with torch.enable_grad():
            for _ in range(FIT_STEPS):
                rgb, truth = ignore_masked(render(self.through(gaussians, embedding)), target, keep)
                masked_mean((rgb - truth).square(), keep).backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
        return embedding.detach()


@dataclass
class AppearanceEmbeddings(Plugin):
    """A learnable embedding per training photo, decoded into a colour offset per Gaussian (`--appearance`)."""

    lr: float = 1e-3
    feature_lr: float = 2.5e-3
    name = "appearance"
    embedding_dim: ClassVar[int] = 16  # gsplat's app_embed_dim; sizes are fixed, so checkpoints always fit
    feature_dim: ClassVar[int] = 16
    width: ClassVar[int] = 64  # the decoder's hidden units

    def validate(self) -> None:
        if self.lr < 0 or self.feature_lr < 0:
            raise SplatkitError(f"--appearance-lr {self.lr} / --appearance-feature-lr {self.feature_lr}: must be "
                                ">= 0")

    def declare(self, model: "GaussianModel", num_cameras: int) -> None:
        """Give `model` zero embeddings for `num_cameras` cameras, a feature per Gaussian and the decoder, drawn
        from a fixed seed (their values, not the run's --seed, are what a checkpoint restores). A zero rate
        freezes the embeddings and decoder (every offset then stays zero)."""
        generator = torch.Generator().manual_seed(0)
        inputs = self.embedding_dim + self.feature_dim

        def uniform(shape: tuple[int, ...], fan_in: int) -> torch.Tensor:  # torch.nn.Linear's initialisation
            bound = 1.0 / math.sqrt(fan_in)
            return (2.0 * torch.rand(shape, generator=generator) - 1.0) * bound

        rate = self.lr or None
        model.add_param(EMBEDDINGS, torch.zeros(num_cameras, self.embedding_dim), lr=rate, per_gaussian=False)
        model.add_param(FEATURES, torch.rand(len(model), self.feature_dim, generator=generator),
                        lr=self.feature_lr or None)
        for name, value in zip(DECODER, (uniform((self.width, inputs), inputs), uniform((self.width,), inputs),
                                         uniform((3, self.width), self.width))):
            model.add_param(name, value, lr=rate, per_gaussian=False)

    def setup(self, ctx: SetupContext) -> dict[str, Any]:
        self.declare(ctx.model, len(ctx.scene.cameras))
        return {"_train_ids": torch.as_tensor(ctx.scene.train_ids, dtype=torch.long, device=ctx.model.device)}

    def seen(self, model: "GaussianModel", state: dict, camera_index: int, gaussians: ActivatedGaussians
             ) -> ActivatedGaussians:
        return with_offsets(gaussians, appearance_offsets(model, camera_index, state["_train_ids"]))

    def log(self, model: "GaussianModel", state: dict) -> dict[str, float]:
        """How far the training photos' embeddings spread (RMS distance from their mean)."""
        with torch.no_grad():
            embeddings = model.params[EMBEDDINGS][state["_train_ids"]]
            spread = (embeddings - embeddings.mean(dim=0)).square().sum(dim=1).mean().sqrt()
        return {"appearance_spread": float(spread)}
