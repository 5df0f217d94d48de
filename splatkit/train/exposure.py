"""Exposure compensation (`--exposure`): a learnable affine colour transform per training photo, applied to the
render before the loss, as INRIA 3DGS's exposure compensation (the 2024 code's `exposure` parameters, after
Kerbl et al. 2023); and its held-out counterpart, a transform fitted to the left half of a held-out photo
(`splatkit eval --fit-exposure`, INRIA's `--train_test_exp` protocol).

Camera i's photo is modelled as  photo = A_i render + b_i  per pixel, with T_i = [A_i | b_i] a 3x4 matrix on
linear [0, 1] RGB. Phone captures change exposure and white balance from photo to photo; without the transform
3DGS bakes those changes into the scene as floaters and colour blotches.

By default A_i is diagonal: a gain and an offset per channel, which is what exposure and white balance change
(von Kries). INRIA learns the full 3x4 (`full_matrix`), but one photo's colours barely constrain it: natural
photos' channels are so correlated that off-diagonal terms trade against the gains at almost no cost in the loss.
On cup_colmap photos trained twice, once under a known gain and offset per channel, the full 3x4 learnt gains a
median 5-20% off the known ones (its channel mix made up for them on each photo's own colours, to 2.1% at
worst); the diagonal one came within 1.3% on every photo's pixels (tests/test_exposure.py).

Gauge: the Gaussians' colours and all transforms could drift together (every photo twice as bright and the
model half as bright render the same). The learnable deltas D_i are therefore centred over the training
cameras, T_i = [I | 0] + D_i - mean_j D_j, so the transforms average to the identity and the model keeps the
captures' mean exposure: what exports, the viewer and plain held-out scoring (identity) show. The mean is
held constant in the gradient: camera i's loss then moves D_i alone, and its step moves the centred transforms
as the projected gradient would, where the full gradient would give every other row a 1/n share of it, which
Adam's per-row scaling would blow up into steps as large as the row's own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from splatkit.errors import SplatkitError
from splatkit.train.plugin import Plugin, SetupContext

if TYPE_CHECKING:
    from splatkit.data.scene import Scene
    from splatkit.train.gaussian_model import GaussianModel

PARAM = "exposures"
IDENTITY = torch.eye(3, 4)  # [I | 0]: a render as it is
PER_CHANNEL = torch.cat([torch.eye(3), torch.ones(3, 1)], dim=1)  # the entries a gain and offset per channel use


def apply_exposure(rgb: torch.Tensor, transform: torch.Tensor) -> torch.Tensor:
    """`rgb` (..., 3) float, linear [0, 1] colours, through the affine colour transform `transform` (3, 4),
    [A | b]: A rgb + b per pixel, differentiable in both. At [I | 0] every value comes back exactly."""
    transform = transform.to(rgb.dtype)
    return rgb @ transform[:, :3].T + transform[:, 3]


def fit_exposure(render: torch.Tensor, target: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
    """The per-channel affine colour transform (3, 4) float32, a gain and an offset per channel ([diag(a) | b]),
    that maps `render` closest to `target` in least squares (so at highest PSNR) over the kept pixels: both
    (H, W, 3) in [0, 1], `keep` (H, W, 1) bool or None. Solved in float64 on the CPU (minimum-norm where a
    channel is flat). A full 3x4 fit has 12 unknowns against the strongly correlated channels of natural photos:
    fitted on a held-out photo's left half, it extrapolated badly to the right half (cup_colmap 25.jpg: 34.9 dB
    whole, 26.4 dB on the right half through it), where 6 unknowns do not. Raises SplatkitError when fewer than
    2 pixels are kept, too few to fix a gain and an offset."""
    rows = render.detach().reshape(-1, 3).double().cpu()
    values = target.detach().reshape(-1, 3).double().cpu()
    if keep is not None:
        kept = keep.reshape(-1).cpu()
        rows, values = rows[kept], values[kept]
    if len(rows) < 2:
        raise SplatkitError(f"an exposure fit needs at least 2 kept pixels, got {len(rows)}")
    design = torch.stack([rows, torch.ones_like(rows)], dim=0).permute(2, 1, 0)  # (3, P, 2): channel value, 1
    solution = torch.linalg.lstsq(design, values.T[..., None], driver="gelsd").solution[..., 0]  # (3, 2)
    transform = torch.zeros(3, 4, dtype=torch.float64)
    transform[:, :3] = torch.diag(solution[:, 0])
    transform[:, 3] = solution[:, 1]
    return transform.float()


def exposure_transforms(model: "GaussianModel", train_ids: torch.Tensor, full_matrix: bool = True
                        ) -> torch.Tensor:
    """(C, 3, 4) each camera's transform: [I | 0] plus its learnt delta, centred over the training cameras
    `train_ids` (held-out cameras, never trained, get the identity: the captures' mean exposure); differentiable
    in camera i's own delta (the mean is held constant, see the module's note). Training without `full_matrix`
    reads only the deltas' diagonal and offset entries, so the others get no gradient and stay zero: reading all
    entries afterwards gives the same transforms."""
    deltas = model.params[PARAM]
    if not full_matrix:
        deltas = deltas * PER_CHANNEL.to(deltas)
    centred = deltas - deltas[train_ids].mean(dim=0).detach()
    trained = torch.zeros(len(deltas), 1, 1, dtype=torch.bool, device=deltas.device)
    trained[train_ids] = True
    return IDENTITY.to(deltas) + torch.where(trained, centred, torch.zeros_like(centred))


def named_exposures(model: "GaussianModel", scene: "Scene") -> dict[str, torch.Tensor]:
    """Each training photo's transform (3, 4) on the CPU by image name, what the viewer previews; empty for a
    model without exposures (trained without --exposure)."""
    if PARAM not in model.params:
        return {}
    with torch.no_grad():
        ids = torch.as_tensor(scene.train_ids, dtype=torch.long, device=model.params[PARAM].device)
        transforms = exposure_transforms(model, ids).cpu()
    return {scene.cameras[i].name: transforms[i] for i in scene.train_ids}


@dataclass
class ExposureCompensation(Plugin):
    """A learnable affine colour transform per training photo (`--exposure`)."""

    lr: float = 0.01
    lr_final: float = 0.001
    full_matrix: bool = False  # INRIA's full 3x4, channels mixed; else a gain and an offset per channel
    name = "exposure"

    def validate(self) -> None:
        if self.lr < 0 or self.lr_final < 0:
            raise SplatkitError(f"--exposure-lr {self.lr} / --exposure-lr-final {self.lr_final}: must be >= 0")

    def declare(self, model: "GaussianModel", num_cameras: int) -> None:
        """Give `model` the (num_cameras, 3, 4) deltas, zero: every transform the identity. A zero rate freezes
        them there (no gradient, no step)."""
        model.add_param(PARAM, torch.zeros(num_cameras, 3, 4), lr=self.lr or None,
                        lr_final=self.lr_final if self.lr else None, per_gaussian=False)

    def setup(self, ctx: SetupContext) -> dict[str, Any]:
        self.declare(ctx.model, len(ctx.scene.cameras))
        return {"_train_ids": torch.as_tensor(ctx.scene.train_ids, dtype=torch.long, device=ctx.model.device)}

    def photographed(self, model: "GaussianModel", state: dict, camera_index: int, rgb: torch.Tensor
                     ) -> torch.Tensor:
        return apply_exposure(rgb, exposure_transforms(model, state["_train_ids"], self.full_matrix)[camera_index])

    def log(self, model: "GaussianModel", state: dict) -> dict[str, float]:
        """The spread of the training photos' gains (std of the transforms' diagonals): how much the captures'
        exposures differ, as training sees them."""
        with torch.no_grad():
            ids = state["_train_ids"]
            gains = exposure_transforms(model, ids, self.full_matrix)[ids].diagonal(dim1=1, dim2=2)
        return {"exposure_gain_std": float(gains.std())} if len(gains) > 1 else {}
