"""A scene ready to train: cameras, an initial point cloud, a train/test split and the normalising transform."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from splatkit.data.cameras import Camera, output_names
from splatkit.data.matches import Observations


@dataclass(frozen=True)
class Similarity:
    """x' = scale * rotation @ (x - center): e.g. the map from the source frame (COLMAP's) to the training frame
    (no rotation there), or to an upright frame for export."""

    scale: float = 1.0
    center: np.ndarray = field(default_factory=lambda: np.zeros(3))
    rotation: np.ndarray = field(default_factory=lambda: np.eye(3))

    @property
    def is_identity(self) -> bool:
        return self.scale == 1.0 and not np.any(self.center) and np.array_equal(self.rotation, np.eye(3))

    def apply_points(self, points: np.ndarray) -> np.ndarray:
        shifted = np.asarray(points, np.float64) - self.center
        return (self.scale * shifted @ np.asarray(self.rotation, np.float64).T).astype(np.float32)

    def apply_camera(self, world_to_cam: np.ndarray) -> np.ndarray:
        """World-to-camera matrix of the same camera expressed in the new frame."""
        c2w = np.linalg.inv(world_to_cam)
        R = np.asarray(self.rotation, np.float64)
        c2w[:3, :3] = R @ c2w[:3, :3]
        c2w[:3, 3] = self.scale * R @ (c2w[:3, 3] - self.center)
        return np.linalg.inv(c2w)

    def inverse(self) -> "Similarity":
        """The map back: x = rotation^T x' / scale + center, i.e. Similarity(1/scale, -scale*R@center, R^T)."""
        R = np.asarray(self.rotation, np.float64)
        return Similarity(1.0 / self.scale, -self.scale * R @ np.asarray(self.center, np.float64), R.T)

    def then(self, other: "Similarity") -> "Similarity":
        """This map followed by `other`, as one Similarity."""
        R1 = np.asarray(self.rotation, np.float64)
        center = np.asarray(self.center, np.float64) + R1.T @ np.asarray(other.center, np.float64) / self.scale
        return Similarity(self.scale * other.scale, center, np.asarray(other.rotation, np.float64) @ R1)

    def to_json(self) -> dict:
        record = {"scale": float(self.scale), "center": [float(v) for v in self.center]}
        if not np.array_equal(self.rotation, np.eye(3)):
            record["rotation"] = np.asarray(self.rotation, np.float64).tolist()
        return record

    @classmethod
    def from_json(cls, d: dict) -> "Similarity":
        rotation = np.asarray(d.get("rotation", np.eye(3)), np.float64)
        return cls(float(d["scale"]), np.asarray(d["center"], np.float64), rotation)


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
    observations: list[Observations] | None = None  # per camera, keypoints of SfM tracks (COLMAP), if known

    @functools.cached_property
    def output_names(self) -> list[str]:
        """Per camera, the relative .png name of outputs made from its view (renders, side-by-sides): unique,
        and keeping the image's folder (see `output_names`)."""
        return output_names([c.name for c in self.cameras])

    @property
    def extent(self) -> float:
        """Radius of the camera rig, which sets the scale of learning rates and densification thresholds."""
        return rig_radius(np.stack([c.center for c in self.cameras]), self.points)


def rig_radius(centers: np.ndarray, points: np.ndarray) -> float:
    """Distance of the farthest camera from the cameras' mean position: the scene's natural length unit.

    When the cameras stand (nearly) in one place (a single photo, a panorama turned on a tripod) that is zero,
    and the median distance from the cameras to the points is used instead; 1.0 if there are no points either.
    """
    centers = np.asarray(centers, np.float64)
    mean = centers.mean(0)
    spread = float(np.linalg.norm(centers - mean, axis=1).max())
    depth = float(np.median(np.linalg.norm(np.asarray(points, np.float64) - mean, axis=1))) if len(points) else 0.0
    if spread > 1e-6 * depth and spread > 0:
        return spread
    return depth if depth > 0 else 1.0
