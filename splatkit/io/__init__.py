"""Reading and writing Gaussian-splat files. Each format lives in its own module."""

from splatkit.io.ply import load_ply, save_ply

__all__ = ["load_ply", "save_ply"]
