"""Levels of detail (FLoD, `--lod`) against plain 3DGS of the same total steps, on real captures.

Per scene: each level alone, selective sets (levels 3:5 and 1:5, banded per view) and the ADC baseline: the
number of Gaussians (drawn from the first held-out view, for selective sets), bytes in each export format,
held-out PSNR/SSIM, render time at 1280 px wide (native backend, best of 3, ratio to the top level in the same
run) and the peak RSS of a process that only loads that file and renders one view. `--reference-budget`
trains FLoD with 100/30 times the steps (the reference trains 100k steps where 3DGS trains 30k), to show what
the CPU-sized default costs.

Usage: python scripts/bench_lod.py [--steps 7000] [--data-factor 4] [--scenes cup_colmap beer_can_colmap fox]
       [--reference-budget] [--out runs/bench_lod]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

from splatkit.data import ImageStore
from splatkit.io.formats import read_splats, write_splats
from splatkit.model.levels import LevelChoice, level_counts
from splatkit.render import rasterize
from splatkit.train.config import TrainConfig, lod_preset
from splatkit.train.evaluate import evaluate
from splatkit.train.run_record import read_run
from splatkit.train.trainer import image_cache_dir

from bench_runs import trained

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"
FORMATS = [("ply", ".ply"), ("compressed-ply", ".compressed.ply"), ("spz", ".spz"), ("sog", ".sog"),
           ("compact", ".spkz")]
RSS_PROBE = """
import resource, sys, torch
from splatkit.io.formats import read_splats
from splatkit.render import rasterize
from splatkit.data.cameras import Camera
import numpy as np
g = read_splats(sys.argv[1])
K = np.array(eval(sys.argv[2])); w2c = np.array(eval(sys.argv[3]))
camera = Camera(name="probe", width=int(sys.argv[4]), height=int(sys.argv[5]), K=K, world_to_cam=w2c)
with torch.no_grad():
    rasterize(g, camera, backend="native")
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
"""


def wide_camera(camera, width: int = 1280):
    return camera.scaled(camera.width / width)


def render_ms(g, camera) -> float:
    times = []
    with torch.no_grad():
        for _ in range(3):
            start = time.perf_counter()
            rasterize(g, camera, backend="native")
            times.append(time.perf_counter() - start)
    return 1e3 * min(times)


def peak_rss(path: Path, camera) -> int:
    """Peak resident bytes of a fresh process that reads `path` and renders `camera` once."""
    out = subprocess.run([sys.executable, "-c", RSS_PROBE, str(path), repr(camera.K.tolist()),
                          repr(camera.world_to_cam.tolist()), str(camera.width), str(camera.height)],
                         capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1])


def measure(run: Path, label: str, choice: LevelChoice, tmp: Path) -> dict:
    """Everything the table shows for one choice of a run's model (training frame): mean held-out PSNR/SSIM;
    count, bytes, render time and RSS of the set drawn for the first held-out view."""
    record = read_run(run)
    scene = record.load_scene()
    images = ImageStore(scene.cameras, cache_dir=image_cache_dir(run, record.scene_path),
                        background=scene.background)
    model = read_splats(run / "point_cloud.ply").transformed(scene.to_normalized)
    view = scene.cameras[scene.test_ids[0]]
    chosen = choice.for_view(model, view)
    metrics = evaluate(model, scene, images, scene.test_ids, levels=choice)["mean"]
    stem = tmp / f"{run.name}-{label.replace(' ', '_').replace(':', '-')}"
    sizes = {}
    for fmt, ext in FORMATS:
        write_splats(chosen, stem.with_name(stem.name + ext), fmt)
        sizes[fmt] = stem.with_name(stem.name + ext).stat().st_size
    wide = wide_camera(view)
    return {"label": label, "gaussians": len(chosen), "psnr": metrics["psnr"], "ssim": metrics["ssim"],
            "bytes": sizes, "ms": render_ms(chosen, wide), "rss": peak_rss(stem.with_name(stem.name + ".ply"), wide)}


def bench_scene(scene: str, steps: int, factor: int, runs: Path, reference_budget: bool) -> list[dict]:
    base = TrainConfig(scene=scene, steps=steps, data_factor=factor, eval_steps=(), checkpoint_every=steps,
                       log_every=100, device="cpu")
    lod_steps = round(steps * 100 / 30) if reference_budget else steps
    lod = dataclasses.replace(lod_preset(dataclasses.replace(base, steps=lod_steps)),
                              out=runs / f"lod_s{lod_steps}")
    adc = dataclasses.replace(base, out=runs / "adc")
    trained(lod)
    trained(adc)
    tmp = runs / "files"
    tmp.mkdir(parents=True, exist_ok=True)
    model = read_splats(lod.out / "point_cloud.ply")
    rows = [measure(lod.out, f"level {level}", LevelChoice(level=level), tmp) for level in level_counts(model)]
    finest = max(level_counts(model))
    rows += [measure(lod.out, f"selective {a}:{finest}", LevelChoice(levels=(a, finest)), tmp)
             for a in (3, 1) if a < finest]
    rows.append(measure(adc.out, "3DGS (ADC)", LevelChoice(), tmp))
    return rows


def print_table(name: str, factor: int, steps: int, rows: list[dict]) -> None:
    top = [r for r in rows if r["label"].startswith("level")][-1]  # the finest level
    print(f"\n{name}, data factor {factor}, {steps} steps, CPU; PSNR/SSIM: mean over the held-out views; "
          "#Gaussians, bytes, render time at 1280 px wide and RSS: the first held-out view")
    print(f"{'set':16} {'#Gaussians':>11} {'PSNR':>6} {'SSIM':>7} {'ms':>7} {'vs top':>7} {'RSS MB':>7} "
          + " ".join(f"{fmt:>15}" for fmt, _ in FORMATS))
    for r in rows:
        print(f"{r['label']:16} {r['gaussians']:11,} {r['psnr']:6.2f} {r['ssim']:7.4f} {r['ms']:7.1f} "
              f"{r['ms'] / top['ms']:6.2f}x {r['rss'] / 1e6:7.0f} "
              + " ".join(f"{r['bytes'][fmt] / 1e6:13.2f}MB" for fmt, _ in FORMATS))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=7000)
    parser.add_argument("--data-factor", type=int, default=4)
    parser.add_argument("--scenes", nargs="+", default=["cup_colmap", "beer_can_colmap", "fox"])
    parser.add_argument("--reference-budget", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("runs/bench_lod"))
    args = parser.parse_args()
    for name in args.scenes:
        scene = str(SHARED / name) if (SHARED / name).exists() else name
        runs = args.out / f"{Path(name).name}_f{args.data_factor}_s{args.steps}"
        rows = bench_scene(scene, args.steps, args.data_factor, runs, args.reference_budget)
        (runs / "table.json").write_text(json.dumps(rows, indent=2))
        print_table(name, args.data_factor, args.steps, rows)


if __name__ == "__main__":
    main()
