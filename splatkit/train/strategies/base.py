"""The strategy plug-in: how Gaussians are added, removed, relocated and reset while training."""

from __future__ import annotations

from typing import ClassVar

from splatkit.errors import SplatkitError
from splatkit.train.plugin import Plugin, Registry


class Strategy(Plugin):
    """A densification / point-management strategy: a config dataclass whose hooks edit the `GaussianModel`.

    `init_opacity` and `init_scale` are the initialisation its recipe assumes (the trainer's `--init-opacity` and
    `--init-scale` override them)."""

    init_opacity: ClassVar[float] = 0.1
    init_scale: ClassVar[float] = 1.0
    # Strategies that grow and prune on a cadence set these fields (ADC and MCMC do).
    refine_start: int
    refine_stop: int
    refine_every: int

    def refines_at(self, step: int) -> bool:
        """Whether the Gaussians are grown, pruned or relocated after `step` (strictly between start and stop)."""
        return self.refine_start < step < self.refine_stop and step % self.refine_every == 0

    def require(self, **valid: bool) -> None:
        """Raise one line naming the first setting whose check is False (`refine_every=self.refine_every >= 1`)."""
        for name, ok in valid.items():
            if not ok:
                raise SplatkitError(f"--strategy.{name.replace('_', '-')} {getattr(self, name)}: out of range")


STRATEGIES: Registry[Strategy] = Registry("strategy")
