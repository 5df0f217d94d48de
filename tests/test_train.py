"""Training end to end on a tiny generated scene: outputs, resume, divergence handling, CLI."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from splatkit.cli import main
from splatkit.errors import SplatkitError
from splatkit.io.ply import load_ply
from splatkit.data.colmap import load_colmap
from splatkit.train import checkpoint
from splatkit.train.config import TrainConfig
from splatkit.train.strategies import ADCStrategy
from splatkit.train.trainer import train

pytestmark = pytest.mark.xdist_group("tiny_scene")


def _config(scene: Path, out: Path, **overrides) -> TrainConfig:
    # Refinement, opacity reset and an SH band switch all happen inside 40 steps.
    strategy = ADCStrategy(refine_start=5, refine_every=10, reset_every=25, grow_grad2d=2e-5)
    base = TrainConfig(scene=str(scene), out=out, steps=40, checkpoint_every=20, sh_degree_interval=15,
                       eval_steps=(), backend="torch", strategy=strategy, log_every=10)
    return dataclasses.replace(base, **overrides)


def test_run_folder_contents_and_original_frame(tiny_scene, tmp_path):
    metrics = train(_config(tiny_scene, tmp_path / "run"), show_progress=False)
    run = tmp_path / "run"
    for name in ("config.json", "metrics.jsonl", "metrics.json", "point_cloud.ply", "cameras.json"):
        assert (run / name).is_file(), name
    cameras = json.loads((run / "cameras.json").read_text())["cameras"]  # as loaded, in COLMAP's frame
    loaded = load_colmap(tiny_scene).cameras
    assert [c["name"] for c in cameras] == [c.name for c in loaded] and not any(c["refined"] for c in cameras)
    for entry, camera in zip(cameras, loaded):
        np.testing.assert_allclose(entry["cam_from_world"], camera.world_to_cam, atol=1e-9)
    assert [p.name for p in checkpoint.list_checkpoints(run / "checkpoints")] == ["step_0000020.pt",
                                                                                  "step_0000040.pt"]
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["psnr"] == pytest.approx(metrics["psnr"]) and len(saved["views"]) == 2  # cameras 0 and 8
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [10, 20, 30, 40]
    # The exported model is in the scene's original (COLMAP) frame: map the final checkpoint back by hand.
    record = json.loads((run / "config.json").read_text())
    scale, center = record["to_normalized"]["scale"], np.array(record["to_normalized"]["center"])
    params = checkpoint.load_checkpoint(checkpoint.list_checkpoints(run / "checkpoints")[-1])["params"]
    model = load_ply(run / "point_cloud.ply")
    np.testing.assert_allclose(model.means.numpy(), params["means"].numpy() / scale + center, atol=1e-5)
    np.testing.assert_allclose(model.scales.numpy(), params["scales"].numpy() - np.log(scale), atol=1e-5)


@pytest.mark.parametrize("backend", ["torch", "native"])
def test_resume_matches_uninterrupted_run(tiny_scene, tmp_path, backend):
    train(_config(tiny_scene, tmp_path / "full", backend=backend), show_progress=False)
    # A run killed after its step-20 checkpoint: same folder, later checkpoint and outputs gone.
    shutil.copytree(tmp_path / "full", tmp_path / "killed")
    (tmp_path / "killed" / "checkpoints" / "step_0000040.pt").unlink()
    (tmp_path / "killed" / "point_cloud.ply").unlink()
    train(_config(tiny_scene, tmp_path / "killed", resume=True, backend=backend), show_progress=False)
    full = checkpoint.load_checkpoint(tmp_path / "full" / "checkpoints" / "step_0000040.pt")
    resumed = checkpoint.load_checkpoint(tmp_path / "killed" / "checkpoints" / "step_0000040.pt")
    assert full["params"]["means"].shape[0] != 0
    for name, value in full["params"].items():
        assert torch.equal(value, resumed["params"][name]), name
    for name, state in full["optimizers"].items():
        assert torch.equal(state["state"][0]["exp_avg"], resumed["optimizers"][name]["state"][0]["exp_avg"])


def test_existing_run_needs_resume_and_resume_needs_a_run(tiny_scene, tmp_path):
    train(_config(tiny_scene, tmp_path / "run", steps=20), show_progress=False)
    with pytest.raises(SplatkitError, match="--resume"):
        train(_config(tiny_scene, tmp_path / "run", steps=20), show_progress=False)
    with pytest.raises(SplatkitError, match="nothing to resume"):
        train(_config(tiny_scene, tmp_path / "empty", resume=True), show_progress=False)


def test_non_finite_loss_stops_with_message_and_keeps_last_checkpoint(tiny_scene, tmp_path, monkeypatch):
    from splatkit.train import trainer as trainer_module

    real_rasterize = trainer_module.rasterize
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        out = real_rasterize(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] > 25:  # after the step-20 checkpoint
            out.rgb = out.rgb * float("nan")
        return out

    monkeypatch.setattr(trainer_module, "rasterize", poisoned)
    with pytest.raises(SplatkitError) as info:
        train(_config(tiny_scene, tmp_path / "run"), show_progress=False)
    message = str(info.value)
    assert "step 25" in message and "non-finite loss" in message and "step_0000020.pt" in message
    kept = checkpoint.load_checkpoint(tmp_path / "run" / "checkpoints" / "step_0000020.pt")
    assert all(torch.isfinite(v).all() for v in kept["params"].values())


def test_cli_train_eval_render(tiny_scene, tmp_path, capsys):
    run = tmp_path / "run"
    code = main(["train", str(tiny_scene), "--out", str(run), "--steps", "10", "--backend", "torch",
                 "--checkpoint-every", "5"])
    assert code == 0
    assert main(["eval", str(run), "--backend", "torch"]) == 0
    result = json.loads((run / "eval" / "metrics.json").read_text())
    assert [v["name"] for v in result["views"]] == ["000.png", "008.png"]
    assert len(list((run / "eval").glob("*.png"))) == 2
    assert main(["render", str(run), "--split", "all", "--out", str(tmp_path / "renders"),
                 "--backend", "torch"]) == 0
    assert len(list((tmp_path / "renders").glob("*.png"))) == 10


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["train", str(tmp_path / "nope"), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nope" in err and "not found" in err
    assert main(["eval", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "not a splatkit run folder" in err and "Traceback" not in err


def test_sigterm_stops_between_steps_and_resume_finishes(tiny_scene, tmp_path):
    """A killed run (SIGTERM) keeps its finished steps in a checkpoint and --resume completes it."""
    import signal
    import subprocess
    import sys
    import time

    run = tmp_path / "run"
    args = [sys.executable, "-m", "splatkit.cli", "train", str(tiny_scene), "--out", str(run), "--steps", "60",
            "--backend", "torch", "--checkpoint-every", "1000", "--log-every", "1"]
    proc = subprocess.Popen(args, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (run / "metrics.jsonl").is_file():
        time.sleep(0.2)
    while time.time() < deadline and len((run / "metrics.jsonl").read_text().splitlines()) < 3:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, err
    assert "continue with" in err and "--resume" in err
    saved = checkpoint.list_checkpoints(run / "checkpoints")
    assert len(saved) == 1 and 3 <= checkpoint.load_checkpoint(saved[0])["step"] < 60
    assert main(["train", str(tiny_scene), "--out", str(run), "--resume"]) == 0
    assert json.loads((run / "metrics.json").read_text())["step"] == 60


def test_image_cache_folder_is_stable_across_processes(tmp_path):
    """Downsampled images are cached beside the run; the folder name must not change from run to run."""
    import subprocess
    import sys

    code = ("from pathlib import Path; from splatkit.train.trainer import image_cache_dir; "
            f"print(image_cache_dir(Path({str(tmp_path / 'run')!r}), Path({str(tmp_path)!r})))")
    names = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
             for _ in range(2)}
    assert len(names) == 1


def test_render_and_eval_read_the_runs_split(tiny_scene, tmp_path):
    """`render --split test` and `eval` hold out what training held out (every 3rd of 10 views: 0, 3, 6, 9)."""
    run = tmp_path / "run"
    assert main(["train", str(tiny_scene), "--out", str(run), "--steps", "2", "--backend", "native",
                 "--test-every", "3", "--eval-steps"]) == 0
    assert main(["render", str(run), "--split", "test", "--out", str(tmp_path / "renders")]) == 0
    assert sorted(p.name for p in (tmp_path / "renders").glob("*.png")) == ["000.png", "003.png", "006.png",
                                                                            "009.png"]
    assert main(["eval", str(run)]) == 0
    assert len(json.loads((run / "eval" / "metrics.json").read_text())["views"]) == 4
