"""`splatkit train` settings: one dataclass whose field docstrings are the CLI help; plug-ins nest as subcommands."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional

import tyro

from splatkit.data.pointmap_scene import PointMapInit
from splatkit.render.api import Device
from splatkit.train.appearance import AppearanceEmbeddings
from splatkit.train.exposure import ExposureCompensation
from splatkit.train.learning_rates import LearningRates
from splatkit.train.parameterisations import PARAMETERISATIONS, EaglesQuantized, FLoD, Plain3DGS
from splatkit.train.plugin import Plugin
from splatkit.train.strategies import STRATEGIES, ADCStrategy

# Types of the plug-in fields: one tyro subcommand per registered name (`strategy:mcmc`).
StrategyChoice = STRATEGIES.choice()
ParameterisationChoice = PARAMETERISATIONS.choice()

# Settings that make a run what it is, besides its scene: a resume may change anything else, never these.
RUN_DEFINING = ("data_factor", "test_every", "seed", "strategy.name", "parameterisation.name", "quantize", "lod",
                "pose_opt", "exposure", "exposure_full_matrix", "appearance")


@dataclass
class TrainConfig:
    """Optimise Gaussians to match a scene's photos."""

    scene: tyro.conf.Positional[str]
    """Scene folder (COLMAP model, transforms.json, or photos with feed-forward point maps: pointmaps.npz or
    VGGT's predictions.npz), or `demo` for the built-in demo scene."""
    out: Optional[Path] = None
    """Run folder (default: runs/<scene name>)."""
    steps: int = 30_000
    """Number of optimisation steps (on --resume: raise it to train a finished run further)."""
    data_factor: int = 1
    """Downsample images by this factor (cached on disk beside the run)."""
    test_every: int = 8
    """Hold out every N-th image for evaluation (0: no test split)."""
    init: PointMapInit = field(default_factory=PointMapInit)
    """How a point-map scene's initial points are chosen from the predicted ones (other scenes ignore it)."""
    device: Device = "auto"
    """Where to train: auto (CUDA when torch sees a GPU, else the CPU), cpu or cuda."""
    backend: str = "auto"
    """Render backend: auto (gsplat or our CUDA build on a GPU, our native build on the CPU), native, gsplat,
    torch (the slow reference)."""
    resume: bool = False
    """Continue the run in --out from its last checkpoint; flags given with it override the saved settings
    (except scene, data factor, test split, seed and plug-in kinds)."""
    seed: int = 0
    sh_degree: int = 3
    """Final spherical-harmonics degree."""
    sh_degree_interval: int = 1000
    """Switch on one more SH band every this many steps."""
    init_opacity: Optional[float] = None
    """Initial opacity of every Gaussian (default: the strategy's: 0.1 for ADC, 0.5 for MCMC)."""
    init_scale: Optional[float] = None
    """Multiplier on the 3-nearest-neighbour initial scale (default: the strategy's: 1 for ADC, 0.1 for MCMC)."""
    ssim_lambda: float = 0.2
    """Loss = (1 - lambda) L1 + lambda (1 - SSIM)."""
    visible_adam: bool = False
    """Adam steps only the Gaussians some view of the step rendered; the others keep their values and moments
    (gsplat's SelectiveAdam, Taming 3DGS's sparse Adam). Cheaper steps where a view sees a small part of the
    scene; the native extension runs it."""
    fused_loss: bool = True
    """With the native backend, compute the loss and its gradient in one native kernel (the same values to
    float32 rounding); --no-fused-loss runs it as torch ops (the reference path, slower on small images)."""
    alpha_as_mask: bool = False
    """Read an image's alpha channel as a mask (only fully opaque pixels count in the loss and the metrics)
    rather than as transparency composited on the background. Mask files work without it (README: Masks)."""
    random_background: bool = False
    """Composite each render over a random colour (discourages transparent 'holes')."""
    quantize: bool = False
    """Train compact (EAGLES): quantized-latent parameterisation, coarse-to-fine, and EAGLES' ADC schedule
    (refine every 125 steps until 60% of the run, opacity reset every 2,500), each overridable by its own flag."""
    lod: bool = False
    """Train levels of detail (FLoD): 5 levels one after another, each with a floor under its Gaussians' sizes,
    and ADC restarting in each level, refining until half of it (each setting overridable by its own flag).
    Render one level, a selective range or a splat budget with --level, --levels, --budget."""
    coarse_to_fine: bool = False
    """Train on downsampled photos whose size rises from --coarse-to-fine-start of full size to full size on a
    cosine schedule (EAGLES; on with --quantize): early steps see coarse structure and cost a fraction of a
    full-size step."""
    coarse_to_fine_start: float = 0.3
    """Image size at step 0, as a fraction of full size."""
    coarse_to_fine_until: float = 0.7
    """Fraction of the run after which training is at full size."""
    pose_opt: bool = False
    """Refine every training camera's pose with the Gaussians (a learnable rigid correction each, the first
    camera pinned), for approximate poses (feed-forward models, few photos). Held-out views' poses are then
    fitted against the frozen model before they are scored, and the metrics say so."""
    pose_lr: float = 1e-3
    """Adam rate of the pose corrections (radians, training-frame units), decaying exponentially..."""
    pose_lr_final: float = 1e-5
    """...to this at the last step."""
    pose_eval_steps: int = 200
    """Adam steps fitting each held-out pose before scoring (with --pose-opt)."""
    exposure: bool = False
    """Learn a colour transform per training photo (a gain and an offset per channel), applied to the render
    before the loss (INRIA 3DGS's exposure compensation), for captures whose exposure or white balance changes
    from photo to photo (phones). The model keeps the photos' mean exposure: exports, the viewer and held-out
    scoring show it; `splatkit eval --fit-exposure` scores held-out views with a transform fitted to each one's
    left half."""
    exposure_lr: float = 0.01
    """Adam rate of the transforms' entries (gains and offsets on [0, 1] RGB), decaying exponentially... (0
    freezes them at the identity)"""
    exposure_lr_final: float = 0.001
    """...to this at the last step."""
    exposure_full_matrix: bool = False
    """Learn INRIA's full 3x4 affine transform (channels mixed) instead of a gain and an offset per channel. One
    photo's colours barely constrain the mixing terms: they trade against the gains (splatkit.train.exposure)."""
    appearance: bool = False
    """Learn an embedding per training photo that a small decoder turns into a colour offset of each Gaussian
    (gsplat's app_opt), for captures whose light or tone changes between photos in ways one colour transform per
    photo cannot follow; combines with --exposure. The model keeps the photos' mean appearance (offsets are zero
    at the mean embedding): exports, the viewer and held-out scoring show it."""
    appearance_lr: float = 1e-3
    """Adam rate of the embeddings and the decoder (0 freezes them: every offset stays zero)."""
    appearance_feature_lr: float = 2.5e-3
    """Adam rate of the Gaussians' appearance features."""
    lr: LearningRates = field(default_factory=LearningRates)
    parameterisation: ParameterisationChoice = field(default_factory=Plain3DGS)
    """How parameters become Gaussians."""
    strategy: StrategyChoice = field(default_factory=ADCStrategy)
    """How Gaussians are added, removed and relocated."""
    batch_size: int = 1
    """Views rendered per step in each process; the loss averages them (gsplat's convention). Under torchrun
    a step renders --batch-size views in each of its processes."""
    threads: int = 0
    """CPU threads of this process (0: torch's default alone; under torchrun, the node's cores shared evenly
    among its processes)."""
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


