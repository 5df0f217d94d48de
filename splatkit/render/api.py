"""The one rendering entry point, `rasterize()`, and the registry of backends behind it.

`rasterize()` does everything the backends share once: it activates raw Gaussians, picks the backend (checking
its availability once per device), and composites the backend's premultiplied colour over the background and
normalises its depth. A backend only projects, shades and blends.
"""

from __future__ import annotations

import functools
import sys
from dataclasses import dataclass
from typing import Callable, Literal, Protocol

import torch

from splatkit.data.cameras import Camera
from splatkit.errors import SplatkitError
from splatkit.model.gaussians import ActivatedGaussians, Gaussians

Device = Literal["auto", "cpu", "cuda"]


@dataclass(frozen=True)
class RenderSettings:
    sh_degree: int
    antialiased: bool = False  # Mip-Splatting opacity compensation
    viewmat: torch.Tensor | None = None  # cam_from_world (4, 4) replacing the camera's, e.g. a refined pose


@dataclass
class Rasterized:
    """What a backend returns: sums over each pixel's blended Gaussians, without any background."""

    color: torch.Tensor  # (H, W, 3) sum of w * colour, w = alpha * T
    alpha: torch.Tensor  # (H, W) sum of w
    depth_sum: torch.Tensor  # (H, W) sum of w * z (camera-space z)
    means2d: torch.Tensor  # projected centres, (N, 2) ((1, N, 2) from gsplat)
    radii: torch.Tensor  # (N, 2) int per-axis screen radius in pixels; 0 = not visible
    weight_sums: torch.Tensor | None  # (N,) sum over pixels of w, detached (None: the backend lacks it)
    absgrad: torch.Tensor | None = None  # (N, 2) sum of per-pixel |dL/dmeans2d|, filled by backward


@dataclass
class RenderOutput:
    rgb: torch.Tensor  # (H, W, 3) float32, composited over the background, linear in [0, 1] (may overshoot)
    alpha: torch.Tensor  # (H, W) accumulated opacity
    depth_sum: torch.Tensor  # (H, W) sum over Gaussians of w z (camera-space z weighted as the colours)
    means2d: torch.Tensor  # projected centres in pixels, (N, 2) ((1, N, 2) from gsplat); .retain_grad() first
    radii: torch.Tensor  # (N, 2) int per-axis screen radius; 0 = not visible
    weight_sums: torch.Tensor | None  # (N,) sum over pixels of alpha * T, detached (None: backend lacks it)
    absgrad: torch.Tensor | None = None  # (N, 2) sum of per-pixel |dL/dmeans2d|, filled by backward (native only)

    @property
    def depth(self) -> torch.Tensor:
        """(H, W) expected camera-space z, sum(w z) / alpha; 0 where nothing was hit (computed when asked: training
        never does)."""
        return self.depth_sum / self.alpha.clamp(min=1e-10)

    @property
    def means2d_grad(self) -> torch.Tensor:
        """(N, 2) screen-space gradient of the loss, after backward (needs means2d.retain_grad())."""
        return self.means2d.grad.reshape(-1, 2)


class Backend(Protocol):
    def __call__(self, gaussians: ActivatedGaussians, camera: Camera, settings: RenderSettings) -> Rasterized: ...


@dataclass(frozen=True)
class _Registered:
    render: Backend
    unavailable: Callable[[torch.device], str | None]  # why it cannot run on a device, or None when it can
    provides: frozenset[str]  # optional outputs it fills: "weight_sums", "absgrad"


_BACKENDS: dict[str, _Registered] = {}
# `auto` takes the first available: the proven CUDA path on GPUs, our native build on CPUs, the reference last.
AUTO_ORDER = ("gsplat", "native", "torch")


def register_backend(name: str, render: Backend, unavailable: Callable[[torch.device], str | None],
                     provides: frozenset[str] = frozenset()) -> None:
    """Add a backend; `provides` names the optional `Rasterized` outputs it fills (weight_sums, absgrad)."""
    _BACKENDS[name] = _Registered(render, unavailable, provides)
    _resolve.cache_clear()


