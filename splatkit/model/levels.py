"""Choosing Gaussians by level of detail (FLoD): a model with levels holds every level at once, with each
Gaussian's level in `Gaussians.level` (1 = coarsest); what is rendered, scored or shipped is one level of it."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from splatkit.data.cameras import Camera
from splatkit.errors import SplatkitError
from splatkit.model.gaussians import Gaussians


def level_counts(g: Gaussians) -> dict[int, int]:
    """{level: number of Gaussians} in increasing level; {} for a model without levels."""
    if g.level is None:
        return {}
    values, counts = g.level.unique(return_counts=True)
    return {int(v): int(c) for v, c in zip(values, counts)}


def level_mask(g: Gaussians, level: int | None = None) -> torch.Tensor | None:
    """(N,) bool: the Gaussians of level `level` (default: the finest `g` holds); None for a model without
    levels when `level` is None. Raises SplatkitError naming the levels there are for one the model lacks."""
    counts = level_counts(g)
    if not counts:
        if level is not None:
            raise SplatkitError(f"--level {level}: the model has no levels of detail (train with --lod)")
        return None
    chosen = max(counts) if level is None else level
    if chosen not in counts:
        raise SplatkitError(f"--level {level}: the model holds levels {', '.join(map(str, counts))}")
    return g.level == chosen


def single_level(g: Gaussians, level: int | None = None) -> Gaussians:
    """Level `level` of `g` (`level_mask`); a model without levels is returned unchanged when `level` is None."""
    mask = level_mask(g, level)
    return g if mask is None else g.subset(mask)


def level_floors(g: Gaussians) -> dict[int, float]:
    """{level: its smallest activated scale}, world units: FLoD's floor s_min(l) of each level, read from the
    model itself (every level has Gaussians flattened down to its floor), so files need no extra metadata."""
    sizes = g.activated_scales.min(dim=1).values
    return {level: float(sizes[g.level == level].min()) for level in level_counts(g)}


def band_edges(floors: dict[int, float], coarsest: int, finest: int, focal: float, screen_size: float = 1.0
               ) -> dict[int, tuple[float, float]]:
    """Camera-distance band [near, far) of each level in [coarsest, finest] (FLoD's selective rendering, eq. 6).
    A level serves from where its own floor shrinks to `screen_size` pixels, d = focal * s_min(l) / screen_size,
    out to where the next coarser level's floor does: nearer, its detail would show as blur; further, the
    coarser level looks the same with fewer Gaussians. The finest level also serves everything nearer, the
    coarsest everything further. `focal` in pixels, distances in the model's units."""
    def d(level: int) -> float:
        return focal * floors[level] / screen_size

    return {level: (0.0 if level == finest else d(level), float("inf") if level == coarsest else d(level - 1))
            for level in range(coarsest, finest + 1)}


def selective(g: Gaussians, center: torch.Tensor, focal: float, coarsest: int, finest: int,
              screen_size: float = 1.0) -> torch.Tensor:
    """(N,) bool: the Gaussians FLoD's selective rendering draws from a camera at `center` (3,): of each level
    in [coarsest, finest], those whose distance to the camera falls in its band (`band_edges`)."""
    counts = level_counts(g)
    missing = [level for level in range(coarsest, finest + 1) if level not in counts]
    if missing or coarsest > finest:
        raise SplatkitError(f"--levels {coarsest}:{finest}: the model holds levels {', '.join(map(str, counts))}")
    edges = band_edges(level_floors(g), coarsest, finest, focal, screen_size)
    distance = (g.means - center.to(g.means)).norm(dim=1)
    keep = torch.zeros(len(g), dtype=torch.bool, device=g.means.device)
    for level, (near, far) in edges.items():
        keep |= (g.level == level) & (distance >= near) & (distance < far)
    return keep


def _view(camera: Camera) -> tuple[torch.Tensor, float]:
    """The camera's centre (3,) and its smaller focal length in pixels (FLoD's f)."""
    return torch.as_tensor(camera.center, dtype=torch.float32), float(min(camera.K[0, 0], camera.K[1, 1]))


def within_budget(g: Gaussians, camera: Camera, budget: int, screen_size: float = 1.0) -> torch.Tensor:
    """(N,) bool: the finest selective set from `camera` with at most `budget` splats: the range [a, b] with
    the finest b, then the finest a (coarse levels only far away), whose set fits. Raises SplatkitError when
    not even the coarsest level fits."""
    center, focal = _view(camera)
    for finest in sorted(level_counts(g), reverse=True):
        for coarsest in range(finest, min(level_counts(g)) - 1, -1):
            chosen = selective(g, center, focal, coarsest, finest, screen_size)
            if int(chosen.sum()) <= budget:
                return chosen
    smallest = min(level_counts(g).values())
    raise SplatkitError(f"--budget {budget}: no level fits (the smallest, level {min(level_counts(g))}, holds "
                        f"{smallest:,} splats)")


@dataclass(frozen=True)
class LevelChoice:
    """Which Gaussians of a model with levels of detail to draw from a camera: one `level` (default: the
    finest), a selective range `levels` = (coarsest, finest) banded by distance from the camera, or the finest
    selective set within `budget` splats. `screen_size` (pixels) sets the bands. A model without levels is
    drawn whole (asking it for levels is an error)."""

    level: int | None = None
    levels: tuple[int, int] | None = None
    budget: int | None = None
    screen_size: float = 1.0

    def __post_init__(self) -> None:
        if sum(option is not None for option in (self.level, self.levels, self.budget)) > 1:
            raise SplatkitError("give one of --level, --levels and --budget")
        if self.budget is not None and self.budget < 1:
            raise SplatkitError(f"--budget {self.budget}: must be a positive number of splats")
        if self.level is not None and self.level < 1:
            raise SplatkitError(f"--level {self.level}: levels count from 1 (the coarsest)")
        if self.levels is not None and min(self.levels) < 1:
            raise SplatkitError(f"--levels {self.levels[0]}:{self.levels[1]}: levels count from 1 (the coarsest)")
        if self.levels is not None and not 1 <= self.levels[0] <= self.levels[1]:
            raise SplatkitError(f"--levels {self.levels[0]}:{self.levels[1]}: give COARSEST:FINEST with the coarser "
                                "(smaller) level first, e.g. 3:5")

    @property
    def label(self) -> str:
        """A name for what was chosen (a folder name for its outputs): level-2, levels-3-5, budget-200000."""
        if self.level is not None:
            return f"level-{self.level}"
        if self.levels is not None:
            return f"levels-{self.levels[0]}-{self.levels[1]}"
        return f"budget-{self.budget}" if self.budget is not None else "finest"

    @property
    def given(self) -> bool:
        """Whether any option was set (a plain LevelChoice only picks the finest level of a levelled model)."""
        return any(option is not None for option in (self.level, self.levels, self.budget))

    def mask(self, g: Gaussians, camera: Camera | None) -> torch.Tensor | None:
        """(N,) bool: what to draw of `g` from `camera` (needed for --levels and --budget); None: all of it."""
        if self.levels is None and self.budget is None:
            return level_mask(g, self.level)
        if not level_counts(g):
            raise SplatkitError("--levels/--budget: the model has no levels of detail (train with --lod)")
        if camera is None:
            raise SplatkitError("--levels/--budget choose by distance from a camera: give a run folder, whose "
                                "first held-out camera is the viewpoint")
        if self.budget is not None:
            return within_budget(g, camera, self.budget, self.screen_size)
        center, focal = _view(camera)
        return selective(g, center, focal, *self.levels, self.screen_size)

    def for_view(self, g: Gaussians, camera: Camera | None) -> Gaussians:
        """The Gaussians of `g` to draw from `camera`."""
        mask = self.mask(g, camera)
        return g if mask is None else g.subset(mask)
