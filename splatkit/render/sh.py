"""Real spherical harmonics up to degree 3, in the basis order and sign convention of 3DGS/gsplat."""

from __future__ import annotations

import torch

from splatkit.model.sh import sh_basis


def eval_sh(degree: int, dirs: torch.Tensor, coeffs: torch.Tensor) -> torch.Tensor:
    """Colour (..., 3) = sum_k basis_k(dir) * coeffs[..., k, :], using the first (degree+1)^2 coefficients.

    `dirs` need not be normalised. The +0.5 offset and clamp of 3DGS are applied by the caller.
    """
    bases = (degree + 1) ** 2
    dirs = torch.nn.functional.normalize(dirs, dim=-1)
    return (sh_basis(degree, dirs)[..., None] * coeffs[..., :bases, :]).sum(dim=-2)
