"""Adam learning rates of the 3DGS parameter groups, shared by every parameterisation that derives its own."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class LearningRates:
    """Adam learning rates per parameter group (gsplat's simple_trainer defaults)."""

    means: float = 1.6e-4
    """Times the scene extent; decays exponentially to 1% over the run."""
    scales: float = 5e-3
    quats: float = 1e-3
    opacities: float = 5e-2
    sh0: float = 2.5e-3
    shN: float = 2.5e-3 / 20

    means_final: float = 0.01
    """Fraction of the means rate left at the last step."""
