"""`splatkit view` settings; the field docstrings are the CLI help."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import tyro

from splatkit.render.api import Device


@dataclass
class ViewConfig:
    """Look at a trained model in the browser (rendered here and streamed, or drawn by the browser)."""

    model: tyro.conf.Positional[Path]
    """Run folder written by `splatkit train` (shows its training cameras too), or a splat file: INRIA .ply,
    PlayCanvas .compressed.ply, .spz or .splat."""
    host: str = "127.0.0.1"
    """Address to listen on. The default accepts connections from this computer only; `--host 0.0.0.0`
    shares the viewer with every machine that can reach this one on the network (there is no password)."""
    port: int = 8080
    """Port to listen on; the URL to open is printed at start."""
    mode: Literal["streamed", "splats"] = "streamed"
    """Initial render mode: `streamed` renders here and sends images; `splats` sends the Gaussians to the
    browser, which draws them itself (fast to move, SH degree 0 colours only). Switchable in the GUI."""
    device: Device = "auto"
    """Where streamed renders run: auto (CUDA when torch sees a GPU), cpu or cuda."""
    backend: str = "auto"
    """Render backend for streamed mode: auto, torch, native, gsplat."""
    max_height: int = 1080
    """Largest render height in pixels (the browser window's size caps it too)."""
    target_fps: float = 12.0
    """Frame rate to hold while the camera moves; the render height drops to keep it."""
    output_dir: Path = Path(".")
    """Folder for what the GUI saves: screenshots (PNG), camera paths (JSON) and their videos (MP4)."""
