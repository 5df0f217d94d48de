"""Training-step throughput: the full step (render, loss, backward, Adam, densification bookkeeping).

Runs the real trainer loop on `cup_colmap` at full 800x600 and at factor 4 with each backend, measured in the same
run, and prints steps per second, #Gaussians, the native speed-up and where a native step spends its time.
Usage: python scripts/bench_train.py [--steps N] [--backends native torch] [--factors 1 4]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from splatkit.data import ImageStore, load_scene
from splatkit.train.config import TrainConfig
from splatkit.train.trainer import Trainer

CUP = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "cup_colmap"


def measure(factor: int, backend: str, steps: int, warmup: int, tmp: Path) -> tuple[float, int]:
    cfg = TrainConfig(scene=str(CUP), out=tmp / f"{backend}-{factor}", data_factor=factor, backend=backend,
                      steps=30_000, device="cpu")
    scene = load_scene(CUP, data_factor=factor)
    images = ImageStore(scene.cameras, cache_dir=tmp / "cache")
    for i in scene.train_ids:  # decode once so the timing is the optimisation, not JPEG decoding
        images[i]
    trainer = Trainer(cfg, scene, images, tmp)
    for _ in range(warmup):
        trainer.train_step()
    start = time.perf_counter()
    for _ in range(steps):
        trainer.train_step()
    return steps / (time.perf_counter() - start), len(trainer.model)


def profile_step(factor: int, tmp: Path) -> None:
    """Where one native training step's time goes (torch profiler, top operators)."""
    cfg = TrainConfig(scene=str(CUP), out=tmp / "profile", data_factor=factor, backend="native", device="cpu")
    scene = load_scene(CUP, data_factor=factor)
    trainer = Trainer(cfg, scene, ImageStore(scene.cameras), tmp)
    for _ in range(3):
        trainer.train_step()
    with torch.profiler.profile() as prof:
        for _ in range(5):
            trainer.train_step()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--backends", nargs="+", default=["native", "torch"])
    parser.add_argument("--factors", nargs="+", type=int, default=[1, 4])
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    import tempfile

    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        for factor in args.factors:
            rates = {}
            for backend in args.backends:
                steps = args.steps if backend != "torch" else max(3, args.steps // 10)
                rates[backend], n = measure(factor, backend, steps, args.warmup, tmp)
                print(f"cup factor {factor}: {backend:>7} {rates[backend]:7.2f} steps/s  ({n:,} Gaussians)")
            if "native" in rates and "torch" in rates:
                print(f"cup factor {factor}: native speed-up {rates['native'] / rates['torch']:.1f}x")
        if args.profile:
            profile_step(4, tmp)


if __name__ == "__main__":
    main()
