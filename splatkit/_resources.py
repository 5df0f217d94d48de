"""Where splatkit finds the files it ships and keeps the ones it builds on first use.

`cuda/` and `apps/player/` live at the top of the source tree; pyproject.toml maps them into the wheel as
`splatkit/cuda/` and `splatkit/apps/player/`, while an editable install reads the checkout's own folders.
What splatkit builds from them (the native extension, the player's npm packages) goes to a cache, never
into site-packages."""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def resource_dir(relative: str) -> Path:
    """The shipped folder `relative` ("cuda", "apps/player"): inside an installed package, else in the checkout."""
    installed = PACKAGE_DIR / relative
    return installed if installed.is_dir() else PACKAGE_DIR.parent / relative


def user_cache() -> Path:
    """$SPLATKIT_CACHE, else $XDG_CACHE_HOME/splatkit, else ~/.cache/splatkit."""
    if os.environ.get("SPLATKIT_CACHE"):
        return Path(os.environ["SPLATKIT_CACHE"])
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "splatkit"
