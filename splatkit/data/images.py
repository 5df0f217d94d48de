"""Lazy, cached access to training images at the size and geometry their `Camera` describes.

Undistorting and downsampling a few thousand photos takes minutes, and holding them all in RAM does not fit, so
`ImageStore` decodes on demand, keeps a bounded LRU in memory and writes processed images to a disk cache.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
from PIL import Image

from splatkit.data.cameras import Camera, Undistortion
from splatkit.errors import file_error


# --------------------------------------------------------------------------------------------- undistortion


def _to_opencv(K: np.ndarray) -> np.ndarray:
    """COLMAP K (pixel centres at +0.5) -> OpenCV K (pixel centres at integers)."""
    K = np.array(K, np.float64)
    K[0, 2] -= 0.5
    K[1, 2] -= 0.5
    return K


def _from_opencv(K: np.ndarray) -> np.ndarray:
    K = np.array(K, np.float64)
    K[0, 2] += 0.5
    K[1, 2] += 0.5
    return K


def make_undistortion(K_src: np.ndarray, dist: Sequence[float], width: int, height: int
                      ) -> tuple[np.ndarray, Undistortion | None]:
    """Pinhole K (COLMAP convention) for a distorted source camera, and the `Undistortion` to get there.

    alpha=0 crops to valid pixels only, so the undistorted image has no black border for the model to learn;
    the image size stays the source size. Returns (K_src, None) when the distortion is all zero.
    """
    dist = np.asarray(dist, np.float64).ravel()
    K_src = np.asarray(K_src, np.float64)
    if not np.any(dist):
        return K_src.copy(), None
    K_cv, _ = cv2.getOptimalNewCameraMatrix(_to_opencv(K_src), dist, (width, height), 0, (width, height))
    K_pin = _from_opencv(K_cv)
    return K_pin, Undistortion(K_src=K_src.copy(), dist=dist, K_pinhole=K_pin, size=(width, height))


def undistortion_maps(und: Undistortion, camera: Camera | None = None) -> tuple[np.ndarray, np.ndarray]:
    """cv2.remap maps (float32, OpenCV pixel convention) from the pinhole image to the distorted source.

    map_x[v, u], map_y[v, u] is where pinhole pixel (u, v) samples the source image; both at source resolution.
    """
    if und.K_pinhole is not None and und.size is not None:
        K_pin, (w, h) = und.K_pinhole, und.size
    elif camera is not None:
        K_pin, (w, h) = camera.K, (camera.width, camera.height)
    else:
        raise ValueError("Undistortion without K_pinhole/size needs its camera")
    return cv2.initUndistortRectifyMap(_to_opencv(und.K_src), np.asarray(und.dist, np.float64), None,
                                       _to_opencv(K_pin), (int(w), int(h)), cv2.CV_32FC1)


# ------------------------------------------------------------------------------------------------ reading


def read_image(path: Path) -> np.ndarray:
    """uint8 HxWx3, or HxWx4 with premultiplied alpha (so resampling does not bleed hidden colours into edges)."""
    if not path.is_file():
        raise file_error(path, "image file is missing")
    try:
        with Image.open(path) as im:
            im.load()
            has_alpha = im.mode in ("RGBA", "LA", "PA", "RGBa") or "transparency" in im.info
            arr = np.asarray(im.convert("RGBA" if has_alpha else "RGB"))
    except Exception as e:  # PIL raises many types for corrupt files
        raise file_error(path, f"unreadable or corrupt image ({type(e).__name__}: {e})".replace("\n", " ")) from None
    if has_alpha:
        a = arr[..., 3:4].astype(np.uint16)
        rgb = ((arr[..., :3].astype(np.uint16) * a + 127) // 255).astype(np.uint8)
        arr = np.concatenate([rgb, arr[..., 3:4]], axis=-1)
    return np.ascontiguousarray(arr)


def image_size(path: Path) -> tuple[int, int] | None:
    """(width, height) from the file header, or None if the file is missing or unreadable."""
    try:
        with Image.open(path) as im:
            return im.size
    except Exception:
        return None


def _downsamples_to(src: tuple[int, int], dst: tuple[int, int]) -> bool:
    """Whether some factor f>=1 gives dst == round(src / f) in both axes (how `Camera.scaled` rounds)."""
    lo, hi = 1.0, float("inf")
    for s, d in zip(src, dst):
        if d < 1 or s < d:
            return False
        lo = max(lo, s / (d + 0.5))
        hi = min(hi, s / (d - 0.5) if d > 0.5 else float("inf"))
    return lo <= hi


# -------------------------------------------------------------------------------------------------- store


class ImageStore:
    """`store[i]` -> float32 HxWx3 in [0, 1] for `cameras[i]`, decoded lazily through a bounded LRU cache.

    Pipeline: read -> undistort (if the camera has an `Undistortion`) -> INTER_AREA resize to the camera size ->
    composite alpha on `background` (None: black, i.e. premultiplied colour). Processed images are cached as PNG
    under `cache_dir` (premultiplied RGBA when the source has alpha), keyed by source file identity, target size
    and undistortion parameters, so later runs skip the work.
    """

    def __init__(self, cameras: Sequence[Camera], *, cache_dir: Path | None = None,
                 background: Sequence[float] | None = None, max_cached: int = 64) -> None:
        self.cameras = list(cameras)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.background = None if background is None else np.asarray(background, np.float32).reshape(3)
        self.max_cached = max(0, int(max_cached))
        self._lru: OrderedDict[int, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.cameras)

    @property
    def num_cached(self) -> int:
        """How many images are held in memory right now (never more than `max_cached`)."""
        return len(self._lru)

    def __getitem__(self, i: int) -> np.ndarray:
        with self._lock:
            if i in self._lru:
                self._lru.move_to_end(i)
                return self._lru[i]
        img = self._composite(self.load_processed(i))
        with self._lock:
            if self.max_cached > 0:
                self._lru[i] = img
                self._lru.move_to_end(i)
                while len(self._lru) > self.max_cached:
                    self._lru.popitem(last=False)
        return img

    # -- processing

    def cache_path(self, i: int) -> Path | None:
        """Where camera i's processed image is cached, or None when no processing is needed or no cache_dir."""
        cam = self.cameras[i]
        if self.cache_dir is None or cam.image_path is None:
            return None
        src = Path(cam.image_path)
        size = image_size(src)
        if size is None or (cam.undistortion is None and size == (cam.width, cam.height)):
            return None
        st = src.stat()
        h = hashlib.sha1()
        h.update(f"{src.resolve()}|{st.st_mtime_ns}|{st.st_size}|{cam.width}x{cam.height}".encode())
        if cam.undistortion is not None:
            u = cam.undistortion
            for a in (u.K_src, u.dist, u.K_pinhole if u.K_pinhole is not None else cam.K):
                h.update(np.asarray(a, np.float64).tobytes())
            h.update(repr(u.size).encode())
        return self.cache_dir / f"{src.stem}-{h.hexdigest()[:20]}.png"

    def load_processed(self, i: int) -> np.ndarray:
        """uint8 image at the camera's size (3 channels, or 4 with premultiplied alpha), via the disk cache."""
        cam = self.cameras[i]
        if cam.image_path is None:
            raise ValueError(f"camera {cam.name} has no image_path")
        src = Path(cam.image_path)
        cached = self.cache_path(i) if src.is_file() else None
        if cached is not None and cached.is_file():
            try:
                with Image.open(cached) as im:
                    arr = np.asarray(im)
                if arr.shape[:2] == (cam.height, cam.width):
                    return arr
            except Exception:
                pass  # a damaged cache entry is recomputed below
        arr = read_image(src)
        h, w = arr.shape[:2]
        und = cam.undistortion
        if und is not None:
            expected = und.size or (cam.width, cam.height)
            if (w, h) != tuple(expected):
                raise file_error(src, f"image is {w}x{h} but the camera says {expected[0]}x{expected[1]}")
            map_x, map_y = undistortion_maps(und, cam)
            arr = cv2.remap(arr, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        elif (w, h) != (cam.width, cam.height) and not _downsamples_to((w, h), (cam.width, cam.height)):
            raise file_error(src, f"image is {w}x{h}, which does not match the camera's {cam.width}x{cam.height}")
        if arr.shape[:2] != (cam.height, cam.width):
            arr = cv2.resize(arr, (cam.width, cam.height), interpolation=cv2.INTER_AREA)
        if cached is not None:
            _write_png_atomic(cached, arr)
        return arr

    def _composite(self, arr: np.ndarray) -> np.ndarray:
        img = arr.astype(np.float32) / 255.0
        if img.shape[-1] == 4:
            rgb, a = img[..., :3], img[..., 3:4]
            if self.background is not None:
                rgb = rgb + self.background * (1.0 - a)  # colour is premultiplied
            img = rgb
        return np.ascontiguousarray(np.clip(img, 0.0, 1.0))


def _write_png_atomic(path: Path, arr: np.ndarray) -> None:
    """Write through a temp file and os.replace so a crash or a parallel writer never leaves half a PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".png", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            Image.fromarray(arr).save(f, format="PNG", compress_level=1)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
