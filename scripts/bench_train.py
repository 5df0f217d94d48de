"""Training-step time (render, loss, backward, Adam, the strategy's bookkeeping) before and after, in one run.

Cases on `cup_colmap`: the COLMAP points (9,262 Gaussians) at 200x150, 400x300 and 800x600 (data factors 4, 2,
1), and a trained model (cup at factor 4 after 7,000 steps, ~150k Gaussians; trained once into --out and kept)
at 400x300. Each case runs in a fresh process for the code under test ("after": this tree) and, with --before
REV, for the tree of git revision REV ("before"); --repeats such pairs take turns and the median counts, so both
meet the same machine (this VM's speed drifts by 20% over minutes). A process decodes the photos first, warms
up, times --steps real `Trainer.train_step` calls (ms per step) and profiles a few more for the breakdown:
preprocess (projection + SH, forward and backward), blend forward, blend backward, the loss with its gradient
(timed alone on the case's image size), Adam, and the rest (Python, torch glue, densification bookkeeping,
finite checks). Phases are shares of the profiled steps' wall time scaled to the unprofiled step time (which
takes out the profiler's own overhead). With --torch, the torch reference backend is timed too.

Usage: python scripts/bench_train.py [--before REV] [--steps 30] [--repeats 3] [--factors 4 2 1] [--no-trained]
       [--torch] [--out runs/bench_train]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_runs import revision_tree, trained

ROOT = Path(__file__).resolve().parents[1]
CUP = ROOT.parent / "shared" / "datasets" / "cup_colmap"
PHASES = ("preprocess", "blend fwd", "blend bwd", "loss", "adam", "rest")
# torch.profiler's names for the native autograd functions and the optimiser, by phase.
PROFILED = {"preprocess": ("_Preprocess", "_PreprocessBackward"), "blend fwd": ("_Blend",),
            "blend bwd": ("_BlendBackward",), "adam": ("GaussianModel.step",)}


def worker(case: dict) -> dict:
    """Time one case with the splatkit found on sys.path (this tree's or the `before` revision's)."""
    import torch

    from splatkit.data import ImageStore, load_scene
    from splatkit.train.config import TrainConfig
    from splatkit.train.gaussian_model import GaussianModel
    from splatkit.train.metrics import photometric_loss
    from splatkit.train.trainer import Trainer

    adam_step = GaussianModel.step  # named for the profiler: torch's Adam (before) or one native call (after)

    def named_step(self, *args, **kwargs):
        with torch.profiler.record_function("GaussianModel.step"):
            return adam_step(self, *args, **kwargs)

    tmp = Path(case["tmp"])
    trained = case.get("trained")
    cfg = TrainConfig(scene=str(CUP), out=Path(trained) if trained else tmp / "run", data_factor=case["factor"],
                      backend=case["backend"], steps=30_000, device="cpu", resume=bool(trained))
    scene = load_scene(CUP, data_factor=case["factor"])
    images = ImageStore(scene.cameras, cache_dir=tmp / "cache")
    for i in scene.train_ids:  # decode once: the timing is the optimisation, not JPEG decoding
        images[i]
    trainer = Trainer(cfg, scene, images, cfg.out)
    for _ in range(case["warmup"]):
        trainer.train_step()
    start = time.perf_counter()
    for _ in range(case["steps"]):
        trainer.train_step()
    step_ms = (time.perf_counter() - start) / case["steps"] * 1000
    gaussians = len(trainer.model)
    GaussianModel.step = named_step
    with torch.profiler.profile() as prof:
        start = time.perf_counter()
        for _ in range(case["profiled"]):
            trainer.train_step()
        wall_us = (time.perf_counter() - start) * 1e6
    totals = {e.key: e.cpu_time_total for e in prof.key_averages()}
    shares = {phase: sum(totals.get(n, 0.0) for n in names) / wall_us for phase, names in PROFILED.items()}
    camera = scene.cameras[scene.train_ids[0]]
    render = torch.rand(camera.height, camera.width, 3, requires_grad=True)
    target = torch.rand(camera.height, camera.width, 3)
    fused = getattr(trainer, "fused_loss", False)  # trees before the fused loss have only the torch loss

    def loss_step() -> None:
        args = (render, target, None, cfg.ssim_lambda) + ((fused,) if fused else ())
        loss = photometric_loss(*args)  # (loss, PSNR) since the loss reports PSNR; the loss alone before
        (loss[0] if isinstance(loss, tuple) else loss).backward()

    for _ in range(3):
        loss_step()
    start = time.perf_counter()
    for _ in range(20):
        loss_step()
    loss_ms = (time.perf_counter() - start) / 20 * 1000
    phases = {phase: share * step_ms for phase, share in shares.items()}
    phases["loss"] = loss_ms
    phases["rest"] = step_ms - sum(phases.values())
    trainer.close()
    return {"step_ms": step_ms, "gaussians": gaussians, "size": f"{camera.width}x{camera.height}",
            "threads": torch.get_num_threads(), "phases": phases}


def run_case(tree: Path, case: dict) -> dict:
    """`worker(case)` in a fresh Python process importing splatkit from `tree`."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(case)], env=env, capture_output=True,
                          text=True, cwd=tree)
    if proc.returncode != 0:
        raise SystemExit(f"{tree}: the case {case} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def trained_model(out: Path) -> Path:
    """cup at factor 4 after 7,000 steps (the default recipe), trained once into `out` and kept."""
    from splatkit.train.config import TrainConfig

    run = out / "cup_colmap_f4_s7000"
    trained(TrainConfig(scene=str(CUP), out=run, steps=7000, data_factor=4, eval_steps=(), device="cpu"))
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", help="git revision to compare against (its tree is checked out aside)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--profiled", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3, help="processes per case and code (the median counts)")
    parser.add_argument("--factors", nargs="+", type=int, default=[4, 2, 1])
    parser.add_argument("--no-trained", action="store_true", help="skip the trained-model case")
    parser.add_argument("--torch", action="store_true", help="time the torch reference backend as well")
    parser.add_argument("--out", type=Path, default=Path("runs/bench_train"))
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    args.out.mkdir(parents=True, exist_ok=True)
    cases = [{"label": f"COLMAP points, factor {f}", "factor": f} for f in args.factors]
    if not args.no_trained:
        cases.append({"label": "trained (7k steps), factor 2", "factor": 2,
                      "trained": str(trained_model(args.out.resolve()))})
    with tempfile.TemporaryDirectory() as tmp_dir:
        trees = {"after": ROOT}
        if args.before:
            trees = {"before": revision_tree(args.before, Path(tmp_dir)), **trees}
        backends = ["native"] + (["torch"] * args.torch)
        rows = []
        for case in cases:
            for backend in backends:
                steps = args.steps if backend == "native" else max(3, args.steps // 10)
                spec = {**case, "backend": backend, "steps": steps, "warmup": args.warmup,
                        "profiled": args.profiled, "tmp": tmp_dir}
                runs: dict[str, list[dict]] = {name: [] for name in trees}
                for _ in range(args.repeats):  # before and after take turns, so drifts of the machine hit both
                    for name, tree in trees.items():
                        runs[name].append(run_case(tree, spec))
                for name, results in runs.items():
                    result = sorted(results, key=lambda r: r["step_ms"])[len(results) // 2]  # the median
                    rows.append({"case": case["label"], "backend": backend, "code": name, **result,
                                 "all_ms": [r["step_ms"] for r in results]})
                    print(f"{case['label']:32} {backend:6} {name:6} {result['step_ms']:8.1f} ms/step "
                          f"({result['gaussians']:,} Gaussians, {result['size']}; runs "
                          + ", ".join(f"{r['step_ms']:.1f}" for r in results) + ")", flush=True)
    (args.out / "table.json").write_text(json.dumps(rows, indent=2))
    print(f"\nms per step, CPU ({rows[0]['threads']} threads); phases in ms")
    print(f"{'case':32} {'backend':7} {'code':6} {'#G':>8} {'step':>7} " + " ".join(f"{p:>10}" for p in PHASES)
          + f" {'speed-up':>8}")
    for row in rows:
        before = next((r for r in rows if r["case"] == row["case"] and r["backend"] == row["backend"]
                       and r["code"] == "before"), None)
        ratio = f"{before['step_ms'] / row['step_ms']:7.2f}x" if before and row["code"] == "after" else ""
        print(f"{row['case']:32} {row['backend']:7} {row['code']:6} {row['gaussians']:8,} {row['step_ms']:7.1f} "
              + " ".join(f"{row['phases'][p]:10.1f}" for p in PHASES) + f" {ratio:>8}")


if __name__ == "__main__":
    main()
