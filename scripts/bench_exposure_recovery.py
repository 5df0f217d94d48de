"""How well --exposure recovers a known exposure change of every photo of a real capture.

cup_colmap's 200x150 photos (images_4) are copied under --out twice, as PNG: as they are, and each under a known
gain (0.65-0.95) and offset (0-0.04) per channel, drawn per photo from a seeded generator. `splatkit train
--exposure` trains both at data factor 4 for --steps. The photos already differ in their own auto-exposure, which
the first run learns; the known change is what the second run learns on top of it. With the model under the mean
change (the transforms' gauge), photo i's colours p map through the first run's transform T_i to model colours
m = T_i^-1(p); the second run should map the mean-changed model colours g_mean m + o_mean through its transform
to the changed photo g_i p + o_i. Printed: that error on each photo's own pixels, per channel, as the mean absolute
error over the mean value (median, 90th percentile and worst over the training photos), the worst photos, and the
share of photos within 2% in every channel. Finished runs are kept in --out.

Usage: python scripts/bench_exposure_recovery.py [--steps 4000] [--out runs/bench_exposure_recovery]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bench_runs import trained

from splatkit.train.config import TrainConfig
from splatkit.train.exposure import exposure_transforms
from splatkit.train.run_record import read_run

ROOT = Path(__file__).resolve().parents[1]
CUP = ROOT.parent / "shared" / "datasets" / "cup_colmap"


def photo(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.float64) / 255


def scene_copy(out: Path, changes: dict[str, tuple[np.ndarray, np.ndarray]] | None) -> Path:
    """cup_colmap with its images_4 photos rewritten losslessly, each under its (gain, offset) if given."""
    folder = out / ("changed" if changes else "original")
    if not (folder / "done").exists():
        (folder / "images_4").mkdir(parents=True, exist_ok=True)
        for name in ("sparse", "images"):
            if not (folder / name).exists():
                os.symlink(CUP / name, folder / name)
        for path in sorted((CUP / "images_4").iterdir()):
            values = photo(path)
            if changes:
                gain, offset = changes[path.name]
                values = values * gain + offset
            pixels = np.clip(np.round(values * 255), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / "images_4" / path.name, format="PNG")  # the name's .jpg kept
        (folder / "done").touch()
    return folder


def learnt_transforms(run: Path) -> tuple[list[int], list[str], torch.Tensor]:
    record = read_run(run)
    scene = record.load_scene()
    model = record.last_checkpoint_model()
    with torch.no_grad():
        transforms = exposure_transforms(model, torch.tensor(scene.train_ids)).double()
    return scene.train_ids, [camera.name for camera in scene.cameras], transforms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--out", type=Path, default=Path("runs/bench_exposure_recovery"))
    args = parser.parse_args()
    out = args.out.resolve()
    generator = np.random.default_rng(0)
    names = sorted(path.name for path in (CUP / "images_4").iterdir())
    changes = {name: (generator.uniform(0.65, 0.95, 3), generator.uniform(0.0, 0.04, 3)) for name in names}
    runs = {}
    for kind, change in (("original", None), ("changed", changes)):
        run = out / f"run_{kind}_s{args.steps}"
        trained(TrainConfig(scene=str(scene_copy(out, change)), out=run, steps=args.steps, data_factor=4,
                            eval_steps=(), checkpoint_every=args.steps, exposure=True))
        runs[kind] = learnt_transforms(run)
    ids, cameras, original = runs["original"]
    changed = runs["changed"][2]
    gains = np.array([changes[cameras[i]][0] for i in ids])
    offsets = np.array([changes[cameras[i]][1] for i in ids])
    mean_gain, mean_offset = gains.mean(axis=0), offsets.mean(axis=0)
    errors = []
    for k, i in enumerate(ids):
        pixels = photo(CUP / "images_4" / cameras[i]).reshape(-1, 3)
        a, b = original[i, :, :3].numpy(), original[i, :, 3].numpy()
        model = np.linalg.solve(a, (pixels - b).T).T  # the model's colours as the first run saw this photo
        learnt = (model * mean_gain + mean_offset) @ changed[i, :, :3].numpy().T + changed[i, :, 3].numpy()
        truth = pixels * gains[k] + offsets[k]
        errors.append(np.abs(learnt - truth).mean(axis=0) / truth.mean(axis=0))
    errors = np.array(errors)
    print(f"\ncup_colmap, data factor 4, {args.steps} steps, {len(ids)} training photos: error of the learnt change "
          "on each photo's pixels (mean absolute / mean), per channel R, G, B")
    for label, values in (("median", np.median(errors, axis=0)), ("90th percentile", np.quantile(errors, 0.9, axis=0)),
                          ("worst", errors.max(axis=0))):
        print(f"{label:16} " + " ".join(f"{v:6.2%}" for v in values))
    print(f"photos within 2% in every channel: {(errors.max(axis=1) < 0.02).mean():.0%}")
    worst = np.argsort(-errors.max(axis=1))[:5]
    print("worst photos: " + ", ".join(f"{cameras[ids[k]]} ({errors[k].max():.1%})" for k in worst))


if __name__ == "__main__":
    main()
