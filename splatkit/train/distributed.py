"""Data-parallel training on torch.distributed: what a training process shares with the others of its run.

`torchrun --nproc-per-node N -m splatkit train ...` starts N processes (across nodes with torchrun's
rendezvous). Each holds a replica of the model; each step draws one batch of `N x --batch-size` views (the same
draw everywhere, from the run's seeded generator), and process r renders slots `r*B .. r*B+B-1` of it. The
parameters' gradients are averaged and the plug-ins' per-view statistics summed over the processes (gloo on the
CPU, NCCL on CUDA), so every process takes the same Adam step and the same grow/prune/relocate edit: the run is
one process training `N x B` views per step, up to the order floats are summed in. Process 0 writes the run
folder (config, checkpoints, logs, metrics, exports); a model digest compared across processes whenever the
Gaussians' count changes (and every log step) turns a divergence into one line instead of a silently forked run.

Without torchrun's environment a run is `OneProcess`, whose operations do nothing: the loop calls the same
methods either way.
"""

from __future__ import annotations

import datetime
import os
import time
from typing import Any

import torch
import torch.distributed as dist

from splatkit.errors import SplatkitError


class OneProcess:
    """A run in a single process: every view of a step is this process's, and sharing is a no-op."""

    rank = 0
    world_size = 1
    local_world_size = 1

    @property
    def is_main(self) -> bool:
        """Whether this process writes the run folder and prints (process 0)."""
        return self.rank == 0

    def my_slots(self, views_per_process: int) -> range:
        """This process's slots of a step's batch of `views_per_process x world_size` views."""
        return range(self.rank * views_per_process, (self.rank + 1) * views_per_process)

    def average_gradients(self, params: list[torch.Tensor]) -> None:
        """Replace each parameter's gradient by its mean over the processes."""

    def sum_(self, tensor: torch.Tensor) -> None:
        """Sum `tensor` in place over the processes."""

    def gather(self, value: Any) -> list[Any]:
        """Every process's `value` (picklable), in rank order."""
        return [value]

    def any(self, flag: bool) -> bool:
        """Whether `flag` is true in any process (a stop request seen by one stops all at the same step)."""
        return flag

    def check_identical(self, params: dict[str, torch.Tensor], step: int) -> None:
        """Raise one line if the processes' models differ (count or a float64 sum of each parameter)."""

    def traffic(self) -> dict[str, float]:
        """Seconds spent in, and bytes sent to, tensor collectives since the last call (for metrics.jsonl)."""
        return {}

    def close(self) -> None:
        """Leave the process group."""


class DataParallel(OneProcess):
    """One of `world_size` processes started by torchrun, joined in torch.distributed's default group."""

    def __init__(self, device: torch.device) -> None:
        backend = "nccl" if device.type == "cuda" else "gloo"
        # The default 30-minute timeout covers process 0's evaluations between steps; errors are not hidden.
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30))
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self.local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", self.world_size))
        self.device = device
        self.seconds, self.bytes = 0.0, 0

    def _all_reduce(self, tensor: torch.Tensor, op: dist.ReduceOp.RedOpType = dist.ReduceOp.SUM) -> None:
        started = time.perf_counter()
        dist.all_reduce(tensor, op=op)
        self.seconds += time.perf_counter() - started
        self.bytes += tensor.numel() * tensor.element_size()

    def average_gradients(self, params: list[torch.Tensor]) -> None:
        # One all-reduce over all gradients in a single flat buffer (torch DDP buckets likewise): a few large
        # messages cost far less than one per tensor.
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        self._all_reduce(flat)
        flat /= self.world_size
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()

    def sum_(self, tensor: torch.Tensor) -> None:
        self._all_reduce(tensor)

    def gather(self, value: Any) -> list[Any]:
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, value)
        return out

    def any(self, flag: bool) -> bool:
        t = torch.tensor([int(flag)], device=self.device)
        self._all_reduce(t, dist.ReduceOp.MAX)
        return bool(t.item())

    def check_identical(self, params: dict[str, torch.Tensor], step: int) -> None:
        digest = torch.stack([torch.tensor(float(next(iter(params.values())).shape[0]), dtype=torch.float64)] +
                             [p.detach().double().sum().cpu() for p in params.values()]).to(self.device)
        digests = [torch.empty_like(digest) for _ in range(self.world_size)]
        dist.all_gather(digests, digest)
        differ = [rank for rank, d in enumerate(digests) if not torch.equal(d, digests[0])]
        if differ:
            counts = ", ".join(f"process {r}: {int(digests[r][0]):,} Gaussians" for r in (0, *differ))
            raise SplatkitError(f"step {step}: the processes' models diverged ({counts}; processes "
                                f"{', '.join(map(str, differ))} differ from 0 in their parameters); every process "
                                "must run the same splatkit, torch and backend")

    def traffic(self) -> dict[str, float]:
        figures = {"allreduce_s": self.seconds, "allreduce_bytes": float(self.bytes)}
        self.seconds, self.bytes = 0.0, 0
        return figures

    def close(self) -> None:
        dist.destroy_process_group()


def launched_by_torchrun() -> bool:
    """Whether torchrun (or another launcher setting torch.distributed's environment) started more than one
    process for this run."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def join(device: torch.device, threads: int) -> OneProcess:
    """This process's place in its run: `DataParallel` under torchrun with more than one process, else
    `OneProcess`. Sets the CPU threads: `threads`, or when 0 under torchrun the cores shared evenly among the
    node's processes (torchrun's default of one thread each leaves cores idle; more would oversubscribe)."""
    if not launched_by_torchrun():
        if threads:
            torch.set_num_threads(threads)
        return OneProcess()
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    processes = DataParallel(device)
    torch.set_num_threads(threads or max(1, len(os.sched_getaffinity(0)) // processes.local_world_size))
    return processes
