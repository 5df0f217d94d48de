"""Gaussians as a compact model stores them: integer latents decoded by small shared linear decoders for some
attributes (EAGLES, Girish, Gupta and Shrivastava, ECCV 2024), positions on a 16-bit grid, every other value on
a uniform grid. Shared by training (the EAGLES parameterisation builds one) and the compact file (which holds one
exactly), so both decode with the same arithmetic and a file renders bit for bit as the model it came from.

Raw (INRIA) conventions throughout, as `Gaussians`: log-scales, unnormalised wxyz quaternions, opacity logits,
SH coefficients sh0 (N, 1, 3) and shN (N, K-1, 3) flattened row-major (coefficient, channel) where a decoder
produces them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch
from scipy.spatial.transform import Rotation

from splatkit.data.scene import Similarity
from splatkit.model.gaussians import Gaussians
from splatkit.model.morton import morton_order
from splatkit.model.sh import SH_C0, num_sh_bases, sh_degree_from_bases, sh_rotation

# What a latent code may stand for: every attribute but the position (EAGLES keeps positions as floats).
CODABLE = ("sh0", "shN", "scales", "quats", "opacities")
POSITION_BITS = 16


def round_ste(z: torch.Tensor) -> torch.Tensor:
    """round(z) in the forward pass with an identity gradient (the straight-through estimator, Bengio et al.
    2013, as EAGLES quantizes its latents)."""
    return z + (torch.round(z) - z).detach()


def dct_basis(latent_dim: int, out_dim: int) -> torch.Tensor:
    """(latent_dim, out_dim) float32 orthonormal DCT-II rows: B[i, j] = c_j cos(pi (i + 1/2) j / out_dim), with
    c_0 = 1/sqrt(out_dim), c_j = sqrt(2/out_dim). EAGLES' fixed basis for the SH-rest decoder, whose only
    learned weights are a per-output scale."""
    i = torch.arange(latent_dim, dtype=torch.float64)[:, None] + 0.5
    j = torch.arange(out_dim, dtype=torch.float64)[None, :]
    basis = torch.cos(math.pi / out_dim * i * j) / math.sqrt(out_dim)
    basis[:, 1:] *= math.sqrt(2.0)
    return basis.float()


@dataclass
class LatentCode:
    """One attribute as integer latents and a linear decoder: values = latents @ matrix + bias.

    latents (N, D) float32 holding integers (what the file entropy-codes); matrix (D, C) float32; bias (C,)
    float32. C is the attribute's flattened width (shN: 3 (K-1), coefficient-major)."""

    latents: torch.Tensor
    matrix: torch.Tensor
    bias: torch.Tensor

    def decode(self) -> torch.Tensor:
        """(N, C) float32 raw values."""
        return torch.addmm(self.bias[None, :], self.latents, self.matrix)

    def mapped(self, linear: torch.Tensor, offset: torch.Tensor | None = None) -> "LatentCode":
        """The code of `values @ linear.T + offset` (a linear map of the decoded values folds into the decoder:
        how a rotation or a scale change reaches quantized attributes without re-quantizing)."""
        linear = linear.to(self.matrix)
        bias = self.bias @ linear.T + (0 if offset is None else offset.to(self.bias))
        return LatentCode(self.latents, self.matrix @ linear.T, bias)

    def subset(self, rows: torch.Tensor) -> "LatentCode":
        return LatentCode(self.latents[rows], self.matrix, self.bias)


# Grid steps of attributes a model does not code itself (a plain 3DGS model, or the attributes EAGLES leaves as
# floats), in raw units. Each keeps its error below what a viewer can show: colour (0.5 + SH_C0 * sh) within
# 1/1024 of full range (1/4 of an 8-bit display step), sizes within 0.4%, opacity within 0.4% (0.25 * step),
# rotations within about 0.1 degree (unit quaternions).
GRID_STEPS = {"sh0": 1 / (512 * SH_C0), "shN": 1 / (512 * SH_C0), "scales": 1 / 128, "quats": 1 / 512,
              "opacities": 1 / 64}


