"""LPM's matched keypoints: SIFT matches agree with the capture's known relative poses; COLMAP track matches
reproject onto their shared 3D point; the cache is reused only for what it was computed from."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from splatkit.data import ImageStore, load_scene
from splatkit.data.cameras import Camera
from splatkit.data.matches import (load_matches, neighbour_pairs, neighbour_views, save_matches, sift_matches,
                                   track_matches)


def _fundamental(a: Camera, b: Camera) -> np.ndarray:
    """F with x_b^T F x_a = 0 for pixel coordinates of cameras a and b (from their poses and intrinsics)."""
    R = b.world_to_cam[:3, :3] @ a.world_to_cam[:3, :3].T
    t = b.world_to_cam[:3, 3] - R @ a.world_to_cam[:3, 3]
    t_cross = np.array([[0, -t[2], t[1]], [t[2], 0, -t[0]], [-t[1], t[0], 0]])
    return np.linalg.inv(b.K).T @ t_cross @ R @ np.linalg.inv(a.K)


def _sampson_px(F: np.ndarray, xa: np.ndarray, xb: np.ndarray) -> np.ndarray:
    """Sampson distance (first-order distance to the epipolar geometry) in pixels, per match."""
    pa, pb = np.c_[xa, np.ones(len(xa))], np.c_[xb, np.ones(len(xb))]
    Fa, Fb = pa @ F.T, pb @ F
    return np.abs((pb * Fa).sum(1)) / np.sqrt(Fa[:, 0] ** 2 + Fa[:, 1] ** 2 + Fb[:, 0] ** 2 + Fb[:, 1] ** 2)


def test_sift_matches_on_fox_satisfy_the_known_relative_poses(shared_datasets: Path, tmp_path: Path):
    scene = load_scene(shared_datasets / "fox", data_factor=2)
    store = ImageStore(scene.cameras)

    def grey(i: int) -> np.ndarray:
        return cv2.cvtColor((store[i] * 255 + 0.5).astype(np.uint8), cv2.COLOR_RGB2GRAY)

    pairs = neighbour_pairs(neighbour_views(scene.cameras, scene.train_ids[:8], 45.0, 3, seed=0))
    matches = sift_matches(grey, pairs)
    assert len(matches) == len(pairs) >= 16
    for (i, j), (xa, xb) in matches.items():
        assert len(xa) >= 50, (i, j)
        distance = _sampson_px(_fundamental(scene.cameras[i], scene.cameras[j]), xa, xb)
        assert np.mean(distance < 2.0) >= 0.9, (i, j, np.median(distance))

    path = tmp_path / "matches.npz"
    save_matches(path, matches, key="fox-2-sift")
    again = load_matches(path, "fox-2-sift")
    assert again.keys() == matches.keys() and all(np.array_equal(again[k][0], matches[k][0]) for k in matches)
    assert load_matches(path, "fox-4-sift") is None and load_matches(tmp_path / "none.npz", "x") is None
    path.write_bytes(b"PK\x03\x04 torn")
    assert load_matches(path, "fox-2-sift") is None


def test_track_matches_reproject_onto_their_shared_point(shared_datasets: Path):
    """Matches from COLMAP tracks: the 3D point two keypoints share projects onto both, within the 4 px that
    COLMAP's mapper allows at full resolution (scaled by the data factor). beer_can (SIMPLE_RADIAL) also checks
    that keypoints are undistorted like the images."""
    import pycolmap

    for name, factor in (("cup_colmap", 4), ("beer_can_colmap", 2)):
        root = shared_datasets / name
        scene = load_scene(root, data_factor=factor)
        points = {pid: p.xyz for pid, p in pycolmap.Reconstruction(str(root / "sparse" / "0")).points3D.items()}
        pairs = neighbour_pairs(neighbour_views(scene.cameras, scene.train_ids, 45.0, 3, seed=0))
        matches = track_matches(scene.observations, pairs)
        errors = []
        for (i, j), (xy_i, xy_j) in list(matches.items())[:20]:
            shared = np.intersect1d(scene.observations[i].point_ids, scene.observations[j].point_ids)
            assert len(shared) == len(xy_i) == len(xy_j) > 0
            world = scene.to_normalized.apply_points(np.stack([points[k] for k in shared]))
            for camera, xy in ((scene.cameras[i], xy_i), (scene.cameras[j], xy_j)):
                p = world @ camera.world_to_cam[:3, :3].T + camera.world_to_cam[:3, 3]
                uv = p @ camera.K.T
                errors.append(np.linalg.norm(uv[:, :2] / uv[:, 2:] - xy, axis=1))
        errors = np.concatenate(errors)
        assert errors.max() < 4.0 / factor and np.median(errors) < 0.5, (name, errors.max(), np.median(errors))