def run_plugins(cfg: TrainConfig) -> dict[str, Plugin]:
    """The run's plug-ins by role, in the order their hooks run: the parameterisation, the strategy, then the
    photo models the flags switch on (--appearance, --exposure). Checkpoints record their names; a resume must
    match."""
    photo: dict[str, Plugin] = {}
    if cfg.appearance:
        photo["appearance"] = AppearanceEmbeddings(cfg.appearance_lr, cfg.appearance_feature_lr)
    if cfg.exposure:
        photo["exposure"] = ExposureCompensation(cfg.exposure_lr, cfg.exposure_lr_final, cfg.exposure_full_matrix)
    return {"parameterisation": cfg.parameterisation, "strategy": cfg.strategy, **photo}


def quantize_preset(cfg: TrainConfig) -> TrainConfig:
    """`cfg` with the settings `--quantize` stands for (EAGLES' recipe, Girish et al. 2024): quantized latents,
    coarse-to-fine, and ADC refining every 125 steps until 60% of the run with an opacity reset every 2,500
    (the reference's 18,000 of 30,000 steps). The CLI lays the user's flags over these, so each stays
    overridable."""
    adc = ADCStrategy(refine_every=125, refine_until=0.6, reset_every=2_500)
    return replace(cfg, quantize=True, parameterisation=EaglesQuantized(), coarse_to_fine=True, strategy=adc)


def lod_preset(cfg: TrainConfig) -> TrainConfig:
    """`cfg` with the settings `--lod` stands for (FLoD, Seo et al. 2024): five levels with the reference's
    relative budgets (10:15:20:25:30) shared out of --steps, and ADC restarting in each level with the
    reference's schedule scaled to the level's length: refining every 20%, 6.7%, 2.5%, 2% and 0.67% of levels
    1-5 (the reference: every 2,000, 1,000, 500, 500 and 200 steps), from 1/60 of the finest level (its 500 of
    30,000 steps) until half of each level, never more often than ADC's 100 steps: refining every few steps
    (the fractions of a short level) multiplied the Gaussians into a fog (cup, 1,500 steps: 312k Gaussians,
    15 dB). Coarse levels, whose floors keep their gradients high, grow rarely. The CLI lays the user's flags
    over these."""
    flod = FLoD()
    adc = ADCStrategy(refine_start=round(flod.phases(cfg.steps)[-1] / 60), refine_until=0.5,
                      refine_every_phase=(0.2, 1 / 15, 0.025, 0.02, 1 / 150))
    return replace(cfg, lod=True, parameterisation=flod, strategy=adc)
