"""Strategies: how Gaussians are grown, pruned, relocated and reset, chosen by name (`STRATEGIES`).

The contract between the trainer and its plug-ins (strategies and parameterisations alike):

- Configuration: a plug-in is a dataclass registered by name; its fields are CLI flags
  (`splatkit train scene strategy:mcmc --strategy.cap-max 300000`) and config.json entries, read back by one
  generic decoder (`splatkit.config_json`).
- State: per-Gaussian tensors live in the `GaussianModel` as parameters (with Adam) or buffers; every edit
  (clone, split, prune, relocate) rewrites all of them and their Adam moments together, and leaves shared
  tensors (decoders) and frozen parameters alone. Anything else is a dict returned by `setup()`, checkpointed and
  restored on resume (generators included), and handed to every hook.
- What a plug-in sees: `setup()` gets the scene (cameras, points), the model and the run folder; every hook gets
  a `StepInfo` with the step, camera, target image, render (with gradients after backward) and per-pixel error.
- What a plug-in adds: loss terms (`losses()`), parameters with their own learning rates (`model.add_param`),
  buffers (`model.add_buffer`), and edits through `ops` and the parameterisation's `raw()`.
- Order: the trainer calls each hook on the parameterisation, then the strategy; it never asks which one runs.
"""

from splatkit.train.strategies.adc import ADCStrategy
from splatkit.train.strategies.base import STRATEGIES, Strategy
from splatkit.train.strategies.mcmc import MCMCStrategy
from splatkit.train.strategies.lpm import LPMStrategy  # after the strategies it may wrap

__all__ = ["ADCStrategy", "LPMStrategy", "MCMCStrategy", "STRATEGIES", "Strategy"]