@dataclass
class QuantizedGaussians:
    """N Gaussians exactly as a compact file holds them.

    means_grid (N, 3) int32 in [0, 2^16): positions on a 16-bit grid after x -> sign(x) log(1 + |x|) (the SOG
    transform: fine steps near the scene centre, coarse ones far out), between the per-axis `grid_lo`/`grid_hi`
    (3,) float64 of that transform. `attributes` maps each of CODABLE to the LatentCode of its raw values,
    flattened per Gaussian (scales 3, quats 4, opacities 1, sh0 3, shN 3 (K-1)): a trained decoder for what
    the model coded (EAGLES), a uniform grid (a diagonal decoder, `grid_code`) for the rest.
    """

    means_grid: torch.Tensor
    grid_lo: np.ndarray
    grid_hi: np.ndarray
    attributes: dict[str, LatentCode]
    sh_degree: int
    level: torch.Tensor | None = None  # (N,) int64 FLoD level of each Gaussian (`Gaussians.level`)

    def __len__(self) -> int:
        return self.means_grid.shape[0]

    @staticmethod
    def row_shape(name: str, sh_degree: int) -> tuple[int, ...]:
        return {"sh0": (1, 3), "shN": (num_sh_bases(sh_degree) - 1, 3), "scales": (3,), "quats": (4,),
                "opacities": ()}[name]

    def means(self) -> torch.Tensor:
        """(N, 3) float32 positions at the grid's cell values."""
        lo, hi = torch.as_tensor(self.grid_lo), torch.as_tensor(self.grid_hi)
        t = lo + self.means_grid.double() * ((hi - lo) / (2**POSITION_BITS - 1))
        return (torch.sign(t) * torch.expm1(t.abs())).float()

    def raw(self, name: str) -> torch.Tensor:
        """Attribute `name`'s decoded raw values, shaped as in `Gaussians`."""
        return self.attributes[name].decode().reshape(len(self), *self.row_shape(name, self.sh_degree))

    def decoded(self) -> Gaussians:
        """The raw float32 Gaussians these values stand for (what every renderer and player format takes)."""
        return Gaussians(self.means(), *(self.raw(name) for name in ("scales", "quats", "opacities", "sh0", "shN")),
                         level=self.level)

    @property
    def activated_opacities(self) -> torch.Tensor:
        """(N,) opacities in (0, 1) (as `Gaussians.activated_opacities`, so export's slimming takes either)."""
        return Gaussians.opacity_activation(self.raw("opacities"))

    def transformed(self, t: Similarity) -> "QuantizedGaussians":
        """The same scene in the frame x' = scale R (x - center), as `Gaussians.transformed`: positions are
        re-gridded, and the rotation and scale change fold into the decoders (a quaternion product and an SH
        rotation are linear maps, a scale change an offset of log-scales), so no latent changes."""
        R = np.asarray(t.rotation, np.float64)
        attributes = dict(self.attributes)
        attributes["scales"] = attributes["scales"].mapped(torch.eye(3), torch.full((3,), float(np.log(t.scale))))
        if not np.array_equal(R, np.eye(3)):
            turn = _left_product(Rotation.from_matrix(R).as_quat()[[3, 0, 1, 2]])
            attributes["quats"] = attributes["quats"].mapped(torch.as_tensor(turn).float())
            if self.sh_degree > 0:
                sh_turn = torch.kron(sh_rotation(R, self.sh_degree), torch.eye(3, dtype=torch.float64))
                attributes["shN"] = attributes["shN"].mapped(sh_turn.float())
        means = torch.from_numpy(t.apply_points(self.means().numpy()))
        return quantize_positions(means, attributes, self.sh_degree, self.level)

    def with_sh_degree(self, degree: int) -> "QuantizedGaussians":
        """Drop SH bands above `degree` (the SH decoder loses the outputs of those bands)."""
        if degree >= self.sh_degree:
            return self
        keep = (num_sh_bases(degree) - 1) * 3
        code = self.attributes["shN"]
        shN = LatentCode(code.latents, code.matrix[:, :keep], code.bias[:keep])
        return replace(self, attributes={**self.attributes, "shN": shN}, sh_degree=degree)

    def subset(self, rows: torch.Tensor) -> "QuantizedGaussians":
        attributes = {name: code.subset(rows) for name, code in self.attributes.items()}
        return replace(self, means_grid=self.means_grid[rows], attributes=attributes,
                       level=None if self.level is None else self.level[rows])


def _left_product(q: np.ndarray) -> np.ndarray:
    """(4, 4) matrix L with L p = q * p (Hamilton product, wxyz)."""
    w, x, y, z = q
    return np.array([[w, -x, -y, -z], [x, w, -z, y], [y, z, w, -x], [z, -y, x, w]], np.float64)


def grid_code(values: torch.Tensor, step: float) -> LatentCode:
    """`values` (N, C) rounded to multiples of `step`, as a code: latents round(values / step), a diagonal
    decoder of `step` and no bias (decoding then multiplies each latent by `step`, exactly)."""
    latents = torch.round(values.double() / step).float()
    width = values.shape[1]
    return LatentCode(latents, torch.eye(width) * step, torch.zeros(width))


def quantize_positions(means: torch.Tensor, attributes: dict[str, LatentCode], sh_degree: int,
                       level: torch.Tensor | None = None) -> QuantizedGaussians:
    """Put `means` (N, 3) on the 16-bit grid of `QuantizedGaussians` (bounds from their own extent), with the
    Gaussians in Morton (Z-order) order of their cells: neighbours in the file are neighbours in space, so the
    positions' high bytes (and attributes that vary smoothly) compress far better."""
    t = torch.sign(means.double()) * torch.log1p(means.double().abs())
    lo = t.min(0).values if len(t) else torch.zeros(3, dtype=torch.float64)
    hi = t.max(0).values if len(t) else torch.ones(3, dtype=torch.float64)
    span = torch.where(hi > lo, hi - lo, torch.ones_like(hi))
    steps = 2**POSITION_BITS - 1
    grid = torch.round((t - lo) / span * steps).clamp(0, steps).int().cpu()
    q = QuantizedGaussians(grid, lo.cpu().numpy(), (lo + span).cpu().numpy(), attributes, sh_degree,
                           None if level is None else level.cpu())
    return q.subset(torch.from_numpy(morton_order(grid.numpy().astype(np.float64))))


def quantize(g: Gaussians, codes: dict[str, LatentCode] | None = None) -> QuantizedGaussians:
    """`g` (raw, any device) as a compact model: positions gridded, the attributes in `codes` as those latent
    codes (their decoded values replace g's), every other one on its `GRID_STEPS` grid (quaternions normalised
    first). Everything ends on the CPU."""
    codes = codes or {}
    g = g.detach().to("cpu")
    attributes = {}
    for name in CODABLE:
        if name in codes:
            attributes[name] = LatentCode(*(t.detach().cpu().float() for t in (
                codes[name].latents, codes[name].matrix, codes[name].bias)))
        else:
            values = g.activated_quats if name == "quats" else getattr(g, name)
            attributes[name] = grid_code(values.reshape(len(g), -1), GRID_STEPS[name])
    return quantize_positions(g.means, attributes, sh_degree_from_bases(1 + g.shN.shape[1]), g.level)
