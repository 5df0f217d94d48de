"""A run folder's `config.json` (written by `train.prepare`): reading it, and loading the scene it trained on,
with one set of errors for every command that opens a run (eval, render, export, view)."""

from __future__ import annotations

import json
from pathlib import Path

from splatkit.data import load_scene
from splatkit.data.scene import Scene
from splatkit.errors import SplatkitError, file_error


def read_run_record(run_dir: Path) -> dict:
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise file_error(run_dir, "not a splatkit run folder (no config.json)")
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise file_error(path, f"corrupt run config ({exc})") from None
    if not isinstance(record, dict):
        raise file_error(path, "corrupt run config (not a JSON object)")
    return record


def load_run_scene(record: dict) -> Scene:
    """The scene the run trained on, with its data factor and held-out split (cameras in the training frame)."""
    if "scene_path" not in record:
        raise SplatkitError("the run's config.json names no scene")
    settings = record.get("config", {})
    return load_scene(Path(record["scene_path"]), data_factor=settings.get("data_factor", 1),
                      test_every=settings.get("test_every", 8))
