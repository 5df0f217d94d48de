"""A scene ready to train: cameras, an initial point cloud, a train/test split and the normalising transform."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from splatkit.data.cameras import Camera


@dataclass(frozen=True)
class Similarity:
    """x_normalised = scale * (x_source - center): maps the source frame (e.g. COLMAP's) to the training frame."""

    scale: float = 1.0
    center: np.ndarray = field(default_factory=lambda: np.zeros(3))

    def apply_points(self, points: np.ndarray) -> np.ndarray:
        return (self.scale * (np.asarray(points, np.float64) - self.center)).astype(np.float32)

    def apply_camera(self, world_to_cam: np.ndarray) -> np.ndarray:
        """World-to-camera matrix of the same camera expressed in the normalised frame."""
        c2w = np.linalg.inv(world_to_cam)
        c2w = c2w.copy()
        c2w[:3, 3] = self.scale * (c2w[:3, 3] - self.center)
        return np.linalg.inv(c2w)

    def inverse(self) -> "Similarity":
        """The map back: x_source = x_normalised / scale + center, i.e. Similarity(1/scale, -scale*center)."""
        return Similarity(1.0 / self.scale, -self.scale * np.asarray(self.center, np.float64))

    def to_json(self) -> dict:
        return {"scale": float(self.scale), "center": [float(v) for v in self.center]}

    @classmethod
    def from_json(cls, d: dict) -> "Similarity":
        return cls(float(d["scale"]), np.asarray(d["center"], np.float64))


@dataclass
class Scene:
    """Everything the trainer needs from a capture, in the normalised frame."""

    root: Path
    cameras: list[Camera]
    points: np.ndarray  # (P, 3) float32, normalised frame
    colors: np.ndarray  # (P, 3) float32 in [0, 1]
    to_normalized: Similarity
    train_ids: list[int]
    test_ids: list[int]
    background: tuple[float, float, float] | None = None  # for images with an alpha channel

    @property
    def extent(self) -> float:
        """Radius of the camera rig, which sets the scale of learning rates and densification thresholds."""
        centers = np.stack([c.center for c in self.cameras])
        return float(np.linalg.norm(centers - centers.mean(0), axis=1).max())
