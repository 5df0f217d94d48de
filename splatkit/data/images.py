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
from typing import Callable, Sequence

import cv2
import numpy as np
from PIL import Image

from splatkit.data.cameras import Camera, Undistortion
from splatkit.data.masks import KEEP, read_mask
from splatkit.errors import SplatkitError, file_error


# --------------------------------------------------------------------------------------------- undistortion


def opencv_intrinsics(K: np.ndarray) -> np.ndarray:
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
    K_cv, _ = cv2.getOptimalNewCameraMatrix(opencv_intrinsics(K_src), dist, (width, height), 0, (width, height))
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
    return cv2.initUndistortRectifyMap(opencv_intrinsics(und.K_src), np.asarray(und.dist, np.float64), None,
                                       opencv_intrinsics(K_pin), (int(w), int(h)), cv2.CV_32FC1)


# ------------------------------------------------------------------------------------------------ reading

_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")
_KEYED_MODES = ("1", "L", "I", "I;16", "I;16L", "I;16B", "I;16N", "RGB", "P")  # where a tRNS key means something
_GREY16_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


def has_alpha(im: Image.Image) -> bool:
    """Whether `read_image` gives this opened image an alpha channel: an alpha band, a PNG/GIF transparency key,
    or a palette with alpha. Scene loaders ask this too, so they and the reader cannot disagree."""
    return (im.mode in _ALPHA_MODES
            or (im.mode in _KEYED_MODES and "transparency" in im.info)
            or (im.mode == "P" and im.palette is not None and im.palette.mode == "RGBA"))


def _file_bit_depth(im: Image.Image, path: Path) -> int | None:
    """Bits per sample as stored in the file (PIL widens or truncates them without saying), None if unknown."""
    if im.format == "PNG":
        with open(path, "rb") as f:
            return f.read(25)[24]  # IHDR, which the PNG spec puts first
    if im.format == "TIFF":
        return int(np.max(im.tag_v2.get(258, 1)))  # BitsPerSample
    return None


