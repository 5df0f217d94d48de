"""Rasterizer speed: native vs the PyTorch reference on gsplat's real garden cloud, measured in one run.

All 138,766 garden points get 3-nearest-neighbour scales, seeded random rotations and opacities and SH degree 3,
and are rendered at 648x420 from the three real cameras. Prints forward and forward+backward milliseconds per
backend and the native speed-up. Usage: python scripts/bench_rasterizer.py [--repeats N] [--crop]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from splatkit.data.cameras import Camera
from splatkit.model.gaussians import Gaussians, init_from_points
from splatkit.render import rasterize

GARDEN = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "gsplat_test_garden" / "test_garden.npz"


def garden(crop: bool) -> tuple[Gaussians, list[Camera]]:
    data = np.load(GARDEN)
    points, colors = data["means3d"], data["colors"] / 255.0
    if crop:  # gsplat's test crop
        keep = (np.abs(points) < 2).all(axis=1)
        points, colors = points[keep], colors[keep]
    g = init_from_points(points, colors, sh_degree=3)
    gen = torch.Generator().manual_seed(0)
    g.opacities = torch.logit(torch.rand(len(g), generator=gen) * 0.9 + 0.05)
    g.quats = torch.randn(len(g), 4, generator=gen)
    g.shN = 0.1 * torch.randn(g.shN.shape, generator=gen)
    width, height = int(data["width"]), int(data["height"])
    cameras = [Camera(f"view{i}", width, height, data["Ks"][i].astype(np.float64),
                      data["viewmats"][i].astype(np.float64)) for i in range(len(data["Ks"]))]
    return g, cameras


def time_backend(g: Gaussians, cameras: list[Camera], backend: str, repeats: int) -> tuple[float, float]:
    forward, total = [], []
    params = {k: v.detach().clone().requires_grad_(True) for k, v in g.as_dict().items()}
    model = Gaussians.from_dict(params)
    rasterize(model, cameras[0], backend=backend)  # warm-up (and, for native, the one-time build)
    for _ in range(repeats):
        for camera in cameras:
            start = time.perf_counter()
            with torch.no_grad():
                rasterize(model, camera, backend=backend)
            forward.append(time.perf_counter() - start)
            start = time.perf_counter()
            out = rasterize(model, camera, backend=backend)
            out.means2d.retain_grad()
            (out.rgb.sum() + out.alpha.sum()).backward()
            total.append(time.perf_counter() - start)
    return 1000 * statistics.median(forward), 1000 * statistics.median(total)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--reference-repeats", type=int, default=1, help="repeats for the slow torch reference")
    parser.add_argument("--crop", action="store_true", help="gsplat's [-2,2]^3 crop instead of all points")
    args = parser.parse_args()
    g, cameras = garden(args.crop)
    print(f"garden: {len(g):,} Gaussians, {cameras[0].width}x{cameras[0].height}, {len(cameras)} cameras, "
          f"{torch.get_num_threads()} threads")
    results = {}
    for backend, repeats in (("native", args.repeats), ("torch", args.reference_repeats)):
        results[backend] = time_backend(g, cameras, backend, repeats)
        fwd, both = results[backend]
        print(f"{backend:>7}: forward {fwd:8.1f} ms   forward+backward {both:8.1f} ms")
    (nf, nb), (tf, tb) = results["native"], results["torch"]
    print(f"speed-up native vs torch: forward {tf / nf:.1f}x   forward+backward {tb / nb:.1f}x")


if __name__ == "__main__":
    main()
