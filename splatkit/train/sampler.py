"""Which training views each step renders."""

from __future__ import annotations

import torch


class ViewSampler:
    """The training views in epochs, as INRIA's loop and gsplat's data loader visit them: a permutation of the
    training set drawn from the run's generator, consumed `size` views per step. No view comes twice in one
    step: a step that would straddle two epochs leaves the rest of the old one and starts the next. The
    remaining order is checkpointed, so a resumed run (even with another batch size or process count) goes on
    with the same views."""

    def __init__(self, train_ids: list[int]) -> None:
        self.train_ids = list(train_ids)
        self.order: list[int] = []  # camera indices left in this epoch

    def next(self, size: int, generator: torch.Generator) -> list[int]:
        """Camera indices of the next step's `size` views (1 <= size <= number of training views)."""
        if len(self.order) < size:
            self.order = [self.train_ids[i] for i in torch.randperm(len(self.train_ids), generator=generator)]
        batch, self.order = self.order[:size], self.order[size:]
        return batch

    def upcoming(self, size: int) -> list[int]:
        """The views the following `next(size)` returns when they are already known (the epoch goes on), else
        [] (a new epoch is drawn then): what a loader can read ahead."""
        return self.order[:size] if len(self.order) >= size else []

    def state_dict(self) -> dict[str, list[int]]:
        return {"order": list(self.order)}

    def load_state_dict(self, state: dict[str, list[int]]) -> None:
        self.order = [int(i) for i in state["order"]]
