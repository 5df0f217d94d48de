"""Real spherical harmonics up to degree 3, in the basis order and sign convention of 3DGS/gsplat."""

from __future__ import annotations

import torch

from splatkit.model.sh import SH_C0

_C1 = 0.4886025119029199
_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)
_C3 = (-0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154, -0.4570457994644658,
       1.445305721320277, -0.5900435899266435)


def sh_basis(degree: int, dirs: torch.Tensor) -> torch.Tensor:
    """Basis functions (..., (degree+1)^2) at unit directions `dirs` (..., 3)."""
    x, y, z = dirs.unbind(-1)
    out = [torch.full_like(x, SH_C0)]
    if degree >= 1:
        out += [-_C1 * y, _C1 * z, -_C1 * x]
    if degree >= 2:
        xx, yy, zz = x * x, y * y, z * z
        out += [_C2[0] * x * y, _C2[1] * y * z, _C2[2] * (2 * zz - xx - yy), _C2[3] * x * z, _C2[4] * (xx - yy)]
    if degree >= 3:
        out += [
            _C3[0] * y * (3 * xx - yy),
            _C3[1] * x * y * z,
            _C3[2] * y * (4 * zz - xx - yy),
            _C3[3] * z * (2 * zz - 3 * xx - 3 * yy),
            _C3[4] * x * (4 * zz - xx - yy),
            _C3[5] * z * (xx - yy),
            _C3[6] * x * (xx - 3 * yy),
        ]
    return torch.stack(out, dim=-1)


def eval_sh(degree: int, dirs: torch.Tensor, coeffs: torch.Tensor) -> torch.Tensor:
    """Colour (..., 3) = sum_k basis_k(dir) * coeffs[..., k, :], using the first (degree+1)^2 coefficients.

    `dirs` need not be normalised. The +0.5 offset and clamp of 3DGS are applied by the caller.
    """
    bases = (degree + 1) ** 2
    dirs = torch.nn.functional.normalize(dirs, dim=-1)
    return (sh_basis(degree, dirs)[..., None] * coeffs[..., :bases, :]).sum(dim=-2)
