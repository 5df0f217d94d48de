"""Strategies compared on a real capture: held-out PSNR/SSIM, final #Gaussians and wall time of ADC and MCMC.

Trains `cup_colmap` at `--data-factor 4` for 7,000 steps with ADC (its defaults), then with MCMC capped at ADC's
final count (so both end with the same budget), in the same process on the same machine, and prints both and
their ratios. Usage: python scripts/bench_strategies.py [--steps 7000] [--scene PATH] [--data-factor 4]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from splatkit.train.config import TrainConfig
from splatkit.train.strategies import ADCStrategy, MCMCStrategy
from splatkit.train.trainer import train

CUP = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "cup_colmap"


def run(scene: Path, out: Path, steps: int, factor: int, strategy) -> dict:
    cfg = TrainConfig(scene=str(scene), out=out, steps=steps, data_factor=factor, strategy=strategy,
                      eval_steps=(), checkpoint_every=steps, log_every=500, device="cpu")
    start = time.perf_counter()
    metrics = train(cfg, show_progress=False)
    seconds = time.perf_counter() - start
    rates = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {"psnr": metrics["psnr"], "ssim": metrics["ssim"], "gaussians": metrics["num_gaussians"],
            "seconds": seconds, "steps_per_s": rates[-1]["steps_per_s"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=7000)
    parser.add_argument("--scene", type=Path, default=CUP)
    parser.add_argument("--data-factor", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        adc = run(args.scene, Path(tmp) / "adc", args.steps, args.data_factor, ADCStrategy())
        mcmc = run(args.scene, Path(tmp) / "mcmc", args.steps, args.data_factor,
                   MCMCStrategy(cap_max=adc["gaussians"]))
    print(f"\n{args.scene.name} factor {args.data_factor}, {args.steps} steps, CPU; MCMC cap = ADC's final count")
    print(f"{'strategy':10} {'PSNR dB':>8} {'SSIM':>7} {'#Gaussians':>11} {'wall s':>8} {'steps/s':>8}")
    for name, r in (("ADC", adc), ("MCMC", mcmc)):
        print(f"{name:10} {r['psnr']:8.2f} {r['ssim']:7.4f} {r['gaussians']:11,} {r['seconds']:8.1f} "
              f"{r['steps_per_s']:8.1f}")
    print(f"{'MCMC/ADC':10} {mcmc['psnr'] - adc['psnr']:+8.2f} {mcmc['ssim'] - adc['ssim']:+7.4f} "
          f"{mcmc['gaussians'] / adc['gaussians']:11.2f} {mcmc['seconds'] / adc['seconds']:8.2f} "
          f"{mcmc['steps_per_s'] / adc['steps_per_s']:8.2f}")


if __name__ == "__main__":
    main()
