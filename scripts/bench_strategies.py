"""Strategies compared on real captures: ADC, LPM(ADC), MCMC and LPM(MCMC), trained in one process on one machine.

For each scene: held-out PSNR/SSIM, final #Gaussians, wall time, LPM's share of the wall time (error maps,
zones, resets; matching is reported apart), zones found, and the per-view PSNR change LPM brings over its base
(mean, min, max), so a gain concentrated in a few views shows. MCMC (and LPM over it) is capped at ADC's final
count, so every pair compares equal budgets.

Each finished run's figures are kept in `--out` (default runs/bench_strategies/<scene>_f<factor>_s<steps>/) and
reused when the script is run again (bench_runs.py), so a benchmark longer than one sitting can be finished in
several.

Usage: python scripts/bench_strategies.py [--steps 7000 | --full] [--data-factor 4]
       [--scenes cup_colmap beer_can_colmap fox] [--out runs/bench_strategies]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from splatkit.train.config import TrainConfig
from splatkit.train.strategies import ADCStrategy, LPMStrategy, MCMCStrategy

from bench_runs import trained

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def run(scene: Path, out: Path, steps: int, factor: int, strategy) -> dict:
    """One training run (kept in `out`, see bench_runs) and LPM's figures summed over its log."""
    result = trained(TrainConfig(scene=str(scene), out=out, steps=steps, data_factor=factor, strategy=strategy,
                                 eval_steps=(), checkpoint_every=steps, log_every=100, device="cpu"))
    log = result["log"]
    return {**result, "lpm_seconds": sum(line.get("lpm_seconds", 0.0) for line in log),
            "matching_s": max((line.get("lpm_matching_s", 0.0) for line in log), default=0.0),  # repeated per line
            "zones": int(sum(line.get("lpm_zones", 0.0) for line in log)),
            "reset": int(sum(line.get("lpm_reset", 0.0) for line in log))}


def bench_scene(scene: Path, steps: int, factor: int, runs: Path) -> dict[str, dict]:
    """Each strategy with its defaults (the papers' schedules: densification and LPM resets until step 15,000)."""
    results = {"ADC": run(scene, runs / "adc", steps, factor, ADCStrategy())}
    results["LPM(ADC)"] = run(scene, runs / "lpm_adc", steps, factor, LPMStrategy(base=ADCStrategy()))
    mcmc = MCMCStrategy(cap_max=results["ADC"]["gaussians"])
    results["MCMC"] = run(scene, runs / "mcmc", steps, factor, mcmc)
    results["LPM(MCMC)"] = run(scene, runs / "lpm_mcmc", steps, factor, LPMStrategy(base=mcmc))
    return results


def print_table(name: str, factor: int, steps: int, results: dict[str, dict]) -> None:
    print(f"\n{name}, data factor {factor}, {steps} steps, CPU (MCMC capped at ADC's final count)")
    print(f"{'strategy':10} {'PSNR dB':>8} {'SSIM':>7} {'#Gaussians':>11} {'wall s':>8} {'LPM share':>9} "
          f"{'zones':>6} {'reset':>8} {'match s':>8}")
    for label, r in results.items():
        share = f"{r['lpm_seconds'] / r['seconds']:9.2%}" if label.startswith("LPM") else f"{'':9}"
        print(f"{label:10} {r['psnr']:8.2f} {r['ssim']:7.4f} {r['gaussians']:11,} {r['seconds']:8.1f} {share} "
              f"{r['zones']:6} {r['reset']:8,} {r['matching_s']:8.1f}")
    for base in ("ADC", "MCMC"):
        lpm, ref = results[f"LPM({base})"], results[base]
        delta = np.array([lpm["views"][v] - ref["views"][v] for v in ref["views"]])
        print(f"LPM({base}) - {base}: mean PSNR {lpm['psnr'] - ref['psnr']:+.2f} dB; per view {delta.mean():+.2f} "
              f"(min {delta.min():+.2f}, max {delta.max():+.2f}) over {len(delta)} held-out views; SSIM "
              f"{lpm['ssim'] - ref['ssim']:+.4f}; wall x{lpm['seconds'] / ref['seconds']:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=7000)
    parser.add_argument("--full", action="store_true", help="30,000 steps (the papers' schedule)")
    parser.add_argument("--data-factor", type=int, default=4)
    parser.add_argument("--scenes", nargs="+", default=["cup_colmap", "beer_can_colmap", "fox"])
    parser.add_argument("--out", type=Path, default=Path("runs/bench_strategies"))
    args = parser.parse_args()
    steps = 30_000 if args.full else args.steps
    for name in args.scenes:
        runs = args.out / f"{name}_f{args.data_factor}_s{steps}"
        results = bench_scene(SHARED / name, steps, args.data_factor, runs)
        print_table(name, args.data_factor, steps, results)


if __name__ == "__main__":
    main()
