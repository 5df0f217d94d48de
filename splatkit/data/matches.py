"""Neighbouring views and matched keypoints between them, the multi-view evidence LPM turns into 3D error zones.

Keypoints are in a camera's own image as splatkit trains it (undistorted, scaled by the data factor), in pixel
coordinates whose pixel centres sit at +0.5 (COLMAP's and `Camera.K`'s convention). Matches come from the
scene's structure-from-motion tracks when it has them (two images observing the same 3D point: free and
verified by bundle adjustment), else from SIFT with Lowe's ratio test and a RANSAC fundamental-matrix check.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import cv2
import numpy as np

from splatkit.atomic import atomic_path
from splatkit.data.cameras import Camera

Pair = tuple[int, int]
Matches = dict[Pair, tuple[np.ndarray, np.ndarray]]
"""(i, j) -> (xy_i, xy_j): (M, 2) float32 keypoints in camera i and their partners in camera j, row by row."""


@dataclass(frozen=True)
class Observations:
    """One camera's keypoints that structure-from-motion tied to 3D points (COLMAP's points2D with a track)."""

    xy: np.ndarray  # (K, 2) float32 pixel coordinates in the camera's image, pixel centres at +0.5
    point_ids: np.ndarray  # (K,) int64 id of the 3D point each keypoint observes


def optical_axis(camera: Camera) -> np.ndarray:
    """Unit viewing direction (the camera's +z axis) in world coordinates."""
    axis = np.asarray(camera.world_to_cam, np.float64)[2, :3]
    return axis / np.linalg.norm(axis)


def neighbour_views(cameras: Sequence[Camera], ids: Sequence[int], max_angle: float, count: int,
                    seed: int) -> dict[int, list[int]]:
    """For each camera in `ids`, up to `count` other cameras of `ids` whose optical axes lie within `max_angle`
    degrees of its own, drawn at random (seeded) when there are more (GS-LPM's get_paired_views).

    A camera with no such neighbour gets an empty list. Returns {camera index: sorted neighbour indices}.
    """
    ids = list(ids)
    axes = np.stack([optical_axis(cameras[i]) for i in ids]) if ids else np.zeros((0, 3))
    angles = np.degrees(np.arccos(np.clip(axes @ axes.T, -1.0, 1.0)))
    rng = np.random.default_rng(seed)
    result = {}
    for row, i in enumerate(ids):
        close = [ids[col] for col in np.flatnonzero(angles[row] < max_angle) if col != row]
        if len(close) > count:
            close = rng.choice(close, size=count, replace=False).tolist()
        result[i] = sorted(close)
    return result


def neighbour_pairs(neighbours: dict[int, list[int]]) -> list[Pair]:
    return [(i, j) for i, js in sorted(neighbours.items()) for j in js]


def track_matches(observations: Sequence[Observations], pairs: Iterable[Pair]) -> Matches:
    """Keypoints of each pair that observe the same 3D point (one match per shared point)."""
    matches = {}
    for i, j in pairs:
        a, b = observations[i], observations[j]
        _, rows_a, rows_b = np.intersect1d(a.point_ids, b.point_ids, return_indices=True)
        matches[(i, j)] = (a.xy[rows_a].astype(np.float32), b.xy[rows_b].astype(np.float32))
    return matches


@dataclass(frozen=True)
class SiftMatcher:
    """SIFT keypoints (OpenCV), Lowe's ratio test, then a RANSAC fundamental matrix keeps the consistent ones."""

    ratio: float = 0.75
    """Keep a match when its distance is below this times the second-best one's (Lowe 2004)."""
    ransac_px: float = 1.0
    """RANSAC inlier threshold: distance to the epipolar line, in pixels."""
    max_features: int = 8000

    def features(self, grey: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(K, 2) float32 keypoints (pixel centres at +0.5) and (K, 128) float32 descriptors of a uint8 image."""
        keypoints, descriptors = cv2.SIFT_create(nfeatures=self.max_features).detectAndCompute(grey, None)
        xy = np.array([k.pt for k in keypoints], np.float32).reshape(-1, 2) + 0.5  # OpenCV centres at integers
        return xy, (descriptors if descriptors is not None else np.zeros((0, 128), np.float32))

    def match(self, a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]
              ) -> tuple[np.ndarray, np.ndarray]:
        (xy_a, desc_a), (xy_b, desc_b) = a, b
        empty = (np.zeros((0, 2), np.float32), np.zeros((0, 2), np.float32))
        if len(xy_a) < 2 or len(xy_b) < 2:
            return empty
        pairs = cv2.BFMatcher(cv2.NORM_L2).knnMatch(desc_a, desc_b, k=2)
        good = [m[0] for m in pairs if len(m) == 2 and m[0].distance < self.ratio * m[1].distance]
        if len(good) < 8:  # the fundamental matrix needs eight
            return empty
        pa = xy_a[[m.queryIdx for m in good]]
        pb = xy_b[[m.trainIdx for m in good]]
        _, inliers = cv2.findFundamentalMat(pa, pb, cv2.FM_RANSAC, self.ransac_px, 0.999)
        if inliers is None:
            return empty
        keep = inliers.ravel().astype(bool)
        return pa[keep], pb[keep]


def sift_matches(grey: Callable[[int], np.ndarray], pairs: Sequence[Pair], matcher: SiftMatcher = SiftMatcher(),
                 on_pair: Callable[[int, int], None] | None = None) -> Matches:
    """Matches of every pair from `grey(i)` (uint8 HxW image of camera i); features are computed once per image.
    `on_pair(done, total)` reports progress."""
    features: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    matches = {}
    for done, (i, j) in enumerate(pairs, 1):
        for k in (i, j):
            if k not in features:
                features[k] = matcher.features(grey(k))
        matches[(i, j)] = matcher.match(features[i], features[j])
        if on_pair is not None:
            on_pair(done, len(pairs))
    return matches


def save_matches(path: Path, matches: Matches, key: str) -> None:
    """Write `matches` as one .npz (atomically), tagged with `key` (what they were computed from)."""
    arrays = {"key": np.array(key)}
    for (i, j), (a, b) in matches.items():
        arrays[f"{i}_{j}_a"], arrays[f"{i}_{j}_b"] = a, b
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez(tmp, **arrays)


def load_matches(path: Path, key: str) -> Matches | None:
    """The matches saved at `path` if they were computed from `key`, else None (missing, stale or damaged)."""
    try:
        with np.load(path) as data:
            if str(data["key"]) != key:
                return None
            names = [n[:-2] for n in data.files if n.endswith("_a")]
            return {tuple(int(v) for v in n.split("_")): (data[f"{n}_a"], data[f"{n}_b"]) for n in names}
    except (OSError, KeyError, ValueError, zipfile.BadZipFile, EOFError):
        return None
