"""What the trainer and its plug-ins (parameterisations and strategies) exchange, and the registry they join.

A plug-in is a config dataclass (its fields are CLI flags and config.json entries) with a registered `name`.
Its mutable state lives elsewhere: per-Gaussian tensors in the `GaussianModel` (so every edit carries them) and
everything else in a plain dict the trainer owns, checkpoints and hands back at every hook. The trainer calls
the same hooks on every plug-in, in order, and never asks which one it runs:

    validate()                          before anything is loaded: refuse impossible settings
    setup(ctx) -> state                 once per process: declare buffers, read caches (fresh runs and resumes)
    declare(model, num_cameras)         the parameters setup() adds beside the Gaussians' (e.g. exposure's),
                                        so a checkpoint loads without the scene (eval, render, export)
    seen(model, state, i, gaussians)    the Gaussians as training camera i saw them (e.g. appearance's
                                        colour offsets), before rendering
    photographed(model, state, i, rgb)  the render as training camera i's photo saw it (e.g. exposure's
                                        affine colour), before the loss
    losses(model, state, info)          extra loss terms, added to the photometric loss
    pre_backward(model, state, info)    e.g. retain gradients of intermediate tensors
    post_backward(model, state, info)   gradients are available, parameters not yet stepped; per-view
                                        statistics go into `model.accumulate` (summed over all processes)
    after_step(model, state, info)      after the optimiser step: grow, prune, relocate, reset
    log(model, state) -> {name: value}  figures for metrics.jsonl, since the last log line
    boxes(state) -> [(lo, hi)]          3D boxes the live viewer may draw (e.g. LPM's error zones)

State entries whose key starts with "_" are derived (rebuilt by `setup()` from caches, e.g. LPM's matches):
they are not checkpointed, and a resume keeps what `setup()` made of them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Callable, ClassVar, Generic, TypeVar, Union

import numpy as np
import torch
import tyro

from splatkit.data.cameras import Camera
from splatkit.data.images import ImageStore
from splatkit.data.scene import Scene
from splatkit.errors import SplatkitError
from splatkit.model.gaussians import ActivatedGaussians
from splatkit.render import RenderOutput
from splatkit.train.learning_rates import LearningRates

if TYPE_CHECKING:
    from splatkit.train.gaussian_model import GaussianModel


@dataclass
class SetupContext:
    """What a plug-in may read when a run starts or resumes."""

    scene: Scene  # cameras, points and held-out split, in the training frame
    images: ImageStore  # the photos as training sees them (index by camera)
    model: "GaussianModel"
    run_dir: Path  # where a plug-in may cache what it computes once (atomic writes)
    steps: int  # total optimisation steps of the run
    scene_extent: float  # radius of the camera rig in training units; scales learning rates and thresholds
    seed: int
    resumed: bool  # True when the state dict will be replaced by the checkpoint's after setup
    lr: LearningRates = field(default_factory=LearningRates)  # the run's 3DGS rates (parameterisations scale them)


@dataclass
class View:
    """One view rendered in a step. Images are (H, W, 3) float32 in [0, 1] on the model's device."""

    camera: Camera
    camera_index: int  # index into scene.cameras
    slot: int  # position in the step's batch of views over all processes (`StepInfo.batch`)
    target: torch.Tensor  # the photo
    render: RenderOutput  # with autograd graph back to the parameters

    @property
    def width(self) -> int:
        return self.camera.width

    @property
    def height(self) -> int:
        return self.camera.height


def _alone(value: Any) -> list[Any]:
    return [value]


@dataclass
class StepInfo:
    """One training step as the plug-ins see it: the views this process rendered (`--batch-size` of them), out
    of a batch drawn for all processes of a distributed run (`batch`, one process: the same views)."""

    step: int  # the step being taken, 0-based
    steps: int  # total steps of the run
    views: list[View]
    batch: list[int]  # camera indices of the step's views over all processes, in slot order
    gaussians: ActivatedGaussians | None  # what the first view rendered, with autograd graph (loss terms)
    scene_extent: float
    # Per-Gaussian tensors of `gaussians` and the renders have the rows of the rendered set: in after_step, a
    # plug-in called after another that edited the set (the parameterisation runs first) must not index them.
    focus: torch.Tensor | None = None  # (N,) >= 1: how much more a Gaussian deserves refinement, set by a
    # strategy wrapping another (LPM's error zones); ADC divides its growth threshold by it, MCMC weighs sampling
    phase: int = 0  # which phase of the run (the parameterisation's `phases`, e.g. FLoD's levels; one by default)
    phase_start: int = 0  # the step the phase began at
    phase_steps: int = 0  # the phase's length in steps (0: the whole run)
    gather: Callable[[Any], list[Any]] = _alone
    """Every process's value of a picklable object, in rank order (views' slots ascend with the rank): how a
    plug-in that decides from its own views' renders (LPM's zones) makes every process take the same edit."""

    @property
    def phase_step(self) -> int:
        """The step counted from the phase's start: what densification schedules follow, so they start again
        in every phase (FLoD trains each level with its own schedule)."""
        return self.step - self.phase_start


