"""Shared by the photo-model tests (exposure, appearance): a short densifying run of the tiny scene, that a frozen
photo model changes no bit of the Gaussians, that a killed run resumes bitwise, and given photos in place of an
image store for `evaluate`."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch

from splatkit.train import checkpoint
from splatkit.train.config import TrainConfig
from splatkit.train.strategies import ADCStrategy
from splatkit.train.trainer import train

LAST = Path("checkpoints") / "step_0000040.pt"


def short_run(scene: Path, out: Path, **flags) -> TrainConfig:
    """40 native steps with ADC densifying every 10 from step 5, a checkpoint at 20 and 40, every 5th view held out."""
    return TrainConfig(scene=str(scene), out=out, steps=40, checkpoint_every=20, eval_steps=(), backend="native",
                       strategy=ADCStrategy(refine_start=5, refine_every=10, reset_every=25), log_every=10,
                       test_every=5, **flags)


def frozen_params_beside_plain(scene: Path, tmp_path: Path, **frozen_flags) -> dict[str, torch.Tensor]:
    """Train the short run plainly and with `frozen_flags`; assert every parameter of the plain run is bitwise the
    same in the other, and return the other's own parameters (those the plain run lacks)."""
    train(short_run(scene, tmp_path / "plain"), show_progress=False)
    train(short_run(scene, tmp_path / "frozen", **frozen_flags), show_progress=False)
    plain = checkpoint.load_checkpoint(tmp_path / "plain" / LAST)["params"]
    frozen = checkpoint.load_checkpoint(tmp_path / "frozen" / LAST)["params"]
    for name in plain:
        assert torch.equal(plain[name], frozen[name]), name
    return {name: value for name, value in frozen.items() if name not in plain}


def assert_resumes_bitwise(scene: Path, tmp_path: Path, **flags) -> Path:
    """Train the short run with `flags` into tmp_path/full; delete a copy's last checkpoint (a run killed after
    step 20), resume it, and assert every parameter matches. Returns the full run's folder."""
    train(short_run(scene, tmp_path / "full", **flags), show_progress=False)
    shutil.copytree(tmp_path / "full", tmp_path / "killed")
    (tmp_path / "killed" / LAST).unlink()
    train(short_run(scene, tmp_path / "killed", resume=True, **flags), show_progress=False)
    full = checkpoint.load_checkpoint(tmp_path / "full" / LAST)["params"]
    resumed = checkpoint.load_checkpoint(tmp_path / "killed" / LAST)["params"]
    for name in full:
        assert torch.equal(full[name], resumed[name]), name
    return tmp_path / "full"


class Photos:
    """An image store's two calls that `evaluate` makes, over given photos (H, W, 3) float32 by camera index."""

    def __init__(self, photos: dict[int, np.ndarray]) -> None:
        self.photos = photos

    def __getitem__(self, index: int) -> np.ndarray:
        return self.photos[index]

    def mask(self, index: int) -> None:
        return None


def with_a_half_inverted(photos: dict[int, np.ndarray]) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray]]:
    """The photos with their right half inverted (1 - value), and with their left half inverted: what the
    left/right protocol must and must not be blind to. The halves split at column W // 2, as `evaluate` does."""
    right, left = {}, {}
    for i, photo in photos.items():
        half = photo.shape[1] // 2
        right[i], left[i] = photo.copy(), photo.copy()
        right[i][:, half:] = 1 - right[i][:, half:]
        left[i][:, :half] = 1 - left[i][:, :half]
    return right, left
