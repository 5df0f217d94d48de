"""The trainable state of a run: named tensors, their Adam optimisers, and edits that keep them all in step.

Like INRIA's `GaussianModel`, one object owns the parameters and their optimiser state; unlike it, what the
tensors mean is left to a parameterisation, and which tensors exist is open to plug-ins:

- parameters are per-Gaussian (first dimension N, edited with every clone/split/prune/relocate) or shared
  (e.g. decoder weights, never edited); each has one fused Adam, or none when frozen (no gradient, no step);
- buffers are per-Gaussian tensors without gradients (strategy accumulators, a level index); each says how a
  new or relocated Gaussian's row starts: `zero` (accumulators) or `copy` of its source row (a level index).

Every edit (`keep`, `append`, `relocate`; `assign` for values in place) goes through one place that rewrites parameters, their Adam moments and
buffers together, so no plug-in can leave a tensor behind.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Literal

import torch

from splatkit.model.gaussians import ActivatedGaussians, Gaussians
from splatkit.render.native_build import load_extension

if TYPE_CHECKING:
    from splatkit.train.parameterisations.base import Parameterisation

NewRows = Literal["zero", "copy"]
ADAM_BETAS, ADAM_EPS = (0.9, 0.999), 1e-15


@dataclass
class _ParamSpec:
    per_gaussian: bool
    lr: float | None  # None: frozen
    lr_final: float | None  # exponential decay to this at the last step (None: constant)


class GaussianModel:
    """Parameters, optimisers and buffers of N Gaussians, turned into Gaussians by `parameterisation`."""

    def __init__(self, parameterisation: "Parameterisation", device: torch.device | str = "cpu", *,
                 native_adam: bool = False) -> None:
        """`native_adam`: every step runs in the native extension, all parameters in one call (the native backend
        trains so; torch's fused Adam, called once per parameter, cost more in Python than in arithmetic at small
        images). Row-masked steps (`step(visible)`) always run there."""
        self.parameterisation = parameterisation
        self.device = torch.device(device)
        self.native_adam = native_adam
        self.params: dict[str, torch.nn.Parameter] = {}
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.buffers: dict[str, torch.Tensor] = {}
        self._specs: dict[str, _ParamSpec] = {}
        self._new_rows: dict[str, NewRows] = {}
        self._pending: dict[str, torch.Tensor] = {}  # this step's statistics, not yet summed over processes

    # ------------------------------------------------------------------ declaring tensors

    def add_param(self, name: str, value: torch.Tensor, *, lr: float | None, per_gaussian: bool = True,
                  lr_final: float | None = None) -> None:
        """Declare a parameter. `lr` None freezes it (no gradient, no optimiser); `lr_final` makes the rate
        decay exponentially from `lr` at step 0 to `lr_final` at the last step (3DGS does this for means)."""
        param = torch.nn.Parameter(value.detach().to(self.device).contiguous(), requires_grad=lr is not None)
        self.params[name] = param
        self._specs[name] = _ParamSpec(per_gaussian, lr, lr_final)
        if lr is not None:
            # fused: one kernel per step instead of a dozen element-wise passes (~7x faster on the CPU). The
            # optimiser also holds the state the native step updates, in the same layout.
            self.optimizers[name] = torch.optim.Adam([param], lr=lr, betas=ADAM_BETAS, eps=ADAM_EPS, fused=True)

    def add_buffer(self, name: str, value: torch.Tensor, *, new_rows: NewRows) -> None:
        """Declare a per-Gaussian buffer (first dimension N) and how the rows of new Gaussians start."""
        self.buffers[name] = value.to(self.device)
        self._new_rows[name] = new_rows

    def accumulate(self, name: str, values: torch.Tensor) -> None:
        """Add a step's per-view statistic (shaped like buffer `name`) to that buffer: it is held apart until
        `fold_statistics`, which sums it over the processes of a distributed run first, so every process reads
        the same totals (ADC's screen gradients, EAGLES' influence)."""
        if name in self._pending:
            self._pending[name] += values
        else:
            self._pending[name] = values.to(self.buffers[name].dtype, copy=True)

    def fold_statistics(self, sum_over_processes: Callable[[torch.Tensor], None]) -> None:
        """Add the step's accumulated statistics into their buffers, each summed in place over the processes
        by `sum_over_processes` (a no-op in one process)."""
        for name, pending in self._pending.items():
            sum_over_processes(pending)
            self.buffers[name] += pending
        self._pending.clear()

    def per_gaussian(self) -> list[str]:
        return [n for n, s in self._specs.items() if s.per_gaussian] + list(self.buffers)

    def __len__(self) -> int:
        name = next(n for n, s in self._specs.items() if s.per_gaussian)
        return self.params[name].shape[0]

    # ------------------------------------------------------------------ what the tensors mean

    def activated(self) -> ActivatedGaussians:
        """The Gaussians to rasterize, differentiable with respect to the parameters."""
        return self.parameterisation.activate(self)

    def gaussians(self) -> Gaussians:
        """The model in raw INRIA form (log-scales, logits), detached: what files store and viewers show."""
        with torch.no_grad():
            return self.parameterisation.export(self).detach()

    # ------------------------------------------------------------------ optimisation

    def set_progress(self, fraction: float) -> None:
        """Set every scheduled learning rate for the run's progress in [0, 1]."""
        for name, spec in self._specs.items():
            if spec.lr and spec.lr_final is not None:
                rate = spec.lr * (spec.lr_final / spec.lr) ** fraction
                for group in self.optimizers[name].param_groups:
                    group["lr"] = rate

    def learning_rate(self, name: str) -> float:
        return self.optimizers[name].param_groups[0]["lr"]

    def set_learning_rate(self, name: str, rate: float) -> None:
        """Set one parameter's rate for the coming steps (a rate that follows other parameters, e.g. EAGLES'
        latents divided by their decoder's norm; `set_progress` rewrites only scheduled rates)."""
        for group in self.optimizers[name].param_groups:
            group["lr"] = rate

    def restart_moments(self) -> None:
        """Forget every optimiser's state (moments and step count), as a freshly set-up optimiser (FLoD starts
        each level so)."""
        for optimizer in self.optimizers.values():
            optimizer.state.clear()

    def step(self, visible: torch.Tensor | None = None) -> None:
        """One Adam step of every trainable parameter, then clear the gradients.

        With `visible` ((N,) bool, the Gaussians some view of this step rendered), per-Gaussian parameters step
        only in those rows; the others keep their values and both moments, as in gsplat's SelectiveAdam and
        Taming 3DGS's sparse Adam (Mallick et al. 2024), while the bias correction follows the global step. Dense
        Adam would instead keep moving an unseen Gaussian on its decaying momentum. Runs in the native extension.
        """
        if visible is None and not self.native_adam:
            for optimizer in self.optimizers.values():
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            return
        names = [name for name in self.optimizers if self.params[name].grad is not None]
        params = [self.params[name] for name in names]
        states = [self._adam_state(name) for name in names]
        load_extension().adam_step(
            [p.data for p in params], [p.grad.contiguous() for p in params], [s["exp_avg"] for s in states],
            [s["exp_avg_sq"] for s in states], [s["step"] for s in states], [self.learning_rate(n) for n in names],
            visible, [visible is not None and self._specs[n].per_gaussian for n in names], *ADAM_BETAS, ADAM_EPS)
        for param in params:
            param.grad = None

    def _adam_state(self, name: str) -> dict[str, torch.Tensor]:
        """The optimiser state of parameter `name`, started as torch's fused Adam starts it, so checkpoints and
        edits see one layout whichever code stepped it."""
        param = self.params[name]
        state = self.optimizers[name].state[param]
        if not state:
            state["step"] = torch.zeros((), dtype=torch.float32, device=param.device)
            state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        return state

    # ------------------------------------------------------------------ edits

    @torch.no_grad()
    def keep(self, rows: torch.Tensor) -> None:
        """Keep only `rows` (a boolean mask or indices) of every per-Gaussian tensor: pruning."""
        self._edit(lambda name, t: t[rows], lambda name, m: m[rows], lambda name, b: b[rows])

    @torch.no_grad()
    def append(self, sources: torch.Tensor, values: dict[str, torch.Tensor] | None = None) -> None:
        """Append one Gaussian per index in `sources`, copying that row of every per-Gaussian tensor except the
        parameters given in `values` (rows in the same order). New Adam moments are zero; buffers follow their
        `new_rows` rule. Clone, split and MCMC's growth are this with different `values`."""
        values = values or {}
        self._check(values, len(sources))

        def param(name: str, t: torch.Tensor) -> torch.Tensor:
            return torch.cat([t, values[name].to(t) if name in values else t[sources]])

        def buffer(name: str, b: torch.Tensor) -> torch.Tensor:
            new = b[sources] if self._new_rows[name] == "copy" else b.new_zeros((len(sources), *b.shape[1:]))
            return torch.cat([b, new])

        self._edit(param, lambda name, m: torch.cat([m, m.new_zeros((len(sources), *m.shape[1:]))]), buffer)

    @torch.no_grad()
    def assign(self, rows: torch.Tensor, values: dict[str, torch.Tensor]) -> None:
        """Overwrite rows `rows` (indices) of the parameters in `values` and restart those parameters' Adam
        moments there; everything else about these Gaussians stays (the 3DGS opacity reset)."""
        self._check(values, len(rows))
        for name, new in values.items():
            self.params[name].data[rows] = new.to(self.params[name])
            state = self.optimizers[name].state.get(self.params[name], {}) if name in self.optimizers else {}
            for key, moment in state.items():
                if key != "step" and isinstance(moment, torch.Tensor) and moment.dim() > 0:
                    moment[rows] = 0

    @torch.no_grad()
    def relocate(self, rows: torch.Tensor, sources: torch.Tensor, values: dict[str, torch.Tensor] | None = None
                 ) -> None:
        """Turn Gaussians `rows` into new ones: copies of rows `sources` (which may be `rows` itself) with the
        parameters in `values` replaced. All their Adam moments restart at zero and their buffers follow the
        `new_rows` rule, as for appended Gaussians (MCMC's relocation, Kheradmand et al. 2024)."""
        values = values or {}
        self._check(values, len(rows))

        def param(name: str, t: torch.Tensor) -> torch.Tensor:
            t[rows] = values[name].to(t) if name in values else t[sources]
            return t

        def moment(name: str, m: torch.Tensor) -> torch.Tensor:
            m[rows] = 0
            return m

        def buffer(name: str, b: torch.Tensor) -> torch.Tensor:
            b[rows] = b[sources] if self._new_rows[name] == "copy" else 0
            return b

        self._edit(param, moment, buffer)

    def _check(self, values: dict[str, torch.Tensor], count: int) -> None:
        for name, rows in values.items():
            if not self._specs.get(name, _ParamSpec(False, None, None)).per_gaussian:
                raise KeyError(f"{name!r} is not a per-Gaussian parameter")
            if rows.shape[0] != count:
                raise ValueError(f"{name}: {rows.shape[0]} rows for {count} Gaussians")

    def _edit(self, param_fn, moment_fn, buffer_fn) -> None:
        for name, spec in self._specs.items():
            if not spec.per_gaussian:
                continue  # shared tensors (decoders) are not rows of Gaussians
            old = self.params[name]
            new = torch.nn.Parameter(param_fn(name, old.data), requires_grad=old.requires_grad)
            self.params[name] = new
            optimizer = self.optimizers.get(name)
            if optimizer is None:
                continue  # frozen: no moments to carry
            state = optimizer.state.pop(old, {})
            for key, value in state.items():
                if key != "step" and isinstance(value, torch.Tensor) and value.dim() > 0:
                    state[key] = moment_fn(key, value)
            optimizer.param_groups[0]["params"] = [new]
            optimizer.state[new] = state
        for name in self.buffers:
            self.buffers[name] = buffer_fn(name, self.buffers[name])

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, Any]:
        return {
            "params": {k: v.detach().cpu() for k, v in self.params.items()},
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "buffers": {k: v.cpu() for k, v in self.buffers.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore tensors saved by `state_dict` into the parameters and buffers this model declared (their
        counts may differ from the declared ones); learning rates stay as declared (the run's config decides)."""
        restartable = {n for n in self.buffers if self._new_rows[n] == "zero"}  # accumulators may start afresh
        missing = sorted((set(self.params) - set(state["params"])) |
                         (set(self.buffers) - set(state["buffers"]) - restartable))
        if missing:
            raise KeyError(f"the checkpoint lacks {', '.join(missing)}")
        for name, value in state["params"].items():
            old = self.params[name]
            new = torch.nn.Parameter(value.to(self.device), requires_grad=old.requires_grad)
            self.params[name] = new
            optimizer = self.optimizers.get(name)
            if optimizer is not None:
                optimizer.param_groups[0]["params"] = [new]
                optimizer.state.clear()
                saved = state["optimizers"][name]
                rates = [g["lr"] for g in optimizer.param_groups]
                optimizer.load_state_dict(saved)
                for group, lr in zip(optimizer.param_groups, rates):
                    group["lr"] = lr
                    group["fused"] = True  # older checkpoints saved unfused settings
        for name, value in state["buffers"].items():
            self.buffers[name] = value.to(self.device)
        for name in restartable - set(state["buffers"]):
            self.buffers[name] = self.buffers[name].new_zeros((len(self), *self.buffers[name].shape[1:]))