def backend_names() -> list[str]:
    return ["auto", *_BACKENDS]


def resolve_device(name: str = "auto") -> torch.device:
    """`auto`: the first CUDA device when torch sees one, else the CPU; `cpu`/`cuda[:i]` as given.
    Raises SplatkitError for CUDA on a machine where torch sees none."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise SplatkitError(f"unknown device {name!r}; choose auto, cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SplatkitError("--device cuda: torch sees no CUDA device here (a CPU-only torch build, or no driver)")
    return device


@functools.lru_cache(maxsize=None)
def _resolve(name: str, device: torch.device, needs: frozenset[str]) -> str:
    def unavailable(candidate: str) -> str | None:
        lacking = sorted(needs - _BACKENDS[candidate].provides)
        return _BACKENDS[candidate].unavailable(device) or (
            f"does not report {', '.join(lacking)}, which this run needs" if lacking else None)

    if name == "auto":
        reasons = []
        for candidate in AUTO_ORDER:
            if candidate not in _BACKENDS:
                continue
            reason = unavailable(candidate)
            if reason is None:
                if candidate == "torch" and reasons:  # never slow down in silence
                    print(f"splatkit: rendering with the slow torch reference on {device}: {'; '.join(reasons)}",
                          file=sys.stderr, flush=True)
                return candidate
            reasons.append(f"{candidate}: {reason}")
        raise SplatkitError(f"no render backend can run on {device}: {'; '.join(reasons)}")
    if name not in _BACKENDS:
        raise SplatkitError(f"unknown render backend {name!r}; choose from {', '.join(backend_names())}")
    reason = unavailable(name)
    if reason is not None:
        raise SplatkitError(f"render backend {name!r} cannot run on {device}: {reason}")
    return name


def resolve_backend(name: str, device: torch.device | str = "cpu", needs: frozenset[str] = frozenset()) -> str:
    """The concrete backend `name` stands for on `device` that fills every optional output in `needs` (e.g.
    weight_sums for influence pruning; decided once per combination); a SplatkitError saying why if it cannot
    run there. `auto` says on stderr, once, when it falls back to the torch reference."""
    return _resolve(name, torch.device(device), frozenset(needs))


def rasterize(
    gaussians: Gaussians | ActivatedGaussians,
    camera: Camera,
    *,
    sh_degree: int | None = None,
    background: tuple[float, float, float] | torch.Tensor = (0.0, 0.0, 0.0),
    antialiased: bool = False,
    backend: str = "auto",
    viewmat: torch.Tensor | None = None,
) -> RenderOutput:
    """Render N Gaussians from `camera` (OpenCV pinhole, `world_to_cam` 4x4, pixel centres at +0.5).

    `gaussians` are raw parameters (`Gaussians`, activated here) or already activated values (what a training
    parameterisation produces). `sh_degree` defaults to the model's; lower values ignore the higher bands (used
    while SH degrees are switched on during training). `background` is an RGB triple in [0, 1] (or a (3,)
    tensor) the image is composited over. `viewmat`, a (4, 4) float32 cam_from_world tensor on the Gaussians'
    device, replaces `camera.world_to_cam` (a pose being refined); outputs are differentiable with respect to
    it as to the Gaussians' tensors (every backend: the native one sums each Gaussian's share in its kernels).
    Raises SplatkitError for an unknown backend or one that cannot run on the Gaussians' device. Example::

        out = rasterize(gaussians, scene.cameras[0], backend="torch")
        out.rgb  # (H, W, 3)
    """
    activated = gaussians.activated() if isinstance(gaussians, Gaussians) else gaussians
    degree = activated.sh_degree if sh_degree is None else min(sh_degree, activated.sh_degree)
    device = activated.means.device
    name = resolve_backend(backend, device)
    out = _BACKENDS[name].render(activated, camera, RenderSettings(degree, antialiased, viewmat))
    bg = torch.as_tensor(background, dtype=out.color.dtype).to(device)
    rgb = out.color + (1.0 - out.alpha[..., None]) * bg
    return RenderOutput(rgb, out.alpha, out.depth_sum, out.means2d, out.radii, out.weight_sums, out.absgrad)
