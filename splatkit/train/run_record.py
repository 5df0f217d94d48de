"""The one reader of a run folder (`config.json`, written by `train.prepare`, and its checkpoints) for every
command that opens a run (train --resume, eval, render, export, view), with one set of one-line errors."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from splatkit.config_json import from_json
from splatkit.data import load_scene
from splatkit.data.scene import Scene, Similarity
from splatkit.errors import file_error
from splatkit.model.gaussians import Gaussians
from splatkit.model.quantized import QuantizedGaussians
from splatkit.model.sh import num_sh_bases
from splatkit.train import checkpoint
from splatkit.train.appearance import AppearanceDecoder
from splatkit.train.config import TrainConfig, run_plugins
from splatkit.train.gaussian_model import GaussianModel
from splatkit.train.poses import CameraPoses
from splatkit.train.poses import declare as declare_poses


@dataclass
class RunRecord:
    """A run folder's settings: the decoded `TrainConfig`, the resolved scene path and the map from the scene's
    original frame to the training frame."""

    run_dir: Path
    config: TrainConfig
    scene_path: Path
    to_normalized: Similarity

    def load_scene(self, scene: str | Path | None = None, data_factor: int | None = None) -> Scene:
        """The run's scene with its held-out split (`test_every`) and data factor, cameras in the training
        frame; `scene`/`data_factor` override the run's (e.g. render another capture's cameras)."""
        return load_scene(Path(scene) if scene is not None else self.scene_path,
                          data_factor=data_factor or self.config.data_factor, test_every=self.config.test_every,
                          pointmap_init=self.config.init)

    def checkpoint_model(self, path: Path) -> GaussianModel:
        """The model saved in checkpoint `path`, with the run's parameterisation (training frame, CPU)."""
        state = checkpoint.load_checkpoint(path)
        model = GaussianModel(self.config.parameterisation, "cpu")
        empty = Gaussians(torch.zeros(0, 3), torch.zeros(0, 3), torch.zeros(0, 4), torch.zeros(0),
                          torch.zeros(0, 1, 3), torch.zeros(0, num_sh_bases(self.config.sh_degree) - 1, 3))
        self.config.parameterisation.create(model, empty, self.config.lr, 1.0)
        if self.config.pose_opt:
            declare_poses(model, 0, self.config.pose_lr, self.config.pose_lr_final)
        for plugin in run_plugins(self.config).values():
            plugin.declare(model, 0)
        try:
            model.load_state_dict(state)
        except (KeyError, RuntimeError, ValueError) as exc:
            raise file_error(path, f"does not match the run's parameterisation ({exc})") from None
        return model

    def camera_poses(self, scene: Scene) -> CameraPoses:
        """The poses the run trained `scene`'s cameras with: refined by its last checkpoint's corrections when
        it ran with --pose-opt, else the scene's own."""
        kept = checkpoint.list_checkpoints(self.run_dir / "checkpoints") if self.config.pose_opt else []
        model = self.checkpoint_model(kept[-1]) if kept else None
        return CameraPoses(scene, model, eval_steps=self.config.pose_eval_steps)

    def appearance(self, scene: Scene) -> AppearanceDecoder | None:
        """The appearance decoder of the run's last checkpoint (features in its Gaussians' order, the mean of
        `scene`'s training embeddings), for held-out views; None for a run trained without --appearance."""
        if not self.config.appearance:
            return None
        return AppearanceDecoder.of(self.last_checkpoint_model(), scene.train_ids)

    def checkpoint_gaussians(self, path: Path) -> Gaussians:
        """The model saved in checkpoint `path`, decoded to raw INRIA form (training frame, CPU)."""
        return self.checkpoint_model(path).gaussians()

    def final_quantized(self) -> QuantizedGaussians:
        """The run's last checkpoint as a compact file stores it (quantized latents kept, training frame)."""
        model = self.last_checkpoint_model()
        with torch.no_grad():
            return self.config.parameterisation.quantized(model)

    def last_checkpoint_model(self) -> GaussianModel:
        """`checkpoint_model` of the run's last checkpoint; a one-line error naming the run when it has none."""
        kept = checkpoint.list_checkpoints(self.run_dir / "checkpoints")
        if not kept:
            raise file_error(self.run_dir, "the run has no checkpoint yet")
        return self.checkpoint_model(kept[-1])


def read_run(run_dir: Path) -> RunRecord:
    """Read `run_dir/config.json`. Raises SplatkitError (one line naming the file and the problem) for a folder
    that is no run, a corrupt file, or settings this version does not know."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise file_error(run_dir, "not a splatkit run folder (no config.json)")
    try:
        record = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise file_error(path, f"corrupt run config ({exc})") from None
    if not isinstance(record, dict):
        raise file_error(path, "corrupt run config (not a JSON object)")
    for key in ("config", "scene_path", "to_normalized"):
        if key not in record:
            raise file_error(path, f"corrupt run config (no '{key}')")
    config = from_json(TrainConfig, record["config"], source=path)
    if not isinstance(record["scene_path"], str):
        raise file_error(path, f"corrupt run config (scene_path is {record['scene_path']!r}, not a path)")
    try:
        to_normalized = Similarity.from_json(record["to_normalized"])
    except KeyError as exc:
        raise file_error(path, f"corrupt run config (to_normalized lacks {exc})") from None
    except (TypeError, ValueError) as exc:
        raise file_error(path, f"corrupt run config (to_normalized: {exc})") from None
    return RunRecord(Path(run_dir), config, Path(record["scene_path"]), to_normalized)

