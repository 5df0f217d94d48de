"""Frames for structure from motion from a video: evenly spaced windows, the sharpest frame of each.

Decoding is imageio-ffmpeg's (its bundled ffmpeg applies the phone's rotation metadata, so portrait videos give
portrait frames); sharpness is the variance of the Laplacian (Pech-Pacheco et al., ICPR 2000), which drops the
motion-blurred frames a phone video is full of.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
from PIL import Image

from splatkit.atomic import atomic_path, make_folder
from splatkit.errors import file_error

VIDEO_SUFFIXES = (".mp4", ".mov", ".m4v", ".avi", ".mkv", ".webm")


def sharpness(rgb: np.ndarray) -> float:
    """Variance of the Laplacian of the grey image: larger is sharper."""
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    return float(cv2.Laplacian(grey, cv2.CV_64F).var())


def extract_frames(video: Path, out_dir: Path, target: int,
                   advance: Callable[[int, int], None] = lambda done, total: None) -> list[tuple[str, int]]:
    """Write about `target` frames of `video` to `out_dir` as frame_<index>.jpg (quality 95), the sharpest of
    each of `target` equal windows of the video; `advance(frames decoded, total)` reports progress.

    Returns [(file name, source frame index)]. Raises SplatkitError naming the video when it cannot be decoded.
    """
    import imageio_ffmpeg

    try:
        total, _ = imageio_ffmpeg.count_frames_and_secs(str(video))
        frames = imageio_ffmpeg.read_frames(str(video))
        quiet = logging.getLogger("imageio_ffmpeg")  # it warns when a rotation swaps width and height, as it should
        level, quiet.level = quiet.level, logging.ERROR
        try:
            meta = next(frames)
        finally:
            quiet.setLevel(level)
    except (OSError, RuntimeError, StopIteration, ValueError) as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[-1]  # ffmpeg's last line says what is wrong
        raise file_error(video, f"not a readable video ({reason[:200]})") from None
    if total < 1:
        raise file_error(video, "has no frames")
    width, height = meta["size"]
    windows = min(target, total)

    def window(i: int) -> int:  # frames past the announced count join the last window
        return min(i * windows // total, windows - 1)

    make_folder(out_dir)
    written: list[tuple[str, int]] = []
    best: tuple[float, int, np.ndarray] | None = None
    try:
        for index, raw in enumerate(frames):
            rgb = np.frombuffer(raw, np.uint8).reshape(height, width, 3)
            score = sharpness(rgb)
            if best is None or score > best[0]:
                best = (score, index, rgb)
            if index + 1 == total or window(index + 1) != window(index):
                written.append(_save(out_dir, best[1], best[2]))
                best = None
            advance(index + 1, total)
    except (OSError, RuntimeError, ValueError) as e:
        raise file_error(video, f"decoding failed after {len(written)} frames ({e})".replace("\n", " ")) from None
    finally:
        frames.close()
    if best is not None:  # the container held more frames than it announced
        written.append(_save(out_dir, best[1], best[2]))
    return written


def _save(out_dir: Path, index: int, rgb: np.ndarray) -> tuple[str, int]:
    name = f"frame_{index:05d}.jpg"
    with atomic_path(out_dir / name, suffix=".jpg") as tmp:
        Image.fromarray(rgb).save(tmp, quality=95)
    return name, index
