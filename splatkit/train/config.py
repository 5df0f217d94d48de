"""`splatkit train` settings: one flat dataclass whose field docstrings are the CLI help."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import tyro

from splatkit.train.strategies import ADCStrategy


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


@dataclass
class TrainConfig:
    """Optimise Gaussians to match a scene's photos."""

    scene: tyro.conf.Positional[str]
    """Scene folder (COLMAP model or transforms.json), or `demo` for the built-in demo scene."""
    out: Optional[Path] = None
    """Run folder (default: runs/<scene name>)."""
    steps: int = 30_000
    """Number of optimisation steps."""
    data_factor: int = 1
    """Downsample images by this factor (cached on disk beside the run)."""
    test_every: int = 8
    """Hold out every N-th image for evaluation (0: no test split)."""
    backend: str = "auto"
    """Render backend: auto, torch, or any other registered one."""
    resume: bool = False
    """Continue the run in --out from its last checkpoint."""
    seed: int = 0
    sh_degree: int = 3
    """Final spherical-harmonics degree."""
    sh_degree_interval: int = 1000
    """Switch on one more SH band every this many steps."""
    init_opacity: float = 0.1
    init_scale: float = 1.0
    """Multiplier on the 3-nearest-neighbour initial scale."""
    ssim_lambda: float = 0.2
    """Loss = (1 - lambda) L1 + lambda (1 - SSIM)."""
    random_background: bool = False
    """Composite each render over a random colour (discourages transparent 'holes')."""
    lr: LearningRates = field(default_factory=LearningRates)
    strategy: ADCStrategy = field(default_factory=ADCStrategy)
    checkpoint_every: int = 1000
    """Write a checkpoint every N steps (and at the end)."""
    eval_steps: tuple[int, ...] = (7_000, 30_000)
    """Evaluate on the held-out views at these steps (and at the end)."""
    log_every: int = 100
    max_cached_images: int = 256
    """Decoded images kept in memory; the rest are re-read from disk (or the cache) on demand."""
    viewer: bool = False
    """Serve a live browser view of the model while it trains (at http://localhost:<viewer-port>)."""
    viewer_port: int = 8080

    def run_dir(self) -> Path:
        return self.out if self.out is not None else Path("runs") / Path(self.scene).name
