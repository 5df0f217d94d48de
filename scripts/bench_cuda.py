"""CUDA rasterizer speed: splatkit's native CUDA kernels vs gsplat on gsplat's real garden cloud, in one run.

The garden cloud and cameras exactly as scripts/bench_rasterizer.py builds them (all 138,766 points, SH degree 3,
648x420, three real cameras), on the first CUDA device. Each render is timed between two CUDA synchronisations;
prints the median forward and forward+backward milliseconds per backend and native / gsplat ratios (below 1: native
is faster). Needs a GPU, a torch that sees it, and gsplat. Usage: python scripts/bench_cuda.py [--repeats N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_rasterizer import GARDEN, garden  # noqa: E402  the same cloud and cameras as the CPU benchmark

from splatkit.data.cameras import Camera  # noqa: E402
from splatkit.errors import SplatkitError  # noqa: E402
from splatkit.model.gaussians import Gaussians  # noqa: E402
from splatkit.render import rasterize  # noqa: E402
from splatkit.render.api import resolve_backend  # noqa: E402


def time_backend(params: dict[str, torch.Tensor], cameras: list[Camera], backend: str,
                 repeats: int) -> tuple[float, float]:
    """Median milliseconds of a forward render and of a forward+backward one, over `repeats` x the cameras."""
    model = Gaussians.from_dict(params)

    def forward(camera: Camera) -> None:
        with torch.no_grad():
            rasterize(model, camera, backend=backend)

    def forward_backward(camera: Camera) -> None:
        out = rasterize(model, camera, backend=backend)
        out.means2d.retain_grad()  # as training does, for densification
        (out.rgb.sum() + out.alpha.sum()).backward()
        for p in params.values():
            p.grad = None

    def timed(render, camera: Camera) -> float:
        torch.cuda.synchronize()
        start = time.perf_counter()
        render(camera)
        torch.cuda.synchronize()
        return 1000 * (time.perf_counter() - start)

    for camera in cameras:  # warm-up: the native build's first load, gsplat's kernels, the CUDA caching allocator
        forward_backward(camera)
    runs = [camera for _ in range(repeats) for camera in cameras]
    return (statistics.median(timed(forward, c) for c in runs),
            statistics.median(timed(forward_backward, c) for c in runs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_cuda: torch sees no CUDA device, nothing to measure")
    if not GARDEN.is_file():
        raise SystemExit(f"bench_cuda: {GARDEN} not found")
    try:  # now if either cannot run, not after the other's timing
        for backend in ("native", "gsplat"):
            resolve_backend(backend, "cuda")
    except SplatkitError as exc:
        raise SystemExit(f"bench_cuda: {exc}") from None
    g, cameras = garden(crop=False)
    params = {k: v.cuda().requires_grad_() for k, v in g.as_dict().items()}
    print(f"garden: {len(g):,} Gaussians, {cameras[0].width}x{cameras[0].height}, {len(cameras)} cameras, "
          f"{torch.cuda.get_device_name()}")
    results = {}
    for backend in ("native", "gsplat"):
        results[backend] = time_backend(params, cameras, backend, args.repeats)
        fwd, both = results[backend]
        print(f"{backend:>7}: forward {fwd:8.2f} ms   forward+backward {both:8.2f} ms")
    (nf, nb), (gf, gb) = results["native"], results["gsplat"]
    print(f"native / gsplat: forward {nf / gf:.2f}x   forward+backward {nb / gb:.2f}x")


if __name__ == "__main__":
    main()
