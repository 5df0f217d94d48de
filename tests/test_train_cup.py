"""A real capture trains: cup_colmap at a quarter resolution, a few hundred steps on the default (native) backend
(the torch reference trains the tiny scenes of test_train.py; test_native.py holds the two to each other)."""

from __future__ import annotations

import json

import pytest

from splatkit.data import ImageStore, load_scene
from splatkit.model.gaussians import init_from_points
from splatkit.train.config import TrainConfig
from splatkit.train.evaluate import evaluate
from splatkit.train.trainer import train

STEPS = 300


@pytest.mark.slow
def test_cup_heldout_psnr_rises_well_above_initial(shared_datasets, tmp_path):
    cup = shared_datasets / "cup_colmap"
    scene = load_scene(cup, data_factor=4)
    images = ImageStore(scene.cameras, cache_dir=None)
    start = init_from_points(scene.points, scene.colors)
    initial = evaluate(start, scene, images, scene.test_ids)["mean"]["psnr"]

    cfg = TrainConfig(scene=str(cup), out=tmp_path / "cup", steps=STEPS, data_factor=4,
                      eval_steps=(), checkpoint_every=STEPS)
    final = train(cfg, show_progress=False)
    saved = json.loads((tmp_path / "cup" / "metrics.json").read_text())
    print(f"cup factor 4: held-out PSNR {initial:.2f} -> {final['psnr']:.2f} dB after {STEPS} steps")
    assert saved["psnr"] == pytest.approx(final["psnr"])
    assert len(saved["views"]) == len(scene.test_ids) == 10
    assert final["psnr"] > initial + 4.0
