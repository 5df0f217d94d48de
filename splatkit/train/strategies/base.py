"""The interface every densification / point-management strategy implements.

A strategy is a dataclass of hyper-parameters (it doubles as its CLI config). Its mutable state is a plain dict
the trainer owns, passes back at each call and saves in checkpoints. Every callback has the same signature;
anything extra a strategy needs (the render output, image size, scene extent, step count) arrives in `info`,
so the trainer never has to know which strategy it runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

Params = dict[str, torch.nn.Parameter]
Optimizers = dict[str, torch.optim.Optimizer]


@dataclass
class Strategy:
    def initialize_state(self) -> dict[str, Any]:
        return {}

    def pre_backward(self, params: Params, optimizers: Optimizers, state: dict, step: int, info: dict) -> None:
        """Before `loss.backward()`: e.g. ask for gradients of intermediate tensors."""

    def post_backward(self, params: Params, optimizers: Optimizers, state: dict, step: int, info: dict) -> None:
        """After `loss.backward()`, before the optimiser step: gradients are available."""

    def after_step(self, params: Params, optimizers: Optimizers, state: dict, step: int, info: dict) -> None:
        """After the optimiser step: the place to add, remove or reset Gaussians."""
