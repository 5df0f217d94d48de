"""Gaussian parameters and their activations; no optimiser, no I/O, device passed in."""

from splatkit.model.gaussians import Gaussians, init_from_points
from splatkit.model.sh import SH_C0, num_sh_bases, rgb_to_sh, sh_to_rgb

__all__ = ["Gaussians", "init_from_points", "SH_C0", "num_sh_bases", "rgb_to_sh", "sh_to_rgb"]
