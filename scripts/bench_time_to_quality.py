"""Wall time to a held-out quality on the CPU: the code of git revision REV against this tree, in one run.

For each scene, REV's code trains the default recipe for --steps (7,000) at --data-factor (2); its held-out PSNR
and SSIM at the end are the target. Then this tree trains each row's settings for the same steps, scored on the
held-out views every --every steps, and the row's time to quality is its training time (evaluations left out:
`train_s` in metrics.jsonl) at the first evaluation with PSNR >= target - 0.1 dB and SSIM >= target - 0.002;
its final PSNR/SSIM and total training time are listed too. Rows: the defaults (the kernels' and the step's
speed-ups alone), --visible-adam, and, as schedules rather than speed-ups, --coarse-to-fine and MCMC capped at
REV's final count. Every run is a fresh `splatkit train` process, one after another; finished runs are kept in
--out and not trained again.

One run of REV is one draw: a floater in front of one held-out camera can cost its mean PSNR dB. So REV trains
once per --before-seeds seed (`--seed`: the initial colours' noise, the view order, the split's samples), and the
target is the draws' mean PSNR and SSIM at the mean of their wall times. Each row is also timed to a second
target, this tree's own defaults at their last step (a draw of REV counts as reaching it only if its end is as
good), and the held-out view where REV's first draw falls furthest below the defaults' is named.

Usage: python scripts/bench_time_to_quality.py --before REV [--before-seeds 0 1] [--scenes cup_colmap beer_can_colmap]
       [--rows defaults visible-adam coarse-to-fine mcmc] [--steps 7000] [--data-factor 2] [--every 500]
       [--out runs/bench_ttq]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from bench_runs import revision_tree

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "datasets"
PSNR_SLACK, SSIM_SLACK = 0.1, 0.002
ROWS = ("defaults", "visible-adam", "coarse-to-fine", "mcmc")


def train(tree: Path, scene: Path, run: Path, args: argparse.Namespace, flags: list[str],
          evals: list[int]) -> dict:
    """`splatkit train` from `tree` into `run` (kept once finished): final metrics and the log's lines."""
    if not (run / "metrics.json").is_file():
        command = [sys.executable, "-m", "splatkit", "train", str(scene), "--out", str(run), "--steps",
                   str(args.steps), "--data-factor", str(args.data_factor), "--eval-steps", *map(str, evals),
                   "--checkpoint-every", str(args.steps), *flags]
        shutil.rmtree(run, ignore_errors=True)  # a run cut off before its end trains again from the start
        print(f"training {run.name}: {' '.join(command[3:])}", flush=True)
        subprocess.run(command, env={**os.environ, "PYTHONPATH": str(tree)}, cwd=tree, check=True,
                       stdout=subprocess.DEVNULL)
    metrics = json.loads((run / "metrics.json").read_text())
    log = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {"metrics": metrics, "log": log}


def train_seconds(log: list[dict], steps: int) -> float:
    """Training seconds at the last step: `train_s` where logged, else steps / the logged mean rate (a run with
    no evaluation on the way, as REV's reference is)."""
    last = [line for line in log if "steps_per_s" in line][-1]
    return last["train_s"] if "train_s" in last else steps / last["steps_per_s"]


def time_to(log: list[dict], psnr: float, ssim: float) -> tuple[float, int] | None:
    """(train_s, step) of the first evaluation at or above the target, or None."""
    for line in log:
        if "eval" in line and line["eval"]["psnr"] >= psnr - PSNR_SLACK and line["eval"]["ssim"] >= ssim - SSIM_SLACK:
            return line["train_s"], line["step"]
    return None


def _slug(flags: list[str]) -> str:
    return "_".join(f.strip("-").replace(".", "_").replace(":", "_") for f in flags) or "defaults"


def _reaches(goal: dict, metrics: dict) -> bool:
    return metrics["psnr"] >= goal["psnr"] - PSNR_SLACK and metrics["ssim"] >= goal["ssim"] - SSIM_SLACK


