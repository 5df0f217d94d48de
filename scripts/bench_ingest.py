"""The ways into splatkit on one real capture, trained alike: COLMAP's own model, `splatkit process` from the
capture's photos, and a feed-forward-style point-map initialisation (VGGT's layout, made from the COLMAP
points with VGGT's crop), exact and with approximate poses, the latter with and without `--pose-opt`.

Per row: held-out PSNR/SSIM (how the held-out poses were set, where refined), final #Gaussians, and wall time
including processing; for the `--pose-opt` row, how far the training poses are from COLMAP's before and after
refinement (median centre error as a share of the rig radius and median rotation error, up to a similarity).
Rows train in this process one after another; finished ones are kept (bench_runs).

Usage: python scripts/bench_ingest.py [--scene cup_colmap] [--steps 7000] [--data-factor 4]
       [--perturb-deg 1] [--perturb-share 0.02] [--out runs/bench_ingest]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from splatkit.atomic import write_text_atomic
from splatkit.data import load_scene
from splatkit.data.colmap import load_colmap
from splatkit.data.pointmap_fixtures import perturbed_poses, projected_pointmaps, write_scene
from splatkit.data.process import ProcessConfig, process
from splatkit.data.scene import rig_radius
from splatkit.data.sfm import pose_errors
from splatkit.train.config import TrainConfig

from bench_runs import trained

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def processed(photos: Path, out: Path) -> tuple[Path, float]:
    """`splatkit process` of `photos` into `out` (kept), and the seconds it took."""
    timing = out.parent / f"{out.name}.seconds"
    if not out.exists():
        start = time.perf_counter()
        process(ProcessConfig(input=photos, out=out))
        write_text_atomic(timing, f"{time.perf_counter() - start}\n")
    return out, float(timing.read_text())


def pointmap_scene(capture: Path, out: Path, degrees: float, share: float) -> Path:
    """VGGT-layout point maps of the capture's COLMAP points (poses perturbed when `degrees` or `share`)."""
    if not out.exists():
        source = load_colmap(capture)
        maps = projected_pointmaps(source.cameras, source.points)
        if degrees or share:
            radius = rig_radius(np.stack([c.center for c in source.cameras]), source.points)
            maps = perturbed_poses(maps, degrees, share * radius)
        write_scene(out, maps, capture / "images", "vggt")
    return out


def refinement(run: Path, scene: Path, capture: Path) -> str:
    """The training poses' error against the capture's COLMAP poses, as loaded from `scene` and as refined."""
    refined = {c["name"]: np.array(c["cam_from_world"]) for c in
               json.loads((run / "cameras.json").read_text())["cameras"] if c["refined"]}
    loaded = {c.name: c.world_to_cam for c in load_scene(scene).cameras if c.name in refined}
    truth = {c.name: c.world_to_cam for c in load_colmap(capture).cameras}
    (p0, r0), (p1, r1) = pose_errors(loaded, truth), pose_errors(refined, truth)
    return (f"pose error of the {len(refined)} refined training cameras: centres {p0:.2%} -> {p1:.2%} of the "
            f"rig radius, rotations {r0:.3f} -> {r1:.3f} deg")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scene", default="cup_colmap")
    parser.add_argument("--steps", type=int, default=7000)
    parser.add_argument("--data-factor", type=int, default=4)
    parser.add_argument("--perturb-deg", type=float, default=1.0)
    parser.add_argument("--perturb-share", type=float, default=0.02)
    parser.add_argument("--out", type=Path, default=Path("runs/bench_ingest"))
    args = parser.parse_args()
    capture = SHARED / args.scene
    runs = args.out / f"{args.scene}_f{args.data_factor}_s{args.steps}"
    runs.mkdir(parents=True, exist_ok=True)
    sfm_scene, sfm_seconds = processed(capture / "images", runs / "scene_process")
    exact = pointmap_scene(capture, runs / "scene_pointmaps", 0.0, 0.0)
    rough = pointmap_scene(capture, runs / "scene_pointmaps_rough", args.perturb_deg, args.perturb_share)
    rough_label = f"point maps, poses off {args.perturb_deg:g} deg / {args.perturb_share:.0%}"
    rows = [("COLMAP model", capture, {}, 0.0), ("splatkit process (SfM)", sfm_scene, {}, sfm_seconds),
            ("point maps, exact poses", exact, {}, 0.0), (rough_label, rough, {}, 0.0),
            (rough_label + " + --pose-opt", rough, {"pose_opt": True}, 0.0)]
    results = []
    for i, (label, scene, extra, before) in enumerate(rows):
        cfg = TrainConfig(scene=str(scene), out=runs / f"run_{i}", steps=args.steps, data_factor=args.data_factor,
                          eval_steps=(), checkpoint_every=args.steps, log_every=100, device="cpu", **extra)
        result = trained(cfg)
        metrics = json.loads((cfg.out / "metrics.json").read_text())
        results.append({"label": label, **{k: result[k] for k in ("psnr", "ssim", "gaussians", "seconds")},
                        "processing": before, "poses": metrics.get("poses", "as loaded"),
                        "refinement": refinement(cfg.out, scene, capture) if extra.get("pose_opt") else ""})
    write_text_atomic(runs / "table.json", json.dumps(results, indent=2))
    print(f"\n{args.scene}, data factor {args.data_factor}, {args.steps} steps, CPU")
    print(f"{'way in':48} {'PSNR':>6} {'SSIM':>6} {'#Gaussians':>11} {'process s':>10} {'train s':>8} {'total s':>8}")
    for r in results:
        print(f"{r['label']:48} {r['psnr']:6.2f} {r['ssim']:6.3f} {r['gaussians']:11,} {r['processing']:10.0f} "
              f"{r['seconds']:8.0f} {r['processing'] + r['seconds']:8.0f}")
    for r in results:
        if r["poses"] != "as loaded":
            print(f"{r['label']}: {r['poses']}")
        if r["refinement"]:
            print(f"{r['label']}: {r['refinement']}")


if __name__ == "__main__":
    main()
