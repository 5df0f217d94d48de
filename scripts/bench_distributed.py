"""One process against two on this machine: views per second, held-out PSNR at (about) equal wall time, and
what the all-reduce costs per step.

Rows, each a `splatkit train` started afresh:
  1 process x 2 threads, 1 view per step     (the default)
  1 process x 2 threads, --batch-size 2      (the algorithm two processes run)
  torchrun 2 processes x 1 thread, 1 view each
Each row first trains a short calibration run to measure its step rate, then trains as many steps as fit in
`--seconds` at that rate (the rate falls as Gaussians multiply, so rows overrun alike; their real wall time is
printed). Step-rate ratios are against the first row, measured in the same run.

Usage: python scripts/bench_distributed.py [--scene cup_colmap] [--data-factor 4] [--seconds 300]
       [--out runs/bench_distributed]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"
ROWS = [("1 process x 2 threads, 1 view/step", 1, 2, 1), ("1 process x 2 threads, 2 views/step", 1, 2, 2),
        ("2 processes x 1 thread, 1 view each", 2, 1, 1)]


def run(scene: Path, out: Path, processes: int, threads: int, batch: int, steps: int, factor: int) -> float:
    """Train `steps` steps into `out` (fresh); returns the wall seconds, process start-up included."""
    shutil.rmtree(out, ignore_errors=True)
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes)] \
        if processes > 1 else [sys.executable]
    command = [*launcher, "-m", "splatkit", "train", str(scene), "--out", str(out), "--steps", str(steps),
               "--data-factor", str(factor), "--threads", str(threads), "--batch-size", str(batch),
               "--eval-steps", "--log-every", "20", "--checkpoint-every", str(steps), "--device", "cpu"]
    out.mkdir(parents=True)
    started = time.perf_counter()
    with open(out / "train.log", "w") as printed:
        done = subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": str(threads)}, stdout=printed,
                              stderr=subprocess.STDOUT)
    if done.returncode:
        sys.exit(f"bench_distributed: {' '.join(command)} failed; see {out / 'train.log'}")
    return time.perf_counter() - started


def log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if "loss" in line]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scene", default="cup_colmap")
    parser.add_argument("--data-factor", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=300.0)
    parser.add_argument("--calibration-steps", type=int, default=100)
    parser.add_argument("--out", type=Path, default=Path("runs/bench_distributed"))
    args = parser.parse_args()
    scene = SHARED / args.scene
    results = []
    for i, (label, processes, threads, batch) in enumerate(ROWS):
        calibration = args.out / f"calibrate_{i}"
        run(scene, calibration, processes, threads, batch, args.calibration_steps, args.data_factor)
        rate = log(calibration)[-1]["steps_per_s"]
        steps = max(20, int(rate * args.seconds))
        out = args.out / f"run_{i}"
        seconds = run(scene, out, processes, threads, batch, steps, args.data_factor)
        lines = log(out)
        metrics = json.loads((out / "metrics.json").read_text())
        comm_s = sum(line.get("allreduce_s", 0.0) for line in lines) / steps
        comm_bytes = sum(line.get("allreduce_bytes", 0.0) for line in lines) / steps
        results.append({"label": label, "steps": steps, "seconds": seconds, "steps_per_s": lines[-1]["steps_per_s"],
                        "views_per_s": lines[-1]["views_per_s"], "psnr": metrics["psnr"], "ssim": metrics["ssim"],
                        "gaussians": metrics["num_gaussians"], "comm_ms": 1e3 * comm_s, "comm_mb": comm_bytes / 1e6})
    (args.out / "table.json").write_text(json.dumps(results, indent=2))
    base = results[0]["views_per_s"]
    print(f"\n{args.scene}, data factor {args.data_factor}, ~{args.seconds:.0f} s per row, {os.cpu_count()} CPUs")
    print(f"{'configuration':40} {'steps':>6} {'wall s':>7} {'views/s':>8} {'x row 1':>7} {'PSNR':>6} {'SSIM':>6} "
          f"{'#Gaussians':>10} {'comm ms/step':>12} {'comm MB/step':>12}")
    for r in results:
        print(f"{r['label']:40} {r['steps']:6d} {r['seconds']:7.0f} {r['views_per_s']:8.2f} "
              f"{r['views_per_s'] / base:7.2f} {r['psnr']:6.2f} {r['ssim']:6.3f} {r['gaussians']:10,} "
              f"{r['comm_ms']:12.2f} {r['comm_mb']:12.2f}")


if __name__ == "__main__":
    main()
