"""The strategy plug-in: how Gaussians are added, removed, relocated and reset while training."""

from __future__ import annotations

from typing import ClassVar

from splatkit.errors import SplatkitError
from splatkit.train.plugin import Plugin, Registry, StepInfo


class Strategy(Plugin):
    """A densification / point-management strategy: a config dataclass whose hooks edit the `GaussianModel`.

    `init_opacity` and `init_scale` are the initialisation its recipe assumes (the trainer's `--init-opacity` and
    `--init-scale` override them)."""

    init_opacity: ClassVar[float] = 0.1
    init_scale: ClassVar[float] = 1.0
    # Strategies that grow and prune on a cadence set these fields (ADC and MCMC do), in steps of each phase
    # of the run (`StepInfo.phase_step`; one phase unless e.g. FLoD's levels).
    refine_start: int
    refine_stop: int
    refine_every: int
    refine_until: float
    refine_every_phase: tuple[float, ...]

    def refine_end(self, phase_steps: int) -> int:
        """The step of a phase of `phase_steps` steps (0: unknown) at which refinement stops: `refine_stop`, or
        `refine_until` of the phase when that comes first."""
        return min(self.refine_stop, round(self.refine_until * phase_steps)) if phase_steps else self.refine_stop

    def refining(self, info: StepInfo) -> bool:
        """Whether this step lies before the phase's refinement stops."""
        return info.phase_step < self.refine_end(info.phase_steps)

    def interval(self, info: StepInfo) -> int:
        """Steps between refinements in this step's phase: `refine_every_phase[phase]` of the phase where
        given but never fewer than `refine_every` (a mean gradient over fewer views is noise), else
        `refine_every`."""
        if info.phase < len(self.refine_every_phase) and info.phase_steps:
            return max(self.refine_every, round(self.refine_every_phase[info.phase] * info.phase_steps))
        return self.refine_every

    def refines_at(self, info: StepInfo) -> bool:
        """Whether the Gaussians are grown, pruned or relocated after this step (strictly between start and
        stop, on the cadence)."""
        step = info.phase_step
        return self.refine_start < step < self.refine_end(info.phase_steps) and step % self.interval(info) == 0

    def schedule_checks(self) -> dict[str, bool]:
        """The checks of the refinement cadence every strategy with one shares (for `require`)."""
        return {"refine_every": self.refine_every >= 1,
                "refine_every_phase": all(0 < f <= 1 for f in self.refine_every_phase)}

    def require(self, **valid: bool) -> None:
        """Raise one line naming the first setting whose check is False (`refine_every=self.refine_every >= 1`)."""
        for name, ok in valid.items():
            if not ok:
                raise SplatkitError(f"--strategy.{name.replace('_', '-')} {getattr(self, name)}: out of range")


STRATEGIES: Registry[Strategy] = Registry("strategy")
