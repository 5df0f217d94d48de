"""Per-image masks: which pixels of a photo count in the loss and the metrics.

Conventions follow nerfstudio and Brush: a mask is an image of the photo's size, 0 where the pixel is ignored
(a person walking through, the capture rig, the sky) and non-zero where it is kept. COLMAP scenes keep masks in
`masks/` beside `images/` under the image's relative name with `.png` appended (`masks/cam_a/5.jpg.png`, as
COLMAP's own mask_path expects) or replacing its extension (`masks/cam_a/5.png`); transforms.json frames name
theirs in `mask_path`.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from splatkit.errors import file_error

KEEP = 255  # a kept pixel in the uint8 form masks are processed in, resampled exactly as the photo is


def mask_candidates(masks_dir: Path, image_name: str) -> list[Path]:
    """Where an image's mask may be: its relative name with `.png` appended, then with the extension replaced."""
    name = PurePosixPath(image_name)
    return [masks_dir / f"{name}.png", masks_dir / name.with_suffix(".png")]


def find_mask(masks_dir: Path, image_name: str) -> Path | None:
    """The mask file of `image_name` in `masks_dir`, or None when it has none."""
    return next((p for p in mask_candidates(masks_dir, image_name) if p.is_file()), None)


def read_mask(path: Path) -> np.ndarray:
    """uint8 HxW: 255 where the mask keeps the pixel (any non-zero sample), 0 where it is ignored.

    Reads single-channel masks of any depth (1-bit, 8-bit, 16-bit, float), palette images (through their
    colours) and RGB(A) images (a pixel is kept when any colour channel is non-zero; alpha is not looked at).
    Raises SplatkitError naming the file when it is missing or cannot be decoded.
    """
    if not path.is_file():
        raise file_error(path, "mask file is missing")
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("P", "PA"):
                im = im.convert("RGB")
            samples = np.asarray(im)
    except Exception as e:  # PIL raises many types for corrupt files
        raise file_error(path, f"unreadable or corrupt mask ({type(e).__name__}: {e})".replace("\n", " ")) from None
    if samples.ndim == 3:
        colour = samples[..., :1] if im.mode == "LA" else samples[..., :3]
        keep = np.any(colour != 0, axis=-1)
    else:
        keep = samples != 0
    return np.where(keep, KEEP, 0).astype(np.uint8)
