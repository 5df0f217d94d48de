"""Gaussians in two forms: raw parameters as files store them (`Gaussians`) and activated values as rasterizers
consume them (`ActivatedGaussians`), with the activations between them declared in one place.

Raw tensors are what the INRIA .ply layout stores and plain 3DGS optimises: log-scales, unnormalised wxyz
quaternions, opacity logits, and SH coefficients split into the DC term `sh0` (N, 1, 3) and the rest `shN`
(N, K-1, 3). Training parameterisations other than plain 3DGS (quantized latents, per-level scale bounds) produce
`ActivatedGaussians` directly.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, fields

import numpy as np
import torch
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation

from splatkit.data.scene import Similarity
from splatkit.model.sh import num_sh_bases, rgb_to_sh, sh_degree_from_bases, sh_rotation

PARAM_NAMES = ("means", "scales", "quats", "opacities", "sh0", "shN")
# The most opaque value a file's logit can hold: sigmoid(logit(1 - 1e-6)) in float32 stays below 1.
_MAX_OPACITY = 1.0 - 1e-6


class _PerGaussian:
    """What both forms share; subclasses are dataclasses with fields means, ..., sh0, shN (N rows each)."""

    def __len__(self) -> int:
        return self.means.shape[0]

    @property
    def sh_degree(self) -> int:
        return sh_degree_from_bases(1 + self.shN.shape[1])

    @property
    def sh(self) -> torch.Tensor:
        """All SH coefficients, (N, K, 3)."""
        return torch.cat([self.sh0, self.shN], dim=1)

    def as_dict(self) -> dict[str, torch.Tensor]:
        """Every per-Gaussian tensor by field name (optional fields that are None left out)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}


@dataclass
class ActivatedGaussians(_PerGaussian):
    """What a rasterizer consumes (the inputs of gsplat's `rasterization()`): N Gaussians in world units.

    means (N, 3) float32 world positions; quats (N, 4) wxyz rotations (local-to-world) of any non-zero length,
    which every consumer normalises (as gsplat's `rasterization()` does: training then spares a normalisation
    and its backward per step, ~0.25 ms of a 9 ms step at 200x150); scales (N, 3)
    standard deviations along the rotated axes, in world units; opacities (N,) in [0, 1]; sh0 (N, 1, 3) and
    shN (N, K-1, 3) real SH coefficients (INRIA's basis and order) of RGB - 0.5, K = (degree + 1)^2.
    Tensors may carry autograd graphs back to whatever parameters produced them.
    """

    means: torch.Tensor
    quats: torch.Tensor
    scales: torch.Tensor
    opacities: torch.Tensor
    sh0: torch.Tensor
    shN: torch.Tensor

    def detach(self) -> "ActivatedGaussians":
        return ActivatedGaussians(**{k: v.detach() for k, v in self.as_dict().items()})


