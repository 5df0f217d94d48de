"""Thousands of photos train in bounded memory: a synthetic COLMAP scene of 3,000 small photos (generated here,
not shipped) peaks at about the memory of one with 300, because photos are decoded on demand into a cache of
--max-cached-images, and read ahead of each step by a background thread."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from splatkit.data import load_scene

WIDTH, HEIGHT = 160, 120
PHOTO_BYTES = WIDTH * HEIGHT * 3 * 4  # one decoded photo in the store: float32 RGB


def _scene(root: Path, count: int) -> Path:
    """`count` noisy 160x120 JPEGs on a ring of cameras looking at 2,000 points, as a COLMAP text model."""
    rng = np.random.default_rng(count)
    (root / "images").mkdir(parents=True)
    model = root / "sparse" / "0"
    model.mkdir(parents=True)
    (model / "cameras.txt").write_text(f"1 PINHOLE {WIDTH} {HEIGHT} 140 140 80 60\n")
    lines = []
    for i in range(count):
        name = f"{i:05d}.jpg"
        pixels = rng.integers(0, 256, (HEIGHT // 8, WIDTH // 8, 3), dtype=np.uint8).repeat(8, 0).repeat(8, 1)
        Image.fromarray(pixels).save(root / "images" / name, quality=80)
        angle = 2 * np.pi * i / count
        center = np.array([4 * np.cos(angle), 4 * np.sin(angle), 0.3 * np.sin(7 * angle)])
        forward = -center / np.linalg.norm(center)
        right = np.cross(forward, [0.0, 0.0, 1.0])
        right /= np.linalg.norm(right)
        R = np.stack([right, np.cross(forward, right), forward])  # rows: camera x, y (down), z (forward)
        w, x, y, z = _quaternion(R)
        t = (-R @ center).tolist()
        lines += [f"{i + 1} {w!r} {x!r} {y!r} {z!r} {t[0]!r} {t[1]!r} {t[2]!r} 1 {name}", ""]
    (model / "images.txt").write_text("\n".join(lines) + "\n")
    points = rng.normal(0, 0.5, (2000, 3)).tolist()
    (model / "points3D.txt").write_text("".join(f"{k + 1} {p[0]!r} {p[1]!r} {p[2]!r} 128 128 128 0\n"
                                                for k, p in enumerate(points)))
    return root


def _quaternion(R: np.ndarray) -> tuple[float, float, float, float]:
    from scipy.spatial.transform import Rotation

    x, y, z, w = Rotation.from_matrix(R).as_quat()
    return float(w), float(x), float(y), float(z)


def _peak_rss_bytes(scene: Path, out: Path) -> tuple[int, dict]:
    """Peak resident memory of a 40-step training run of `scene` in its own process, and its last log line."""
    command = [sys.executable, "-c", "import resource, sys; from splatkit.cli import main; code = main(sys.argv[1:]); "
               "print('PEAK', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(code)",
               "train", str(scene), "--out", str(out), "--steps", "40", "--test-every", "0", "--eval-steps",
               "--max-cached-images", "16", "--log-every", "20", "--threads", "1"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    peak_kib = int(done.stdout.split("PEAK")[-1])
    log = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return peak_kib * 1024, log[-1]


@pytest.mark.slow
def test_three_thousand_photos_train_in_the_memory_of_three_hundred(tmp_path):
    small, large = _scene(tmp_path / "s300", 300), _scene(tmp_path / "s3000", 3000)
    started = time.perf_counter()
    scene = load_scene(large)
    seconds = time.perf_counter() - started
    assert len(scene.cameras) == 3000 and len(scene.train_ids) == 3000 - 375
    small_peak, _ = _peak_rss_bytes(small, tmp_path / "run300")
    large_peak, last = _peak_rss_bytes(large, tmp_path / "run3000")
    print(f"\n3,000 photos: scene metadata loads in {seconds / 3:.2f} s per 1,000 photos; peak RSS "
          f"{large_peak / 2**20:.0f} MiB against {small_peak / 2**20:.0f} MiB for 300 photos; steps waited on "
          f"photos for {last['image_wait_share']:.1%} of the time")
    # Caching every decoded photo would add 2,700 x 225 KiB = 593 MiB; the cache holds 16 of them either way.
    assert large_peak - small_peak < 0.1 * 2700 * PHOTO_BYTES
    assert 0 <= last["image_wait_share"] < 1
