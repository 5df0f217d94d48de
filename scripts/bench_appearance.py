"""Photo models on real captures: plain training vs --exposure vs --appearance (and both), held-out PSNR/SSIM under
both protocols.

For each scene, each row trains --steps (7,000) at --data-factor (4) from the same points and seed, in this
process, one after another (finished runs are kept in --out and not trained again). Each run is scored on its
held-out views twice: the plain protocol (whole photos as they are, what training's last evaluation writes) and
the fit-exposure protocol (`splatkit eval --fit-exposure`: an affine colour transform fitted to each photo's left
half, the right half scored). Printed: the mean table with each row's training time against the plain row's,
then per view, with the views where a photo model changes most first; their side-by-sides are in
<run>/eval/ (plain) and <run>/eval/fit-exposure/ (right halves).

Usage: python scripts/bench_appearance.py [--scenes cup_colmap beer_can_colmap fox] [--rows plain exposure
       appearance both] [--steps 7000] [--data-factor 4] [--out runs/bench_appearance]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench_runs import trained

from splatkit.cli import EvalConfig, run_eval
from splatkit.train.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "datasets"
ROWS = {"plain": ("plain", {}), "exposure": ("--exposure", {"exposure": True}),
        "appearance": ("--appearance", {"appearance": True}),
        "both": ("--exposure --appearance", {"exposure": True, "appearance": True})}


def fitted_scores(run: Path) -> dict:
    """The run's held-out scores under the fit-exposure protocol (kept in its eval folder once computed)."""
    kept = run / "eval" / "fit-exposure" / "metrics.json"
    return json.loads(kept.read_text()) if kept.is_file() else run_eval(EvalConfig(run=run, fit_exposure=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenes", nargs="+", default=["cup_colmap", "beer_can_colmap", "fox"])
    parser.add_argument("--steps", type=int, default=7000)
    parser.add_argument("--rows", nargs="+", choices=ROWS, default=list(ROWS), help="rows to train besides plain")
    parser.add_argument("--data-factor", type=int, default=4)
    parser.add_argument("--out", type=Path, default=Path("runs/bench_appearance"))
    args = parser.parse_args()
    table, per_view = [], []
    for name in args.scenes:
        folder = args.out.resolve() / f"{name}_f{args.data_factor}_s{args.steps}"
        runs = {}
        for key in ["plain"] + [k for k in args.rows if k != "plain"]:
            label, flags = ROWS[key]
            run = folder / key
            cfg = TrainConfig(scene=str(SHARED / name), out=run, steps=args.steps, data_factor=args.data_factor,
                              eval_steps=(), checkpoint_every=args.steps, **flags)
            result = trained(cfg)
            fit = fitted_scores(run)
            seconds = [line for line in result["log"] if "train_s" in line][-1]["train_s"]
            runs[label] = (result, fit)
            table.append({"scene": name, "row": label, "psnr": result["psnr"], "ssim": result["ssim"],
                          "fit_psnr": fit["mean"]["psnr"], "fit_ssim": fit["mean"]["ssim"],
                          "gaussians": result["gaussians"], "train_s": seconds})
        for view in runs["plain"][1]["views"]:  # each row's plain and fit PSNR of the view
            scores = {label: (result["views"][view["name"]], next(v["psnr"] for v in fit["views"]
                                                                  if v["name"] == view["name"]))
                      for label, (result, fit) in runs.items()}
            per_view.append({"scene": name, "view": view["name"], "psnr": scores})
    (args.out / "table.json").write_text(json.dumps({"mean": table, "views": per_view}, indent=2))
    print(f"\nheld-out PSNR/SSIM, data factor {args.data_factor}, {args.steps} steps; protocols: plain (whole photo) "
          "and fit (right half through an exposure fitted on the left half)")
    print(f"{'scene':16} {'row':24} {'plain PSNR':>10} {'SSIM':>6} {'fit PSNR':>9} {'SSIM':>6} {'#G':>9} "
          f"{'train s':>8} {'x plain':>7}")
    for row in table:
        base = next(r for r in table if r["scene"] == row["scene"])["train_s"]
        print(f"{row['scene']:16} {row['row']:24} {row['psnr']:10.2f} {row['ssim']:6.3f} {row['fit_psnr']:9.2f} "
              f"{row['fit_ssim']:6.3f} {row['gaussians']:9,} {row['train_s']:8.0f} {row['train_s'] / base:7.2f}")
    print("\nper held-out view, PSNR as plain / fit (largest change of a photo model under the fit protocol first)")
    for row in sorted(per_view, key=lambda r: -max(abs(fit - r["psnr"]["plain"][1]) for _, fit in r["psnr"].values())):
        print(f"{row['scene']:16} {row['view']:12} " + "  ".join(f"{label} {plain:.2f} / {fit:.2f}"
                                                               for label, (plain, fit) in row["psnr"].items()))


if __name__ == "__main__":
    main()
