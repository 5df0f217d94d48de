"""What each export format costs and keeps, for trained runs (the demo and cup_colmap by default).

For every format (and the SH-free variants players on phones often want): file size and its ratio to the
lossless INRIA .ply measured in the same run, bytes per splat, write and read time (best of 3), and the
held-out PSNR/SSIM of the model read back from the file against the original model's, on the run's own
held-out views.

Usage: python scripts/bench_export.py [--runs runs/demo runs/cup] (a run folder with a point_cloud.ply or a
checkpoint; `runs/demo` is trained here for 2,000 steps when it does not exist yet)
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from splatkit.data import ImageStore
from splatkit.io.export import slimmed, write_model
from splatkit.io.formats import read_splats
from splatkit.train.evaluate import evaluate
from splatkit.train.run_record import read_run
from splatkit.train.trainer import image_cache_dir
from splatkit.viewer.source import load_source

VARIANTS = [  # (label, format, SH degree kept: None = all)
    ("ply (INRIA)", "ply", None),
    ("compressed.ply", "compressed-ply", None),
    ("compressed.ply SH0", "compressed-ply", 0),
    ("spz v3", "spz", None),
    ("spz v3 SH0", "spz", 0),
    (".splat (no SH)", "splat", None),
]


def best_of(n: int, fn) -> tuple[float, object]:
    times, result = [], None
    for _ in range(n):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def bench_run(run: Path, tmp: Path) -> None:
    record = read_run(run)
    scene_path = record.scene_path
    scene = record.load_scene()
    views = scene.test_ids or scene.train_ids  # a run trained on every view has no held-out ones
    images = ImageStore(scene.cameras, cache_dir=image_cache_dir(run, scene_path), background=scene.background)
    model = load_source(run).snapshot().gaussians  # in the training frame, where the scene's cameras are
    reference = evaluate(model, scene, images, views)["mean"]
    print(f"\n{run} ({scene_path.name}): {len(model):,} Gaussians, SH degree {model.sh_degree}, "
          f"{len(views)} {'held-out' if scene.test_ids else 'training'} views, "
          f"original PSNR {reference['psnr']:.2f} dB, "
          f"SSIM {reference['ssim']:.4f}")
    print(f"{'format':20} {'size MB':>9} {'vs ply':>8} {'B/splat':>8} {'write ms':>9} {'read ms':>8} "
          f"{'PSNR':>7} {'dPSNR':>7} {'SSIM':>7}")
    ply_size = None
    for label, fmt, degree in VARIANTS:
        path = tmp / f"{run.name}-{label.split()[0]}{'-sh0' if degree == 0 else ''}.{fmt}"
        slim = slimmed(model, path, sh_degree=degree)
        write_s, _ = best_of(3, lambda: write_model(slim, path, fmt))
        read_s, back = best_of(3, lambda: read_splats(path))
        size = path.stat().st_size
        ply_size = ply_size or size
        result = evaluate(back, scene, images, views)["mean"]
        print(f"{label:20} {size / 1e6:9.2f} {ply_size / size:7.1f}x {size / len(model):8.1f} {write_s * 1e3:9.0f} "
              f"{read_s * 1e3:8.0f} {result['psnr']:7.2f} {result['psnr'] - reference['psnr']:+7.2f} "
              f"{result['ssim']:7.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, nargs="+", default=[Path("runs/demo"), Path("runs/cup")])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for run in args.runs:
            if run.name == "demo" and not (run / "config.json").is_file():
                subprocess.run([sys.executable, "-m", "splatkit.cli", "train", "demo", "--out", str(run),
                                "--steps", "2000"], check=True)
            if not (run / "config.json").is_file():
                print(f"\n{run}: no such run; train one first, e.g. `splatkit train ../shared/datasets/cup_colmap "
                      f"--data-factor 2 --steps 7000 --out {run}`")
                continue
            bench_run(run, Path(tmp))


if __name__ == "__main__":
    main()
