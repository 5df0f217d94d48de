"""Training on a CUDA device (skipped where torch sees none): 200 steps with every strategy and CUDA backend,
everything on the GPU, the model improving, and a resume that continues from its checkpoint. (CUDA backward
passes sum with atomics, so a GPU run is not bitwise reproducible as a CPU run is: the resume is checked by its
result, not bit for bit.)"""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
import torch

from splatkit.data import ImageStore, load_scene
from splatkit.model.gaussians import init_from_points
from splatkit.render import resolve_backend
from splatkit.train import checkpoint
from splatkit.train.config import TrainConfig
from splatkit.train.evaluate import evaluate
from splatkit.train.strategies import ADCStrategy, MCMCStrategy
from splatkit.train.trainer import train
from splatkit.errors import SplatkitError

pytestmark = [pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (torch sees none)"),
              pytest.mark.xdist_group("cuda")]

STRATEGIES = {"adc": ADCStrategy(refine_start=50, refine_every=50, reset_every=150),
              "mcmc": MCMCStrategy(refine_start=50, refine_every=50, cap_max=6000)}


def _cuda_backends() -> list[str]:
    names = []
    for name in ("native", "gsplat"):
        try:
            names.append(resolve_backend(name, "cuda"))
        except SplatkitError:
            pass
    return names


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
@pytest.mark.parametrize("backend", ["native", "gsplat"])
def test_200_cuda_steps_improve_and_resume(tiny_scene, tmp_path, strategy, backend):
    if backend not in _cuda_backends():
        pytest.skip(f"the {backend} backend cannot run on CUDA here")
    scene = load_scene(tiny_scene)
    start = init_from_points(scene.points, scene.colors).to("cuda")
    initial = evaluate(start, scene, ImageStore(scene.cameras), scene.test_ids, backend=backend)["mean"]["psnr"]
    cfg = TrainConfig(scene=str(tiny_scene), out=tmp_path / "full", steps=200, checkpoint_every=100,
                      eval_steps=(), device="cuda", backend=backend, strategy=STRATEGIES[strategy])
    final = train(cfg, show_progress=False)
    assert final["psnr"] > initial + 3.0, (initial, final["psnr"])
    saved = checkpoint.load_checkpoint(tmp_path / "full" / "checkpoints" / "step_0000200.pt")
    assert all(torch.isfinite(v).all() for v in saved["params"].values())
    assert saved["params"]["means"].shape[0] != start.means.shape[0]  # the strategy edited the set on the GPU
    shutil.copytree(tmp_path / "full", tmp_path / "killed")  # killed after its step-100 checkpoint
    (tmp_path / "killed" / "checkpoints" / "step_0000200.pt").unlink()
    resumed = train(dataclasses.replace(cfg, out=tmp_path / "killed", resume=True), show_progress=False)
    assert json.loads((tmp_path / "killed" / "metrics.json").read_text())["step"] == 200
    assert resumed["psnr"] > initial + 3.0