class Plugin:
    """Hooks shared by parameterisations, strategies and the photo models (exposure, appearance); every default
    does nothing."""

    name: ClassVar[str]

    def validate(self) -> None:
        """Raise SplatkitError (one line naming the flag) for settings no run can use; called before loading."""

    def render_needs(self) -> frozenset[str]:
        """Optional render outputs the hooks read ("weight_sums", "absgrad"): `auto` picks a backend that
        fills them, and a named backend that does not is refused before training starts."""
        return frozenset()

    def setup(self, ctx: SetupContext) -> dict[str, Any]:
        """Declare per-Gaussian buffers on `ctx.model` and return the initial state dict (checkpointed)."""
        return {}

    def declare(self, model: "GaussianModel", num_cameras: int) -> None:
        """Add the parameters `setup` declares that are not the Gaussians' (per camera or shared) to `model`, at
        their initial values, for `num_cameras` cameras: a checkpoint then loads into it."""

    def seen(self, model: "GaussianModel", state: dict, camera_index: int, gaussians: ActivatedGaussians
             ) -> ActivatedGaussians:
        """The Gaussians (with autograd graph) as training camera `camera_index` saw them, e.g. with that
        photo's appearance; what is rendered for it. The default returns them unchanged."""
        return gaussians

    def photographed(self, model: "GaussianModel", state: dict, camera_index: int, rgb: torch.Tensor
                     ) -> torch.Tensor:
        """The render `rgb` ((H, W, 3) float32, linear [0, 1], with autograd graph) as training camera
        `camera_index`'s photo saw it, e.g. under that photo's exposure; what the loss compares with the photo.
        The default returns it unchanged."""
        return rgb

    def losses(self, model: "GaussianModel", state: dict, info: StepInfo) -> dict[str, torch.Tensor]:
        """Named scalar loss terms added to the photometric loss (e.g. MCMC's opacity and scale regularisers)."""
        return {}

    def pre_backward(self, model: "GaussianModel", state: dict, info: StepInfo) -> None:
        """Before `loss.backward()`."""

    def post_backward(self, model: "GaussianModel", state: dict, info: StepInfo) -> None:
        """After `loss.backward()`, before the optimiser step: gradients are available."""

    def after_step(self, model: "GaussianModel", state: dict, info: StepInfo) -> None:
        """After the optimiser step: the place to add, remove, relocate or reset Gaussians."""

    def log(self, model: "GaussianModel", state: dict) -> dict[str, float]:
        """Figures to add to the next metrics.jsonl line (counted since the previous one)."""
        return {}

    def boxes(self, state: dict) -> list[tuple[np.ndarray, np.ndarray]]:
        """Axis-aligned 3D boxes (lo, hi) in the training frame for the live viewer to draw (LPM: error zones)."""
        return []


P = TypeVar("P", bound=Plugin)


class Registry(Generic[P]):
    """Named plug-ins of one kind. `choice()` is the type of a config field that selects one: on the command line
    a tyro subcommand per name (`strategy:mcmc --strategy.cap-max 300000`), in config.json `{"name": ...}`."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._classes: dict[str, type[P]] = {}

    def register(self, name: str):
        def add(cls: type[P]) -> type[P]:
            if not dataclasses.is_dataclass(cls):
                raise TypeError(f"{self.kind} {name!r}: plug-ins are config dataclasses")
            cls.name = name
            self._classes[name] = cls
            return cls

        return add

    def names(self) -> list[str]:
        return list(self._classes)

    def get(self, name: str) -> type[P]:
        if name not in self._classes:
            raise SplatkitError(f"unknown {self.kind} {name!r}; choose from {', '.join(self._classes)}")
        return self._classes[name]

    def choice(self) -> Any:
        """Union of the registered configs, each annotated as a tyro subcommand named after it."""
        options = tuple(Annotated[cls, tyro.conf.subcommand(name, description=_summary(cls))]
                        for name, cls in self._classes.items())
        return Union[options] if len(options) > 1 else options[0]


def _summary(cls: type) -> str:
    return " ".join((cls.__doc__ or "").strip().split("\n\n")[0].split())