def _time_to(log: list[dict], metrics: dict, goal: dict, steps: int) -> tuple[float, int] | None:
    """(train_s, step) where a run first reaches `goal`: its first such evaluation, else its end if that does."""
    return time_to(log, goal["psnr"], goal["ssim"]) or \
        ((train_seconds(log, steps), steps) if _reaches(goal, metrics) else None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", required=True, help="git revision whose default recipe sets the target")
    parser.add_argument("--before-seeds", nargs="+", type=int, default=[0], help="REV's draws (--seed)")
    parser.add_argument("--scenes", nargs="+", default=["cup_colmap", "beer_can_colmap"])
    parser.add_argument("--rows", nargs="+", choices=ROWS, default=list(ROWS), help="this tree's rows to train")
    parser.add_argument("--steps", type=int, default=7000)
    parser.add_argument("--data-factor", type=int, default=2)
    parser.add_argument("--every", type=int, default=500)
    parser.add_argument("--out", type=Path, default=Path("runs/bench_ttq"))
    args = parser.parse_args()
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    before = revision_tree(args.before, args.out)
    evals = list(range(args.every, args.steps, args.every))
    table = []
    for name in args.scenes:
        scene = SHARED / name
        folder = args.out / f"{name}_f{args.data_factor}_s{args.steps}"
        rev = before.name.removeprefix("tree_")
        draws = [train(before, scene, folder / (f"before_{rev}" + (f"_seed{seed}" if seed else "")), args,
                       ["--seed", str(seed)] if seed else [], []) for seed in args.before_seeds]
        times = [train_seconds(draw["log"], args.steps) for draw in draws]
        base = sum(times) / len(times)
        target = {key: sum(draw["metrics"][key] for draw in draws) / len(draws)
                  for key in ("psnr", "ssim", "num_gaussians")}
        cap = round(target["num_gaussians"])
        rows = {"defaults": ("defaults", []), "visible-adam": ("--visible-adam", ["--visible-adam"]),
                "coarse-to-fine": ("--coarse-to-fine (schedule)", ["--coarse-to-fine"]),
                "mcmc": (f"MCMC, cap {cap:,} (schedule)", ["strategy:mcmc", "--strategy.cap-max", str(cap)])}
        keys = ["defaults"] + [key for key in args.rows if key != "defaults"]  # the defaults set the second target
        results = {label: train(ROOT, scene, folder / _slug(flags), args, flags, evals)
                   for label, flags in (rows[key] for key in keys)}
        own = results["defaults"]["metrics"]  # the second target: this tree's defaults at their last step
        for seed, draw, seconds in zip(args.before_seeds, draws, times):
            table.append({"scene": name, "row": f"{args.before} (before), seed {seed}", "psnr": draw["metrics"]["psnr"],
                          "ssim": draw["metrics"]["ssim"], "gaussians": draw["metrics"]["num_gaussians"],
                          "train_s": seconds, "to_quality_s": None, "to_quality_step": None, "draw": True,
                          "to_own_s": seconds if _reaches(own, draw["metrics"]) else None})
        table.append({"scene": name, "row": f"{args.before} (before), mean of {len(draws)}", "psnr": target["psnr"],
                      "ssim": target["ssim"], "gaussians": cap, "train_s": base, "to_quality_s": base,
                      "to_quality_step": args.steps, "to_own_s": base if _reaches(own, target) else None,
                      "reference": True})
        first = draws[0]["metrics"]
        worst = min(zip(first["views"], own["views"]), key=lambda pair: pair[0]["psnr"] - pair[1]["psnr"])
        table[-1]["worst_view"] = f"{worst[0]['name']} {worst[0]['psnr']:.2f} vs {worst[1]['psnr']:.2f} dB"
        for label, result in results.items():
            metrics, log = result["metrics"], result["log"]
            reached, own_reached = (_time_to(log, metrics, goal, args.steps) for goal in (target, own))
            table.append({"scene": name, "row": label, "psnr": metrics["psnr"], "ssim": metrics["ssim"],
                          "gaussians": metrics["num_gaussians"], "train_s": train_seconds(log, args.steps),
                          "to_quality_s": reached[0] if reached else None,
                          "to_quality_step": reached[1] if reached else None,
                          "to_own_s": own_reached[0] if own_reached else None})
    (args.out / "table.json").write_text(json.dumps(table, indent=2))
    print(f"\nCPU, data factor {args.data_factor}, {args.steps} steps; target: {args.before}'s held-out PSNR - "
          f"{PSNR_SLACK} dB and SSIM - {SSIM_SLACK} at its last step, mean of its draws")
    print(f"{'scene':16} {'row':34} {'PSNR':>6} {'SSIM':>6} {'#G':>9} {'train s':>8} {'to target':>10} "
          f"{'at step':>7} {'share':>6} {'to defaults':>11} {'share':>6}")
    for row in table:
        base = next(r for r in table if r["scene"] == row["scene"] and r.get("reference"))["train_s"]
        hit, own = row["to_quality_s"], row["to_own_s"]
        print(f"{row['scene']:16} {row['row']:34} {row['psnr']:6.2f} {row['ssim']:6.3f} {row['gaussians']:9,} "
              f"{row['train_s']:8.0f} " + (f"{hit:10.0f} {row['to_quality_step']:7} {hit / base:6.0%}"
                                           if hit is not None else f"{'-' if row.get('draw') else 'not met':>10} "
                                           f"{'':7} {'':6}")
              + (f" {own:11.0f} {own / base:6.0%}" if own is not None else f" {'not met':>11} {'':6}"))
    for row in table:
        if "worst_view" in row:
            print(f"{row['scene']}: the held-out view where {args.before}'s first draw falls furthest below this "
                  f"tree's defaults: {row['worst_view']}")


if __name__ == "__main__":
    main()
