"""Gaussians as a compact model stores them: integer latents decoded by small shared linear decoders for some
attributes (EAGLES, Girish, Gupta and Shrivastava, ECCV 2024), positions on a 16-bit grid, the rest in half
precision. Shared by training (the EAGLES parameterisation builds one) and the compact file (which holds one
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
from splatkit.model.sh import num_sh_bases, sh_degree_from_bases, sh_rotation

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


@dataclass
class QuantizedGaussians:
    """N Gaussians exactly as a compact file holds them.

    means_grid (N, 3) int32 in [0, 2^16): positions on a 16-bit grid after x -> sign(x) log(1 + |x|) (the SOG
    transform: fine steps near the scene centre, coarse ones far out), between the per-axis `grid_lo`/`grid_hi`
    (3,) float64 of that transform. `attributes` maps each of CODABLE to a LatentCode or to a float16 tensor of
    its raw values (scales (N, 3), quats (N, 4), opacities (N,), sh0 (N, 1, 3), shN (N, K-1, 3)).
    """

    means_grid: torch.Tensor
    grid_lo: np.ndarray
    grid_hi: np.ndarray
    attributes: dict[str, "torch.Tensor | LatentCode"]
    sh_degree: int

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

    def decoded(self) -> Gaussians:
        """The raw float32 Gaussians these values stand for (what every renderer and player format takes)."""
        values = {}
        for name in CODABLE:
            value = self.attributes[name]
            raw = value.decode() if isinstance(value, LatentCode) else value.float()
            values[name] = raw.reshape(len(self), *self.row_shape(name, self.sh_degree))
        return Gaussians(self.means(), values["scales"], values["quats"], values["opacities"], values["sh0"],
                         values["shN"])

    @property
    def activated_opacities(self) -> torch.Tensor:
        """(N,) opacities in (0, 1) (as `Gaussians.activated_opacities`, so export's slimming takes either)."""
        value = self.attributes["opacities"]
        raw = value.decode() if isinstance(value, LatentCode) else value.float()
        return Gaussians.opacity_activation(raw.reshape(len(self)))

    def latent_names(self) -> list[str]:
        return [name for name in CODABLE if isinstance(self.attributes[name], LatentCode)]

    def transformed(self, t: Similarity) -> "QuantizedGaussians":
        """The same scene in the frame x' = scale R (x - center), as `Gaussians.transformed`: positions are
        re-gridded, and the rotation and scale change fold into the decoders of coded attributes (a quaternion
        product and an SH rotation are linear maps), so no latent changes."""
        g = self.decoded()
        moved = g.transformed(t)
        R = np.asarray(t.rotation, np.float64)
        linear = {"quats": torch.as_tensor(_left_product(Rotation.from_matrix(R).as_quat()[[3, 0, 1, 2]])),
                  "shN": torch.kron(sh_rotation(R, self.sh_degree), torch.eye(3, dtype=torch.float64))}
        attributes = {}
        for name, value in self.attributes.items():
            if not isinstance(value, LatentCode):
                attributes[name] = getattr(moved, name).half()
            elif name == "scales":
                attributes[name] = value.mapped(torch.eye(3), torch.full((3,), float(np.log(t.scale))))
            elif name in linear and not np.array_equal(R, np.eye(3)):
                attributes[name] = value.mapped(linear[name].float())
            else:
                attributes[name] = value
        return quantize_positions(moved.means, attributes, self.sh_degree)

    def with_sh_degree(self, degree: int) -> "QuantizedGaussians":
        """Drop SH bands above `degree` (a decoder loses the outputs of those bands)."""
        if degree >= self.sh_degree:
            return self
        keep = (num_sh_bases(degree) - 1) * 3
        value = self.attributes["shN"]
        shN = LatentCode(value.latents, value.matrix[:, :keep], value.bias[:keep]) \
            if isinstance(value, LatentCode) else value[:, :keep // 3]
        return replace(self, attributes={**self.attributes, "shN": shN}, sh_degree=degree)

    def subset(self, rows: torch.Tensor) -> "QuantizedGaussians":
        attributes = {name: v.subset(rows) if isinstance(v, LatentCode) else v[rows]
                      for name, v in self.attributes.items()}
        return replace(self, means_grid=self.means_grid[rows], attributes=attributes)


def _left_product(q: np.ndarray) -> np.ndarray:
    """(4, 4) matrix L with L p = q * p (Hamilton product, wxyz)."""
    w, x, y, z = q
    return np.array([[w, -x, -y, -z], [x, w, -z, y], [y, z, w, -x], [z, -y, x, w]], np.float64)


def quantize_positions(means: torch.Tensor, attributes: dict[str, "torch.Tensor | LatentCode"],
                       sh_degree: int) -> QuantizedGaussians:
    """Put `means` (N, 3) on the 16-bit grid of `QuantizedGaussians` (bounds from their own extent), with the
    Gaussians in Morton (Z-order) order of their cells: neighbours in the file are neighbours in space, so the
    positions' high bytes (and attributes that vary smoothly) compress far better."""
    t = torch.sign(means.double()) * torch.log1p(means.double().abs())
    lo = t.min(0).values if len(t) else torch.zeros(3, dtype=torch.float64)
    hi = t.max(0).values if len(t) else torch.ones(3, dtype=torch.float64)
    span = torch.where(hi > lo, hi - lo, torch.ones_like(hi))
    steps = 2**POSITION_BITS - 1
    grid = torch.round((t - lo) / span * steps).clamp(0, steps).int().cpu()
    q = QuantizedGaussians(grid, lo.cpu().numpy(), (lo + span).cpu().numpy(), attributes, sh_degree)
    return q.subset(torch.from_numpy(np.argsort(morton_codes(grid.numpy()), kind="stable")))


def morton_codes(grid: np.ndarray) -> np.ndarray:
    """(N,) uint64 Z-order codes of (N, 3) 16-bit cells: bit b of axis a goes to bit 3 b + a."""
    codes = np.zeros(len(grid), np.uint64)
    for axis in range(3):
        spread = grid[:, axis].astype(np.uint64)
        for b in range(POSITION_BITS):
            codes |= ((spread >> np.uint64(b)) & np.uint64(1)) << np.uint64(3 * b + axis)
    return codes


def quantize(g: Gaussians, codes: dict[str, LatentCode] | None = None) -> QuantizedGaussians:
    """`g` (raw, any device) as a compact model: positions gridded, the attributes in `codes` as those latent
    codes (their decoded values replace g's), every other one in float16. Everything ends on the CPU."""
    codes = codes or {}
    g = g.detach().to("cpu")
    attributes: dict[str, torch.Tensor | LatentCode] = {}
    for name in CODABLE:
        code = codes.get(name)
        attributes[name] = LatentCode(*(t.detach().cpu().float() for t in (code.latents, code.matrix, code.bias))) \
            if code is not None else getattr(g, name).half()
    return quantize_positions(g.means, attributes, sh_degree_from_bases(1 + g.shN.shape[1]))
