"""Spherical-harmonics constants shared by the model, renderers and file formats."""

from __future__ import annotations

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
