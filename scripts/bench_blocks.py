"""Block partition and merge against one run: held-out PSNR of the merged blocks, and what the seams cost.

Rows, each trained afresh (or read from a kept run, see bench_runs):
  one run, S steps                                  (the reference)
  2 blocks x S/2 steps each, merged                 (the same total steps)
  2 blocks x S steps each, merged                   (the same wall time, with one machine per block)
The merged models are scored on the single run's held-out views (`splatkit eval --model`), per view. Views that
more than one block trained with (they look across a seam) are reported apart from views only one block holds, so a
seam shows as a gap there. Each block's own held-out PSNR (its model before the merge, on its own views) is
listed too.

Scenes: `demo-walk` (the demo room filmed by a loop of cameras along its walls, each seeing a local stretch: a
capture with spatial extent, like a street) and the real captures in ../shared/datasets (`cup_colmap` is
object-centric: every camera sees both halves, so blocks cannot shrink its views; it shows the worst case).

Usage: python scripts/bench_blocks.py [--scene demo-walk] [--steps 6000] [--data-factor 1]
       [--blocks 2x1] [--out runs/bench_blocks]
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

from bench_runs import trained

from splatkit.atomic import write_text_atomic
from splatkit.cli import EvalConfig, MergeConfig, PartitionConfig, run_eval, run_merge, run_partition
from splatkit.data.blocks import read_block
from splatkit.data.demo_scene import generate_demo_scene
from splatkit.io.ply import load_ply
from splatkit.train.config import TrainConfig

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def scene_path(name: str, out: Path) -> Path:
    if name != "demo-walk":
        return SHARED / name
    folder = out / "demo_walk_scene"
    return folder if folder.is_dir() else generate_demo_scene(folder, layout="walk")


def train_config(scene: Path, out: Path, steps: int, factor: int) -> TrainConfig:
    return TrainConfig(scene=str(scene), out=out, steps=steps, data_factor=factor, eval_steps=(),
                       checkpoint_every=steps, log_every=100, device="cpu")


def merged_row(label: str, blocks: list[Path], runs: Path, single: Path, steps: int, factor: int) -> dict:
    """Train every block for `steps`, merge them, and score the merged model on the single run's held-out views."""
    results = [trained(train_config(b, runs / b.name, steps, factor)) for b in blocks]
    merged = run_merge(MergeConfig(runs=tuple(runs / b.name for b in blocks), out=runs / f"merged_{runs.name}.ply"))
    scored = run_eval(EvalConfig(run=single, model=merged))
    return {"label": label, "views": {v["name"]: v["psnr"] for v in scored["views"]},
            "psnr": scored["mean"]["psnr"], "ssim": scored["mean"]["ssim"],
            "gaussians": len(load_ply(merged)),
            "seconds": sum(r["seconds"] for r in results), "longest": max(r["seconds"] for r in results),
            "blocks": [(b.name, r["psnr"], r["gaussians"]) for b, r in zip(blocks, results)]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scene", default="demo-walk")
    parser.add_argument("--steps", type=int, default=6000)
    parser.add_argument("--data-factor", type=int, default=1)
    parser.add_argument("--blocks", default="2x1")
    parser.add_argument("--out", type=Path, default=Path("runs/bench_blocks"))
    args = parser.parse_args()
    out = args.out / f"{args.scene}_f{args.data_factor}_s{args.steps}_{args.blocks}"
    out.mkdir(parents=True, exist_ok=True)
    scene = scene_path(args.scene, args.out)
    single = out / "single"
    reference = trained(train_config(scene, single, args.steps, args.data_factor))
    blocks = run_partition(PartitionConfig(scene=scene, out=out / "blocks", blocks=args.blocks))
    count = len(blocks)
    rows = [{"label": f"one run, {args.steps} steps", **reference, "longest": reference["seconds"], "blocks": []}]
    rows.append(merged_row(f"{count} blocks x {args.steps // count} steps, merged", blocks, out / "half",
                           single, args.steps // count, args.data_factor))
    rows.append(merged_row(f"{count} blocks x {args.steps} steps, merged", blocks, out / "full", single,
                           args.steps, args.data_factor))
    holders = Counter(name for b in blocks for name in read_block(b).cameras)
    seam = {name for name in reference["views"] if holders[name] > 1}  # views more than one block trains with
    one = set(reference["views"]) - seam
    write_text_atomic(out / "table.json", json.dumps(rows, indent=2))

    def mean(row: dict, names: set[str]) -> float:
        return sum(row["views"][n] for n in names) / len(names) if names else float("nan")

    print(f"\n{args.scene}, data factor {args.data_factor}, {args.blocks} blocks, CPU; held-out views: "
          f"{len(reference['views'])} ({len(seam)} held by more than one block, {len(one)} by one)")
    print(f"{'model':36} {'PSNR':>6} {'SSIM':>6} {'seam views':>10} {'one-block':>9} {'#Gaussians':>11} "
          f"{'train s':>8} {'longest':>8}")
    for r in rows:
        print(f"{r['label']:36} {r['psnr']:6.2f} {r['ssim']:6.3f} {mean(r, seam):10.2f} {mean(r, one):9.2f} "
              f"{r['gaussians']:11,} {r['seconds']:8.0f} {r['longest']:8.0f}")
    for r in rows:
        for name, psnr, gaussians in r["blocks"]:
            print(f"  {r['label']}: {name} alone on its own held-out views {psnr:.2f} dB, {gaussians:,} Gaussians")


if __name__ == "__main__":
    main()
