"""The one rendering entry point, `rasterize()`, and the registry of backends behind it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

import torch

from splatkit.data.cameras import Camera
from splatkit.errors import SplatkitError
from splatkit.model.gaussians import Gaussians


@dataclass(frozen=True)
class RenderSettings:
    sh_degree: int
    background: tuple[float, float, float] = (0.0, 0.0, 0.0)
    antialiased: bool = False  # Mip-Splatting opacity compensation


@dataclass
class RenderOutput:
    rgb: torch.Tensor  # (H, W, 3), composited over the background
    alpha: torch.Tensor  # (H, W) accumulated opacity
    depth: torch.Tensor  # (H, W) expected depth sum(w z) / alpha; 0 where nothing was hit
    means2d: torch.Tensor  # projected centres, (N, 2) ((1, N, 2) from gsplat); .retain_grad() before backward
    radii: torch.Tensor  # (N, 2) int per-axis screen radius; 0 = not visible
    weight_sums: torch.Tensor | None  # (N,) sum over pixels of alpha * T, detached (None: backend lacks it)
    absgrad: torch.Tensor | None = None  # (N, 2) sum of per-pixel |dL/dmeans2d|, filled by backward (native only)


    @property
    def means2d_grad(self) -> torch.Tensor:
        """(N, 2) screen-space gradient of the loss, after backward (needs means2d.retain_grad())."""
        return self.means2d.grad.reshape(-1, 2)


class Backend(Protocol):
    def __call__(self, gaussians: Gaussians, camera: Camera, settings: RenderSettings) -> RenderOutput: ...


@dataclass(frozen=True)
class _Registered:
    render: Backend
    available: Callable[[torch.device], bool]


_BACKENDS: dict[str, _Registered] = {}
# `auto` takes the first available: the proven CUDA path on GPUs, our native build on CPUs, the reference last.
AUTO_ORDER = ("gsplat", "native", "torch")


def register_backend(name: str, render: Backend, available: Callable[[torch.device], bool]) -> None:
    _BACKENDS[name] = _Registered(render, available)


def backend_names() -> list[str]:
    return ["auto", *_BACKENDS]


def resolve_backend(name: str, device: torch.device | str = "cpu") -> str:
    """The concrete backend `name` stands for on `device`; a clear error if it cannot run there."""
    device = torch.device(device)
    if name == "auto":
        for candidate in AUTO_ORDER:
            if candidate in _BACKENDS and _BACKENDS[candidate].available(device):
                return candidate
        raise SplatkitError(f"no render backend can run on {device}")
    if name not in _BACKENDS:
        raise SplatkitError(f"unknown render backend {name!r}; choose from {', '.join(backend_names())}")
    if not _BACKENDS[name].available(device):
        raise SplatkitError(f"render backend {name!r} is not available on {device}")
    return name


def rasterize(
    gaussians: Gaussians,
    camera: Camera,
    *,
    sh_degree: int | None = None,
    background: tuple[float, float, float] | torch.Tensor = (0.0, 0.0, 0.0),
    antialiased: bool = False,
    backend: str = "auto",
) -> RenderOutput:
    """Render `gaussians` (raw parameters) from `camera`.

    `sh_degree` defaults to the model's; lower values ignore the higher bands (used while SH degrees are
    switched on during training). Example::

        out = rasterize(gaussians, scene.cameras[0], backend="torch")
        out.rgb  # (H, W, 3)
    """
    degree = gaussians.sh_degree if sh_degree is None else min(sh_degree, gaussians.sh_degree)
    if isinstance(background, torch.Tensor):
        background = tuple(float(v) for v in background)
    settings = RenderSettings(degree, tuple(background), antialiased)
    name = resolve_backend(backend, gaussians.means.device)
    return _BACKENDS[name].render(gaussians, camera, settings)