def _to_8bit(v: np.ndarray, vmax: int) -> np.ndarray:
    """round(v * 255 / vmax) in integers; vmax is odd (2**bits - 1), so there are no ties to break."""
    return ((v.astype(np.int64) * 255 + vmax // 2) // vmax).astype(np.uint8)


def _key_alpha(samples: np.ndarray, key: object) -> np.ndarray:
    """Alpha from a tRNS colour key: 0 where the raw samples equal it, 255 elsewhere."""
    s = samples.reshape(*samples.shape[:2], -1)
    return np.where(np.all(s == np.asarray(key).reshape(-1), axis=-1), 0, 255).astype(np.uint8)


def _opencv_rgb(path: Path, size: tuple[int, int]) -> np.ndarray:
    """Raw RGB(A) samples (uint8 or uint16) from OpenCV, for files whose samples PIL would alter."""
    arr = cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None or arr.ndim != 3 or arr.shape[1::-1] != size:
        raise ValueError("OpenCV could not decode its samples")
    return arr[..., [2, 1, 0, 3][:arr.shape[2]]]


def _decode(im: Image.Image, path: Path) -> tuple[np.ndarray, np.ndarray | None, bool]:
    """(uint8 HxWx3 or HxWx1 colour, uint8 HxW alpha or None, whether colour is already premultiplied)."""
    mode, key = im.mode, im.info.get("transparency")
    if mode in ("1", "L"):
        grey = np.asarray(im).astype(np.uint8) * (255 if mode == "1" else 1)
        depth = _file_bit_depth(im, path) or 8
        if isinstance(key, int) and depth < 8 and key < 2 ** depth:  # PIL scales the pixels but not the key
            key = key * 255 // (2 ** depth - 1)
        return grey[..., None], None if key is None else _key_alpha(grey, key), False
    if mode in _GREY16_MODES or mode == "I":
        raw = np.asarray(im).astype(np.int64)
        if mode == "I" and (raw.min() < 0 or raw.max() > 65535):
            raise file_error(path, "unsupported pixel format I with samples outside 0..65535")
        depth = (_file_bit_depth(im, path) or 16) if mode != "I" else 16
        alpha = None if key is None else _key_alpha(raw, key)
        return _to_8bit(raw, 2 ** depth - 1)[..., None], alpha, False
    if mode == "F":
        v = np.asarray(im, np.float64)
        if np.isnan(v).any():
            raise file_error(path, "unsupported pixel format F with NaN samples")
        return np.floor(np.clip(v, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)[..., None], None, False
    if mode in ("LA", "La", "RGBa", "RGBX"):
        arr = np.asarray(im)
        return arr[..., :-1], None if mode == "RGBX" else arr[..., -1], mode in ("La", "RGBa")
    if mode in ("P", "PA"):
        arr = np.asarray(im)
        pal = np.zeros((256, 4), np.uint8)
        pal[:, 3] = 255  # indices past the palette's end are opaque black, as in PIL
        entries = np.asarray(im.getpalette("RGBA") or [], np.uint8).reshape(-1, 4)[:256]
        pal[:len(entries)] = entries
        if isinstance(key, int):
            pal[key, 3] = 0
        elif isinstance(key, bytes):
            pal[:len(key), 3] = np.frombuffer(key, np.uint8)[:256]
        idx = arr[..., 0] if mode == "PA" else arr
        rgba = pal[idx]
        alpha = arr[..., 1] if mode == "PA" else rgba[..., 3] if has_alpha(im) else None
        return rgba[..., :3], alpha, False
    if mode in ("RGB", "RGBA"):
        depth = _file_bit_depth(im, path) or 8
        associated = im.format == "TIFF" and 1 in np.atleast_1d(im.tag_v2.get(338, ()))  # ExtraSamples
        if depth > 8 or associated:  # PIL keeps only the high byte, or un-premultiplies with truncation
            raw = _opencv_rgb(path, im.size)
            arr = _to_8bit(raw, 2 ** depth - 1) if raw.dtype == np.uint16 else raw
        else:
            raw = arr = np.asarray(im)
        if mode == "RGBA":
            return arr[..., :3], arr[..., 3], associated
        return arr[..., :3], None if key is None else _key_alpha(raw[..., :3], key), False
    if mode == "CMYK":
        cmyk = np.asarray(im).astype(np.int64)
        if im.format == "JPEG" and "adobe" not in im.info:
            cmyk = 255 - cmyk  # PIL assumes Adobe's inverted CMYK even without Adobe's APP14 marker
        rgb = ((255 - cmyk[..., :3]) * (255 - cmyk[..., 3:]) + 127) // 255
        return rgb.astype(np.uint8), None, False
    if mode == "YCbCr":
        y, cb, cr = np.moveaxis(np.asarray(im).astype(np.float64), -1, 0)
        rgb = np.stack([y + 1.402 * (cr - 128), y - 0.344136 * (cb - 128) - 0.714136 * (cr - 128),
                        y + 1.772 * (cb - 128)], axis=-1)
        return np.floor(np.clip(rgb, 0.0, 255.0) + 0.5).astype(np.uint8), None, False
    raise file_error(path, f"unsupported pixel format {mode} (save it as RGB, RGBA or greyscale)")


def read_image(path: Path) -> np.ndarray:
    """uint8 HxWx3, or HxWx4 with premultiplied alpha (so resampling does not bleed hidden colours into edges).

    Every sample is first brought to 8 bits as round(v * 255 / (2**bits - 1)) -- for 16-bit files
    round(v * 255 / 65535), not PIL's high byte -- then colour is premultiplied as round(c * a / 255).
    By PIL mode:

    - 1, L (incl. 1/2/4-bit PNG), I;16/I;16B/I;16L/I;16N (16-bit PNG, 12/16-bit TIFF): grey, R = G = B.
      I (32-bit int; old PIL's 16-bit PNG, 16-bit PGM) is read as 0..65535; other values are refused.
    - F (float TIFF): 0..1 -> 0..255, clipped; NaN is refused.
    - LA, PA, RGBA: straight alpha. La, RGBa and TIFFs with associated alpha: colour already premultiplied.
    - 16-bit RGB/RGBA PNG and TIFF (incl. 16-bit grey + alpha PNG, which PIL calls RGBA): decoded by OpenCV.
    - P: palette lookup; tRNS (one transparent index or per-entry alpha) becomes alpha.
    - tRNS colour keys of 1/L/I;16/RGB PNGs make alpha 0 where the raw samples equal the key.
    - CMYK (JPEG, TIFF), no ICC: R = round((255 - C) * (255 - K) / 255), likewise G, B. JPEGs are inverted
      only with Adobe's APP14 marker. 16-bit CMYK TIFF keeps PIL's high byte (OpenCV cannot read it).
    - YCbCr: JFIF (full-range BT.601). RGBX: X dropped.
    - Anything else (LAB, HSV, ...) is a one-line `SplatkitError`.

    Like COLMAP and nerfstudio, the EXIF orientation tag is not applied (cameras were solved on the stored
    pixels), and embedded ICC profiles are ignored.
    """
    if not path.is_file():
        raise file_error(path, "image file is missing")
    try:
        with Image.open(path) as im:
            im.load()
            colour, alpha, premultiplied = _decode(im, path)
    except SplatkitError:
        raise
    except Exception as e:  # PIL raises many types for corrupt files
        raise file_error(path, f"unreadable or corrupt image ({type(e).__name__}: {e})".replace("\n", " ")) from None
    colour = np.broadcast_to(colour, (*colour.shape[:2], 3))
    if alpha is None:
        return np.ascontiguousarray(colour)
    if not premultiplied:
        colour = ((colour.astype(np.uint16) * alpha[..., None] + 127) // 255).astype(np.uint8)
    return np.ascontiguousarray(np.concatenate([colour, alpha[..., None]], axis=-1))


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
    """`store[i]` -> float32 HxWx3 in [0, 1] for `cameras[i]`, decoded lazily through a bounded LRU cache;
    `store.mask(i)` -> bool HxWx1 (True = the pixel counts) or None when the view has no mask.

    Pipeline: read -> undistort (if the camera has an `Undistortion`) -> INTER_AREA resize to the camera size ->
    composite alpha on `background` (None: black, i.e. premultiplied colour). Masks (`Camera.mask_path`) go
    through the same resampling as 0/255 images and keep only pixels that stay 255: a pixel that mixes an
    ignored one after undistortion or downsampling is ignored too, so nothing of a masked region leaks in.
    With `alpha_as_mask` an image's alpha channel is such a mask (kept where fully opaque, where the colour is
    exact) instead of transparency. Processed images and masks are cached as PNG under `cache_dir`
    (premultiplied RGBA when the source has alpha), keyed by source file identity, target size and
    undistortion parameters, so later runs skip the work.
    """

    def __init__(self, cameras: Sequence[Camera], *, cache_dir: Path | None = None,
                 background: Sequence[float] | None = None, max_cached: int = 64,
                 alpha_as_mask: bool = False) -> None:
        self.cameras = list(cameras)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.background = None if background is None else np.asarray(background, np.float32).reshape(3)
        self.max_cached = max(0, int(max_cached))
        self.alpha_as_mask = alpha_as_mask
        self._lru: OrderedDict[int, tuple[np.ndarray, np.ndarray | None]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.cameras)

    @property
    def num_cached(self) -> int:
        """How many images are held in memory right now (never more than `max_cached`)."""
        return len(self._lru)

    def __getitem__(self, i: int) -> np.ndarray:
        return self._entry(i)[0]

    def mask(self, i: int) -> np.ndarray | None:
        """bool HxWx1, True where camera i's pixels count in the loss and the metrics; None: all of them."""
        return self._entry(i)[1]

    def _entry(self, i: int) -> tuple[np.ndarray, np.ndarray | None]:
        with self._lock:
            if i in self._lru:
                self._lru.move_to_end(i)
                return self._lru[i]
        arr = self.load_processed(i)
        keep = None if self.cameras[i].mask_path is None else self.load_mask(i) == KEEP
        if self.alpha_as_mask and arr.shape[-1] == 4:
            opaque = arr[..., 3] == KEEP
            keep = opaque if keep is None else keep & opaque
            arr = arr[..., :3]
        entry = (self._composite(arr), None if keep is None else keep[..., None])
        with self._lock:
            if self.max_cached > 0:
                self._lru[i] = entry
                self._lru.move_to_end(i)
                while len(self._lru) > self.max_cached:
                    self._lru.popitem(last=False)
        return entry

    # -- processing

    def cache_path(self, i: int) -> Path | None:
        """Where camera i's processed image is cached, or None when no processing is needed or no cache_dir."""
        cam = self.cameras[i]
        return None if cam.image_path is None else self._cache_path(Path(cam.image_path), cam)

    def _cache_path(self, src: Path, cam: Camera) -> Path | None:
        if self.cache_dir is None:
            return None
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
        return self._processed(Path(cam.image_path), cam, read_image, "image")

    def load_mask(self, i: int) -> np.ndarray:
        """uint8 HxW mask at the camera's size (255 = keep; see the class docstring), via the disk cache."""
        cam = self.cameras[i]
        return self._processed(Path(cam.mask_path), cam, read_mask, "mask")

    def _processed(self, src: Path, cam: Camera, read: Callable[[Path], np.ndarray], what: str) -> np.ndarray:
        """`read(src)` undistorted and resized to `cam`, through the disk cache."""
        cached = self._cache_path(src, cam) if src.is_file() else None
        if cached is not None and cached.is_file():
            try:
                with Image.open(cached) as im:
                    arr = np.asarray(im)
                if arr.shape[:2] == (cam.height, cam.width):
                    return arr
            except Exception:
                pass  # a damaged cache entry is recomputed below
        arr = read(src)
        h, w = arr.shape[:2]
        und = cam.undistortion
        if und is not None:
            expected = und.size or (cam.width, cam.height)
            if (w, h) != tuple(expected):
                raise file_error(src, f"{what} is {w}x{h} but the camera says {expected[0]}x{expected[1]}")
            map_x, map_y = undistortion_maps(und, cam)
            arr = cv2.remap(arr, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        elif (w, h) != (cam.width, cam.height) and not _downsamples_to((w, h), (cam.width, cam.height)):
            raise file_error(src, f"{what} is {w}x{h}, which does not match the camera's {cam.width}x{cam.height}")
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
