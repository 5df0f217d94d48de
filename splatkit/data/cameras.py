"""Pinhole cameras in the OpenCV convention, the one currency between loaders and renderers."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class Undistortion:
    """How to turn a distorted source image into the pinhole image a `Camera` describes.

    `K_src` and `dist` are the source camera (pixel centres at +0.5, COLMAP's convention) with OpenCV
    coefficients (k1, k2, p1, p2); the pinhole side is `K_pinhole` (same convention) at the source resolution
    `size` = (width, height). These two are kept here because `Camera.scaled` rescales the camera's own `K`,
    while undistortion always runs at the source resolution before any downsampling. When they are None the
    owning camera's `K` and size are taken to be at the source resolution.
    """

    K_src: np.ndarray
    dist: np.ndarray
    K_pinhole: np.ndarray | None = None
    size: tuple[int, int] | None = None


@dataclass(frozen=True)
class Camera:
    """One undistorted pinhole view.

    Axes are OpenCV's (x right, y down, z forward). `K` maps camera coordinates to pixel coordinates where
    the centre of pixel (i, j) is (j + 0.5, i + 0.5), as in COLMAP and gsplat. `world_to_cam` is 4x4.
    """

    name: str
    width: int
    height: int
    K: np.ndarray
    world_to_cam: np.ndarray
    image_path: Path | None = None
    undistortion: Undistortion | None = field(default=None, compare=False)
    mask_path: Path | None = None
    """Mask of the photo (same size; 0 = ignore the pixel, see `splatkit.data.masks`), or None."""

    @property
    def cam_to_world(self) -> np.ndarray:
        return np.linalg.inv(self.world_to_cam)

    @property
    def center(self) -> np.ndarray:
        """Camera position in world coordinates."""
        R, t = self.world_to_cam[:3, :3], self.world_to_cam[:3, 3]
        return -R.T @ t

    @property
    def fov_y(self) -> float:
        """Vertical field of view in radians."""
        return 2.0 * math.atan(0.5 * self.height / self.K[1, 1])

    @classmethod
    def from_pose(cls, name: str, rotation: np.ndarray, position: np.ndarray, fov_y: float, width: int,
                  height: int) -> "Camera":
        """A centred pinhole camera from its camera-to-world rotation, position and vertical fov (radians)."""
        focal = 0.5 * height / math.tan(0.5 * fov_y)
        K = np.array([[focal, 0.0, 0.5 * width], [0.0, focal, 0.5 * height], [0.0, 0.0, 1.0]])
        c2w = np.eye(4)
        c2w[:3, :3], c2w[:3, 3] = rotation, position
        return cls(name=name, width=width, height=height, K=K, world_to_cam=np.linalg.inv(c2w))

    def scaled(self, factor: float) -> "Camera":
        """The same view with the image downsampled by `factor` (sizes rounded as images are resized)."""
        width, height = max(1, round(self.width / factor)), max(1, round(self.height / factor))
        sx, sy = width / self.width, height / self.height
        K = self.K.copy()
        K[0] *= sx
        K[1] *= sy
        return replace(self, width=width, height=height, K=K)


def output_names(names: Sequence[str], suffix: str = ".png") -> list[str]:
    """Relative file names for outputs named after input images (renders, side-by-sides), one per name.

    Folders are kept, so `cam_a/5.jpg` and `cam_b/5.jpg` give `cam_a/5.png` and `cam_b/5.png`; the extension is
    replaced by `suffix` unless two inputs would then meet (`5.jpg` and `5.png` in one folder), in which case
    both keep it (`5.jpg.png`). Parts that would leave the output folder (`..`, a root) are dropped, and any
    name still repeated gets `~k` before its suffix, so the names are always unique.
    """
    clean = [PurePosixPath(*[p for p in PurePosixPath(n.replace("\\", "/")).parts if p not in ("/", "..", ".")]
                           or ["image"]) for n in names]
    swapped = [p.with_suffix(suffix) if p.suffix else p.with_name(p.name + suffix) for p in clean]
    clashes = Counter(swapped)
    out = [str(s) if clashes[s] == 1 else f"{p}{suffix}" for p, s in zip(clean, swapped)]
    used: set[str] = set()
    for i, name in enumerate(out):
        k = 0
        while out[i] in used:
            k += 1
            out[i] = f"{name[: -len(suffix)]}~{k}{suffix}"
        used.add(out[i])
    return out
