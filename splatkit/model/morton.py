"""Spatial (Morton, Z-order) ordering of points: neighbours in the order are neighbours in space, which keeps
file chunks compact (PlayCanvas compressed.ply, SOG) and makes positions compress well (the compact file)."""

from __future__ import annotations

import numpy as np


def morton_order(points: np.ndarray) -> np.ndarray:
    """Indices (N,) sorting `points` (N, 3) along a 30-bit Z-order curve over their bounding box (stable)."""
    lo, hi = points.min(axis=0), points.max(axis=0)
    extent = np.where(hi > lo, hi - lo, 1.0)
    q = np.clip((points - lo) / extent * 1023.0, 0, 1023).astype(np.uint64)

    def spread(v: np.ndarray) -> np.ndarray:  # 10 bits -> every third bit of 30
        v = (v | (v << np.uint64(16))) & np.uint64(0x030000FF)
        v = (v | (v << np.uint64(8))) & np.uint64(0x0300F00F)
        v = (v | (v << np.uint64(4))) & np.uint64(0x030C30C3)
        return (v | (v << np.uint64(2))) & np.uint64(0x09249249)

    code = spread(q[:, 0]) | (spread(q[:, 1]) << np.uint64(1)) | (spread(q[:, 2]) << np.uint64(2))
    return np.argsort(code, kind="stable")
