"""Getting a trained model ready to ship, and describing any splat file: the shared core of `splatkit export`,
`convert` and `info`. Shipping means dropping what a phone does not need (faint splats, high SH bands) before
the format's own quantisation."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch

from splatkit.errors import file_error
from splatkit.io._common import with_sh_degree
from splatkit.io.compact import load_compact
from splatkit.io.formats import detect_format, read_splats, stored_bytes, write_splats
from splatkit.model.gaussians import Gaussians
from splatkit.model.levels import level_counts, single_level
from splatkit.model.quantized import QuantizedGaussians

M = TypeVar("M", Gaussians, QuantizedGaussians)


def slimmed(g: M, path: str | Path, *, sh_degree: int | None = None, min_opacity: float = 0.0) -> M:
    """`g` (Gaussians, or a QuantizedGaussians for the compact file) without splats whose opacity is below
    `min_opacity` and without SH bands above `sh_degree`."""
    if not 0.0 <= min_opacity < 1.0:
        raise file_error(path, f"the opacity threshold must be in [0, 1), got {min_opacity}")
    if min_opacity > 0.0:
        g = g.subset(g.activated_opacities >= min_opacity)
        if len(g) == 0:
            raise file_error(path, f"no splat is at least {min_opacity} opaque; lower --prune-opacity")
    return with_sh_degree(g, sh_degree, path)


LEVEL_FORMATS = ("ply", "compact", "sog-lod")  # formats that keep every level of a FLoD model


def write_model(g: Gaussians, path: str | Path, fmt: str, *, spz_version: int = 3) -> None:
    """Write `g` in `fmt`, passing the SPZ version only to the SPZ writer; a format that cannot hold levels of
    detail gets the finest level of a model that has them."""
    g = g if fmt in LEVEL_FORMATS else single_level(g)
    write_splats(g, path, fmt, **({"version": spz_version} if fmt == "spz" else {}))


def stored_count(g: Gaussians, fmt: str) -> int:
    """How many of `g`'s splats `write_model` stores in `fmt` (all, or the finest level's)."""
    return len(g) if fmt in LEVEL_FORMATS else len(single_level(g))


@dataclass(frozen=True)
class SplatFileInfo:
    """What `splatkit info` reports about a splat file."""

    path: Path
    format: str
    file_bytes: int
    count: int
    sh_degree: int
    bounds: tuple[np.ndarray, np.ndarray]  # per-axis min, max
    bulk: tuple[np.ndarray, np.ndarray]  # per-axis 1st and 99th percentile: the extent without floaters
    median_opacity: float
    median_scale: float  # median of each splat's largest axis
    levels: dict[int, int]  # splats per level of detail (FLoD); {} for a model without levels
    latents: dict[str, tuple[int, int, int]]  # compact file: attribute -> (latent size, decoded width, distinct
    # latent values); {} for other formats

    @property
    def bytes_per_splat(self) -> float:
        return self.file_bytes / max(self.count, 1)


def describe(path: str | Path) -> SplatFileInfo:
    path = Path(path)
    fmt = detect_format(path)
    g = read_splats(path)
    means = g.means.double().numpy()
    with torch.no_grad():
        opacity = float(g.activated_opacities.median())
        scale = float(g.activated_scales.max(dim=1).values.median())
    latents = {}
    if fmt == "compact":
        latents = {name: (*code.matrix.shape, len(code.latents.unique()))
                   for name, code in load_compact(path).attributes.items()}
    return SplatFileInfo(path, fmt, stored_bytes(path, fmt), len(g), g.sh_degree,
                         (means.min(0), means.max(0)), tuple(np.percentile(means, [1, 99], axis=0)), opacity, scale,
                         level_counts(g), latents)
