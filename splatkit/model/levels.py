"""Choosing Gaussians by level of detail (FLoD): a model with levels holds every level at once, with each
Gaussian's level in `Gaussians.level` (1 = coarsest); what is rendered, scored or shipped is one level of it."""

from __future__ import annotations

from splatkit.errors import SplatkitError
from splatkit.model.gaussians import Gaussians


def level_counts(g: Gaussians) -> dict[int, int]:
    """{level: number of Gaussians} in increasing level; {} for a model without levels."""
    if g.level is None:
        return {}
    values, counts = g.level.unique(return_counts=True)
    return {int(v): int(c) for v, c in zip(values, counts)}


def single_level(g: Gaussians, level: int | None = None) -> Gaussians:
    """Level `level` of `g` (default: the finest it holds); a model without levels is returned unchanged when
    `level` is None. Raises SplatkitError naming the levels there are for a level the model does not hold."""
    counts = level_counts(g)
    if not counts:
        if level is not None:
            raise SplatkitError(f"--level {level}: the model has no levels of detail (train with parameterisation:flod)")
        return g
    chosen = max(counts) if level is None else level
    if chosen not in counts:
        raise SplatkitError(f"--level {level}: the model holds levels {', '.join(map(str, counts))}")
    return g.subset(g.level == chosen)
