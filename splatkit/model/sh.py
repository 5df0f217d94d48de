"""Real spherical harmonics up to degree 3 (3DGS/gsplat basis order and signs), shared by the model, renderers
and file formats, and their rotation."""

from __future__ import annotations

import numpy as np
import torch

SH_C0 = 0.28209479177387814  # 1 / (2 sqrt(pi)): the degree-0 basis function


def num_sh_bases(degree: int) -> int:
    return (degree + 1) ** 2


def sh_degree_from_bases(bases: int) -> int:
    degree = round(bases**0.5) - 1
    if num_sh_bases(degree) != bases:
        raise ValueError(f"{bases} is not a square number of SH coefficients")
    return degree


def rgb_to_sh(rgb: torch.Tensor) -> torch.Tensor:
    """The DC coefficient whose rendered colour (0.5 + SH_C0 * dc) is `rgb`."""
    return (rgb - 0.5) / SH_C0


def sh_to_rgb(sh0: torch.Tensor) -> torch.Tensor:
    return sh0 * SH_C0 + 0.5


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


def sh_rotation(rotation: np.ndarray, degree: int) -> torch.Tensor:
    """(K-1, K-1) block-diagonal matrix M, K = (degree+1)^2, that turns the non-DC coefficients of a colour
    field c(d) into those of the rotated field c(R^T d): shN' = M @ shN. Each band l mixes only within itself
    (a (2l+1)-square block); the blocks are solved exactly from the basis at sample directions, so they follow
    `sh_basis`'s own order and signs."""
    R = torch.as_tensor(np.asarray(rotation, np.float64))
    samples = torch.randn(64, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    dirs = torch.nn.functional.normalize(samples, dim=-1)
    A, B = sh_basis(degree, dirs), sh_basis(degree, dirs @ R)  # rows: Y(d) and Y(R^T d)
    M = torch.zeros(num_sh_bases(degree) - 1, num_sh_bases(degree) - 1, dtype=torch.float64)
    for l in range(1, degree + 1):
        band = slice(l * l, (l + 1) * (l + 1))
        # Y_l(R^T d) = Y_l(d) @ X  =>  c'_l = X @ c_l for the coefficients c_l of that band.
        X = torch.linalg.lstsq(A[:, band], B[:, band]).solution
        M[band.start - 1:band.stop - 1, band.start - 1:band.stop - 1] = X
    return M