@dataclass
class Gaussians(_PerGaussian):
    means: torch.Tensor  # (N, 3) world positions
    scales: torch.Tensor  # (N, 3) log of the standard deviations
    quats: torch.Tensor  # (N, 4) wxyz, not necessarily unit length
    opacities: torch.Tensor  # (N,) logits
    sh0: torch.Tensor  # (N, 1, 3)
    shN: torch.Tensor  # (N, K-1, 3), K = (degree+1)^2
    level: torch.Tensor | None = None  # (N,) int64 level of detail (FLoD: 1 coarsest); None: a model without levels

    # Activations and their inverses, declared once.
    @staticmethod
    def scale_activation(raw: torch.Tensor) -> torch.Tensor:
        return torch.exp(raw)

    @staticmethod
    def opacity_activation(raw: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(raw)

    @staticmethod
    def quat_activation(raw: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(raw, dim=-1)

    @property
    def activated_scales(self) -> torch.Tensor:
        return self.scale_activation(self.scales)

    @property
    def activated_opacities(self) -> torch.Tensor:
        return self.opacity_activation(self.opacities)

    @property
    def activated_quats(self) -> torch.Tensor:
        return self.quat_activation(self.quats)

    @classmethod
    def from_dict(cls, d: dict[str, torch.Tensor]) -> "Gaussians":
        return cls(**{name: d[name] for name in PARAM_NAMES}, level=d.get("level"))

    def activated(self) -> ActivatedGaussians:
        """The values a rasterizer consumes (quaternions as they are); differentiable with respect to these raw
        tensors."""
        return ActivatedGaussians(self.means, self.quats, self.activated_scales, self.activated_opacities,
                                  self.sh0, self.shN)

    @classmethod
    def from_activated(cls, g: ActivatedGaussians) -> "Gaussians":
        """The raw form of activated values (log-scales, logits), e.g. to save a plug-in model as INRIA .ply.
        Opacities are clipped to [1e-6, 1 - 1e-6] and scales to >= 1e-30 so the logs stay finite."""
        opacities = g.opacities.clamp(1.0 - _MAX_OPACITY, _MAX_OPACITY)
        return cls(g.means, torch.log(g.scales.clamp(min=1e-30)), g.quats, torch.logit(opacities), g.sh0, g.shN)

    def detach(self) -> "Gaussians":
        return Gaussians.from_dict({k: v.detach() for k, v in self.as_dict().items()})

    def to(self, device: torch.device | str) -> "Gaussians":
        return Gaussians.from_dict({k: v.to(device) for k, v in self.as_dict().items()})

    def subset(self, mask_or_index: torch.Tensor) -> "Gaussians":
        return Gaussians.from_dict({k: v[mask_or_index] for k, v in self.as_dict().items()})

    def with_sh_degree(self, degree: int) -> "Gaussians":
        """Drop or zero-pad SH bands to `degree`."""
        rest = num_sh_bases(degree) - 1
        shN = self.shN[:, :rest]
        if shN.shape[1] < rest:
            pad = shN.new_zeros(len(self), rest - shN.shape[1], 3)
            shN = torch.cat([shN, pad], dim=1)
        return Gaussians(self.means, self.scales, self.quats, self.opacities, self.sh0, shN, self.level)

    def transformed(self, t: Similarity) -> "Gaussians":
        """The same scene in the frame x' = scale * R (x - center): centres and sizes follow, orientations
        turn with R, and the view-dependent colour (SH bands 1-3) is rotated so each splat looks the same
        from the correspondingly moved camera."""
        R = np.asarray(t.rotation, np.float64)
        as_tensor = functools.partial(torch.as_tensor, dtype=self.means.dtype, device=self.means.device)
        means = t.scale * (self.means - as_tensor(np.asarray(t.center, np.float64))) @ as_tensor(R).T
        quats, shN = self.quats, self.shN
        if not np.array_equal(R, np.eye(3)):
            turn = Rotation.from_matrix(R)
            xyzw = (turn * Rotation.from_quat(self.quats.detach().cpu().double().numpy()[:, [1, 2, 3, 0]])).as_quat()
            quats = as_tensor(xyzw[:, [3, 0, 1, 2]])
            if self.sh_degree > 0:
                shN = torch.einsum("kj,njc->nkc", as_tensor(sh_rotation(R, self.sh_degree).numpy()), self.shN)
        return Gaussians(means, self.scales + float(np.log(t.scale)), quats, self.opacities, self.sh0, shN,
                         self.level)

    def is_finite(self) -> bool:
        return all(bool(torch.isfinite(v).all()) for v in self.as_dict().values())


def knn_mean_distance(points: np.ndarray, k: int = 3) -> np.ndarray:
    """Mean distance of each point to its `k` nearest other points (the 3DGS initial scale)."""
    n = len(points)
    if n < 2:
        return np.full(n, 0.01, np.float32)
    k = min(k, n - 1)
    dist, _ = cKDTree(points).query(points, k=k + 1)
    return dist[:, 1:].mean(axis=1).astype(np.float32)


def init_from_points(
    points: np.ndarray,
    colors: np.ndarray,
    *,
    sh_degree: int = 3,
    init_opacity: float = 0.1,
    init_scale: float = 1.0,
    seed: int = 0,
) -> Gaussians:
    """Gaussians at `points` (N,3) with `colors` (N,3) in [0,1]: isotropic, sized by their 3-NN distance."""
    points = np.asarray(points, np.float32)
    n = len(points)
    dist = np.clip(knn_mean_distance(points), 1e-7, None)
    generator = torch.Generator().manual_seed(seed)
    means = torch.from_numpy(points)
    scales = torch.log(torch.from_numpy(dist) * init_scale)[:, None].repeat(1, 3)
    quats = torch.rand(n, 4, generator=generator)
    opacities = torch.logit(torch.full((n,), init_opacity))
    sh0 = rgb_to_sh(torch.from_numpy(np.asarray(colors, np.float32)))[:, None, :]
    shN = torch.zeros(n, num_sh_bases(sh_degree) - 1, 3)
    return Gaussians(means, scales, quats, opacities, sh0, shN)
