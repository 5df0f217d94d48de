"""Checkpoints: everything needed to continue a run bit-for-bit, written atomically."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from splatkit.atomic import atomic_path
from splatkit.errors import file_error

_NAME = re.compile(r"step_(\d+)\.pt$")
KEEP = 2  # the newest checkpoints kept; older ones are deleted once a newer one is safely on disk


def _encode(value: Any) -> Any:
    """torch.Generator is not picklable by torch.save: store its state instead."""
    if isinstance(value, torch.Generator):
        return {"__generator_state__": value.get_state()}
    if isinstance(value, dict):
        return {k: _encode(v) for k, v in value.items()}
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, dict):
        if "__generator_state__" in value:
            generator = torch.Generator()
            generator.set_state(value["__generator_state__"])
            return generator
        return {k: _decode(v) for k, v in value.items()}
    return value


def save_checkpoint(directory: Path, step: int, payload: dict[str, Any]) -> Path:
    path = directory / f"step_{step:07d}.pt"
    with atomic_path(path) as tmp:
        torch.save(_encode({"step": step, **payload}), tmp)
    for old in list_checkpoints(directory)[:-KEEP]:
        old.unlink(missing_ok=True)
    return path


def list_checkpoints(directory: Path) -> list[Path]:
    found = [p for p in directory.glob("step_*.pt") if _NAME.search(p.name)]
    return sorted(found, key=lambda p: int(_NAME.search(p.name).group(1)))


def load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        data = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # a truncated or foreign file: say which and why
        raise file_error(path, f"unreadable checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(data, dict) or "step" not in data or "params" not in data:
        raise file_error(path, "not a splatkit checkpoint")
    return _decode(data)
