"""Every pixel format a photo can arrive in reads as the right RGB(A), or as a one-line error.

Each case writes a crop of a real cup_colmap photo in one format -- raw PNG/TIFF bytes built here where PIL
cannot write the format, PIL or OpenCV otherwise -- and compares `read_image` with a conversion computed here in
numpy from the samples that were written (for JPEG, lossy, from the samples the decoder returns). Conventions:
n-bit samples -> round(v * 255 / (2**n - 1)); grey -> R = G = B; output premultiplied, round(c * a / 255).
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import pytest
from PIL import Image

from splatkit.data import ImageStore
from splatkit.data.cameras import Camera
from splatkit.data.images import has_alpha, read_image
from splatkit.data.transforms_json import _has_alpha
from splatkit.errors import SplatkitError

H, W = 48, 64


# ------------------------------------------------------------------------------------ the photo and writers


@pytest.fixture(scope="module")
def photo(shared_datasets: Path) -> dict[str, np.ndarray]:
    """A textured 64x48 crop of a real photo, and greyscale, 16-bit and alpha planes derived from it."""
    jpgs = sorted((shared_datasets / "cup_colmap" / "images").glob("*.jpg"))
    if not jpgs:
        pytest.skip("cup_colmap images not found")
    with Image.open(jpgs[0]) as im:
        rgb8 = np.asarray(im.convert("RGB"))[200:200 + H, 300:300 + W].copy()
    rng = np.random.default_rng(0)
    rgb16 = np.clip(rgb8.astype(np.int64) * 257 + rng.integers(-128, 129, rgb8.shape), 0, 65535).astype(np.uint16)
    a8 = rgb8[..., 2].copy()
    a8[:, 0], a8[:, -1] = 0, 255  # fully transparent and fully opaque pixels too
    a16 = rgb16[..., 2].copy()
    a16[:, 0], a16[:, -1] = 0, 65535
    return {"rgb8": rgb8, "grey8": rgb8[..., 1].copy(), "rgb16": rgb16, "grey16": rgb16[..., 1].copy(),
            "a8": a8, "a16": a16}


def _pack(rows: np.ndarray, bits: int) -> np.ndarray:
    """HxN samples of `bits` bits -> rows of bytes, most significant bit first (PNG and TIFF order)."""
    planes = (rows[..., None].astype(np.uint32) >> np.arange(bits - 1, -1, -1)) & 1
    return np.packbits(planes.reshape(rows.shape[0], -1).astype(np.uint8), axis=1)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def write_png(path: Path, samples: np.ndarray, colour_type: int, bits: int, palette: np.ndarray | None = None,
              trns: bytes | None = None) -> Path:
    """A PNG holding exactly these raw samples (HxW or HxWxC), byte by byte as the spec lays them out."""
    h, w = samples.shape[:2]
    rows = samples.reshape(h, -1)
    data = rows.astype(">u2").view(np.uint8) if bits == 16 else _pack(rows, bits) if bits < 8 else rows.astype(np.uint8)
    out = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, bits, colour_type, 0, 0, 0))
    if palette is not None:
        out += _png_chunk(b"PLTE", palette.astype(np.uint8).tobytes())
    if trns is not None:
        out += _png_chunk(b"tRNS", trns)
    out += _png_chunk(b"IDAT", zlib.compress(b"".join(b"\0" + r.tobytes() for r in data)))
    path.write_bytes(out + _png_chunk(b"IEND", b""))
    return path


def write_tiff(path: Path, samples: np.ndarray, photometric: int, *, bits: int | None = None, extra: tuple = (),
               sample_format: int = 1, big_endian: bool = False) -> Path:
    """An uncompressed one-strip TIFF holding exactly these raw samples (HxW or HxWxC)."""
    h, w = samples.shape[:2]
    c = 1 if samples.ndim == 2 else samples.shape[2]
    bits = bits or samples.dtype.itemsize * 8
    e = ">" if big_endian else "<"
    rows = samples.reshape(h, -1)
    data = (_pack(rows, bits) if bits % 8 else rows.astype(rows.dtype.newbyteorder(e))).tobytes()
    tags = [(256, 4, [w]), (257, 4, [h]), (258, 3, [bits] * c), (259, 3, [1]), (262, 3, [photometric]),
            (273, 4, [0]), (277, 3, [c]), (278, 4, [h]), (279, 4, [len(data)]), (284, 3, [1]),
            (339, 3, [sample_format] * c)] + ([(338, 3, list(extra))] if extra else [])
    if photometric == 6:
        tags.append((530, 3, [1, 1]))  # YCbCrSubSampling: none (the default is 2x2)
    tags.sort()
    blob_at = 8 + 2 + 12 * len(tags) + 4
    entries, blobs = b"", b""
    for tag, typ, values in tags:
        raw = struct.pack(e + ("H" if typ == 3 else "I") * len(values), *values)
        if len(raw) > 4:
            entries += struct.pack(e + "HHII", tag, typ, len(values), blob_at + len(blobs))
            blobs += raw
        else:
            entries += struct.pack(e + "HHI", tag, typ, len(values)) + raw.ljust(4, b"\0")
    data_at = blob_at + len(blobs)
    strip = struct.pack(e + "HHII", 273, 4, 1, 0)
    entries = entries.replace(strip, struct.pack(e + "HHII", 273, 4, 1, data_at))
    header = (b"MM\0*" if big_endian else b"II*\0") + struct.pack(e + "IH", 8, len(tags))
    path.write_bytes(header + entries + b"\0\0\0\0" + blobs + data)
    return path


def _strip_app14(jpeg: bytes) -> bytes:
    """The JPEG without its Adobe APP14 segment (what a non-Adobe CMYK JPEG looks like)."""
    out, i = bytearray(jpeg[:2]), 2
    while jpeg[i + 1] != 0xDA:
        n = struct.unpack(">H", jpeg[i + 2:i + 4])[0]
        if jpeg[i + 1] != 0xEE:
            out += jpeg[i:i + 2 + n]
        i += 2 + n
    return bytes(out + jpeg[i:])


# ------------------------------------------------------------------------------ independent expectations


def to8(v: np.ndarray, vmax: int) -> np.ndarray:
    return np.floor(np.asarray(v, np.float64) * 255.0 / vmax + 0.5).astype(np.uint8)


def grey(g: np.ndarray) -> np.ndarray:
    return np.repeat(g[..., None], 3, axis=-1)


def premult(rgb: np.ndarray, a: np.ndarray) -> np.ndarray:
    c = np.floor(rgb.astype(np.float64) * a[..., None].astype(np.float64) / 255.0 + 0.5).astype(np.uint8)
    return np.dstack([c, a])


def key_alpha(samples: np.ndarray, key) -> np.ndarray:
    s = samples.reshape(*samples.shape[:2], -1)
    return np.where((s == np.asarray(key).reshape(-1)).all(axis=-1), 0, 255).astype(np.uint8)


def cmyk_to_rgb(cmyk: np.ndarray) -> np.ndarray:
    """The usual ICC-less formula (Pillow's and libjpeg's too): R = (255 - C)(255 - K) / 255, rounded."""
    c = cmyk.astype(np.float64)
    return np.floor((255 - c[..., :3]) * (255 - c[..., 3:]) / 255 + 0.5).astype(np.uint8)


def _palette(p: dict, n: int) -> np.ndarray:
    """n palette colours taken from the photo itself."""
    return p["rgb8"].reshape(-1, 3)[np.linspace(0, H * W - 1, n).astype(int)]


def _cmyk(p: dict) -> np.ndarray:
    """The photo as CMYK with full grey-component replacement, K = min(C, M, Y)."""
    cmy = 255 - p["rgb8"].astype(np.int64)
    k = cmy.min(axis=-1, keepdims=True)
    return np.concatenate([cmy - k, k], axis=-1).astype(np.uint8)


def _decoded(path: Path) -> np.ndarray:
    """The samples a decoder returns (PIL/libjpeg), for lossy formats."""
    with Image.open(path) as im:
        return np.asarray(im)


# -------------------------------------------------------------------------------------------- the cases

Case = Callable[[Path, dict], tuple[Path, np.ndarray]]
CASES: dict[str, Case] = {}


def case(name: str) -> Callable[[Case], Case]:
    def register(fn: Case) -> Case:
        CASES[name] = fn
        return fn
    return register


@case("png-L8")
def _(d, p):
    return write_png(d / "x.png", p["grey8"], 0, 8), grey(p["grey8"])


@case("png-L8-tRNS")
def _(d, p):
    g, key = p["grey8"], int(p["grey8"][5, 5])
    return write_png(d / "x.png", g, 0, 8, trns=struct.pack(">H", key)), premult(grey(g), key_alpha(g, key))


@case("png-L4-tRNS")
def _(d, p):  # PIL widens 4-bit pixels to 8 bits but leaves the tRNS key at 4 bits
    g, key = p["grey8"] >> 4, int(p["grey8"][5, 5] >> 4)
    return write_png(d / "x.png", g, 0, 4, trns=struct.pack(">H", key)), premult(grey(to8(g, 15)), key_alpha(g, key))


@case("png-L2")
def _(d, p):
    return write_png(d / "x.png", p["grey8"] >> 6, 0, 2), grey(to8(p["grey8"] >> 6, 3))


@case("png-1bit-tRNS")
def _(d, p):
    b = (p["grey8"] > 127).astype(np.uint8)
    return write_png(d / "x.png", b, 0, 1, trns=struct.pack(">H", 1)), premult(grey(b * 255), key_alpha(b, 1))


@case("png-LA8")
def _(d, p):
    return write_png(d / "x.png", np.dstack([p["grey8"], p["a8"]]), 4, 8), premult(grey(p["grey8"]), p["a8"])


@case("png-I16")
def _(d, p):
    return write_png(d / "x.png", p["grey16"], 0, 16), grey(to8(p["grey16"], 65535))


@case("png-I16-by-PIL")
def _(d, p):  # how the user made theirs
    Image.fromarray(p["grey16"]).save(d / "x.png")
    return d / "x.png", grey(to8(p["grey16"], 65535))


@case("png-I16-tRNS")
def _(d, p):
    g, key = p["grey16"], int(p["grey16"][5, 5])
    return (write_png(d / "x.png", g, 0, 16, trns=struct.pack(">H", key)),
            premult(grey(to8(g, 65535)), key_alpha(g, key)))


@case("png-LA16")
def _(d, p):  # PIL opens this as 8-bit RGBA
    return (write_png(d / "x.png", np.dstack([p["grey16"], p["a16"]]), 4, 16),
            premult(grey(to8(p["grey16"], 65535)), to8(p["a16"], 65535)))


@case("png-RGB8")
def _(d, p):
    return write_png(d / "x.png", p["rgb8"], 2, 8), p["rgb8"]


@case("png-RGB8-tRNS")
def _(d, p):
    key = tuple(int(v) for v in p["rgb8"][5, 5])
    return (write_png(d / "x.png", p["rgb8"], 2, 8, trns=struct.pack(">HHH", *key)),
            premult(p["rgb8"], key_alpha(p["rgb8"], key)))


@case("png-RGBA8")
def _(d, p):
    return write_png(d / "x.png", np.dstack([p["rgb8"], p["a8"]]), 6, 8), premult(p["rgb8"], p["a8"])


@case("png-RGB16")
def _(d, p):
    return write_png(d / "x.png", p["rgb16"], 2, 16), to8(p["rgb16"], 65535)


@case("png-RGB16-by-OpenCV")
def _(d, p):
    cv2.imwrite(str(d / "x.png"), p["rgb16"][..., ::-1])
    return d / "x.png", to8(p["rgb16"], 65535)


@case("png-RGB16-tRNS")
def _(d, p):
    key = tuple(int(v) for v in p["rgb16"][5, 5])
    return (write_png(d / "x.png", p["rgb16"], 2, 16, trns=struct.pack(">HHH", *key)),
            premult(to8(p["rgb16"], 65535), key_alpha(p["rgb16"], key)))


@case("png-RGBA16")
def _(d, p):
    return (write_png(d / "x.png", np.dstack([p["rgb16"], p["a16"]]), 6, 16),
            premult(to8(p["rgb16"], 65535), to8(p["a16"], 65535)))


@case("png-P8")
def _(d, p):
    pal = _palette(p, 256)
    return write_png(d / "x.png", p["grey8"], 3, 8, palette=pal), pal[p["grey8"]]


@case("png-P8-tRNS-index")
def _(d, p):
    pal, idx, key = _palette(p, 256), p["grey8"], int(p["grey8"][5, 5])
    alpha = np.where(idx == key, 0, 255).astype(np.uint8)
    return write_png(d / "x.png", idx, 3, 8, palette=pal, trns=b"\xff" * key + b"\0"), premult(pal[idx], alpha)


@case("png-P8-tRNS-alpha")
def _(d, p):  # alpha for the first 200 entries only: the rest are opaque
    pal, idx, key = _palette(p, 256), p["grey8"], int(p["grey8"][5, 5])
    pal_alpha = np.full(256, 255, np.uint8)
    pal_alpha[:200] = np.arange(200) * 255 // 199
    pal_alpha[key] = 0
    trns = pal_alpha[:max(200, key + 1)].tobytes()
    return write_png(d / "x.png", idx, 3, 8, palette=pal, trns=trns), premult(pal[idx], pal_alpha[idx])


@case("png-P4")
def _(d, p):
    pal, idx = _palette(p, 16), p["grey8"] >> 4
    return write_png(d / "x.png", idx, 3, 4, palette=pal), pal[idx]


@case("gif-P-transparency")
def _(d, p):
    pal, idx, key = _palette(p, 256), p["grey8"], int(p["grey8"][5, 5])
    im = Image.frombytes("P", (W, H), idx.tobytes())
    im.putpalette(pal.tobytes())
    im.save(d / "x.gif", transparency=key, optimize=False)
    return d / "x.gif", premult(pal[idx], np.where(idx == key, 0, 255).astype(np.uint8))


@case("jpeg-L")
def _(d, p):
    Image.fromarray(p["grey8"]).save(d / "x.jpg", quality=95)
    return d / "x.jpg", grey(_decoded(d / "x.jpg"))


@case("jpeg-RGB")
def _(d, p):
    Image.fromarray(p["rgb8"]).save(d / "x.jpg", quality=95)
    return d / "x.jpg", _decoded(d / "x.jpg")


@case("jpeg-CMYK-Adobe")
def _(d, p):  # PIL writes Adobe-style inverted CMYK with an APP14 marker, as Photoshop does
    Image.frombytes("CMYK", (W, H), _cmyk(p).tobytes()).save(d / "x.jpg", quality=100)
    assert b"Adobe" in (d / "x.jpg").read_bytes()
    samples = _decoded(d / "x.jpg")
    assert np.abs(samples.astype(int) - _cmyk(p)).mean() < 1.0  # the decoder undid the inversion
    return d / "x.jpg", cmyk_to_rgb(samples)


@case("jpeg-CMYK-plain")
def _(d, p):  # no APP14: samples are plain CMYK, but PIL inverts them anyway
    Image.frombytes("CMYK", (W, H), (255 - _cmyk(p)).tobytes()).save(d / "y.jpg", quality=100)
    (d / "x.jpg").write_bytes(_strip_app14((d / "y.jpg").read_bytes()))
    samples = 255 - _decoded(d / "x.jpg")  # undo PIL's unconditional inversion: libjpeg's plain output
    assert np.abs(samples.astype(int) - _cmyk(p)).mean() < 1.0
    return d / "x.jpg", cmyk_to_rgb(samples)


@case("tiff-I16B")
def _(d, p):
    return write_tiff(d / "x.tif", p["grey16"], 1, big_endian=True), grey(to8(p["grey16"], 65535))


@case("tiff-I12")
def _(d, p):  # PIL reports mode I;16 but the values stay 0..4095
    g = p["grey16"] >> 4
    return write_tiff(d / "x.tif", g, 1, bits=12), grey(to8(g, 4095))


@case("tiff-I32")
def _(d, p):  # PIL mode I
    g = p["grey16"].astype(np.int32)
    return write_tiff(d / "x.tif", g, 1, sample_format=2), grey(to8(g, 65535))


@case("tiff-F")
def _(d, p):
    f = p["grey16"].astype(np.float32) / 65535
    f[0, :3] = (-0.25, 1.5, np.inf)
    expected = grey(np.floor(np.clip(f, 0, 1) * 255.0 + 0.5).astype(np.uint8))
    return write_tiff(d / "x.tif", f, 1, sample_format=3), expected


@case("tiff-RGB16")
def _(d, p):
    return write_tiff(d / "x.tif", p["rgb16"], 2), to8(p["rgb16"], 65535)


@case("tiff-RGBA16")
def _(d, p):
    return (write_tiff(d / "x.tif", np.dstack([p["rgb16"], p["a16"]]), 2, extra=(2,)),
            premult(to8(p["rgb16"], 65535), to8(p["a16"], 65535)))


@case("tiff-RGBX8")
def _(d, p):  # an unspecified extra sample is ignored
    return write_tiff(d / "x.tif", np.dstack([p["rgb8"], p["a8"]]), 2, extra=(0,)), p["rgb8"]


@case("tiff-RGBa8-associated")
def _(d, p):  # stored premultiplied: returned as stored, not un- and re-premultiplied
    pm = premult(p["rgb8"], p["a8"])
    return write_tiff(d / "x.tif", pm, 2, extra=(1,)), pm


@case("tiff-RGBa16-associated")
def _(d, p):
    c16 = np.floor(p["rgb16"] * (p["a16"][..., None] / 65535.0) + 0.5).astype(np.uint16)
    return (write_tiff(d / "x.tif", np.dstack([c16, p["a16"]]), 2, extra=(1,)),
            np.dstack([to8(c16, 65535), to8(p["a16"], 65535)]))


@case("tiff-La-associated")
def _(d, p):
    pm = premult(grey(p["grey8"]), p["a8"])[..., [0, 3]]
    return write_tiff(d / "x.tif", pm, 1, extra=(1,)), np.dstack([grey(pm[..., 0]), pm[..., 1]])


@case("tiff-CMYK8")
def _(d, p):
    return write_tiff(d / "x.tif", _cmyk(p), 5), cmyk_to_rgb(_cmyk(p))


@case("tiff-YCbCr")
def _(d, p):  # JFIF full-range BT.601 both ways
    r, g, b = np.moveaxis(p["rgb8"].astype(np.float64), -1, 0)
    y = 0.299 * r + 0.587 * g + 0.114 * b
    ycc = np.clip(np.floor(np.stack([y, 128 + (b - y) / 1.772, 128 + (r - y) / 1.402], -1) + 0.5), 0, 255)
    Y, cb, cr = np.moveaxis(ycc, -1, 0)
    rgb = np.stack([Y + 1.402 * (cr - 128), Y - 0.344136 * (cb - 128) - 0.714136 * (cr - 128),
                    Y + 1.772 * (cb - 128)], -1)
    expected = np.floor(np.clip(rgb, 0, 255) + 0.5).astype(np.uint8)
    assert np.abs(expected.astype(int) - p["rgb8"]).max() <= 2
    return write_tiff(d / "x.tif", ycc.astype(np.uint8), 6), expected


@case("tiff-PA")
def _(d, p):
    pal, idx = _palette(p, 256), p["grey8"]
    im = Image.frombytes("P", (W, H), idx.tobytes())
    im.putpalette(pal.tobytes())
    im = im.convert("PA")
    im.putalpha(Image.fromarray(p["a8"]))
    im.save(d / "x.tif")
    return d / "x.tif", premult(pal[idx], p["a8"])


def _mode_of(path: Path) -> str:
    with Image.open(path) as im:
        return im.mode


EXPECTED_MODES = {  # what PIL calls each file: the table covers the modes read_image handles
    "png-L8": "L", "png-L4-tRNS": "L", "png-1bit-tRNS": "1", "png-LA8": "LA", "png-I16": "I;16", "png-LA16": "RGBA",
    "png-RGB16": "RGB", "png-RGBA16": "RGBA", "png-P8": "P", "gif-P-transparency": "P", "jpeg-L": "L",
    "jpeg-CMYK-Adobe": "CMYK", "tiff-I16B": "I;16B", "tiff-I12": "I;16", "tiff-I32": "I", "tiff-F": "F",
    "tiff-La-associated": "La", "tiff-RGBa8-associated": "RGBA", "tiff-CMYK8": "CMYK", "tiff-YCbCr": "YCbCr",
    "tiff-PA": "PA",
}


@pytest.mark.parametrize("name", list(CASES))
def test_mode_reads_as_independent_conversion(name: str, photo: dict, tmp_path: Path) -> None:
    path, expected = CASES[name](tmp_path, photo)
    if name in EXPECTED_MODES:
        assert _mode_of(path) == EXPECTED_MODES[name]
    out = read_image(path)
    assert out.dtype == np.uint8 and out.shape == expected.shape and out.flags.c_contiguous
    np.testing.assert_array_equal(out, expected)
    with Image.open(path) as im:  # scene loaders decide on a background with the same rule
        assert has_alpha(im) == (out.shape[-1] == 4)
    assert _has_alpha(path) == (out.shape[-1] == 4)


@pytest.mark.parametrize("mode", ["RGBa", "RGBX"])
def test_modes_no_file_format_opens_to(mode: str, photo: dict, tmp_path: Path, monkeypatch) -> None:
    """RGBa (premultiplied) and RGBX come from in-memory images, not files; they read as their samples."""
    samples = premult(photo["rgb8"], photo["a8"]) if mode == "RGBa" else np.dstack([photo["rgb8"], photo["a8"]])
    fake = Image.frombytes(mode, (W, H), samples.tobytes())
    (tmp_path / "x.png").write_bytes(b"")
    monkeypatch.setattr(Image, "open", lambda _path: fake)
    out = read_image(tmp_path / "x.png")
    np.testing.assert_array_equal(out, samples if mode == "RGBa" else photo["rgb8"])


def test_16bit_grey_png_is_not_white(photo: dict, tmp_path: Path) -> None:
    """The reported bug: PIL's convert("RGB") clips I;16 samples to 255, so mid-grey read as white."""
    g16 = np.full((H, W), 32768, np.uint16)
    g16[:, W // 2:] = photo["grey16"][:, W // 2:]
    Image.fromarray(g16).save(tmp_path / "grey16.png")
    out = read_image(tmp_path / "grey16.png")
    assert out.shape == (H, W, 3)
    assert (out[:, :W // 2] == 128).all()
    assert abs(float(out[:, W // 2:].mean()) - float(photo["grey8"][:, W // 2:].mean())) < 1.0


def test_16bit_rounds_instead_of_taking_the_high_byte(tmp_path: Path) -> None:
    """PIL reads 16-bit RGB PNGs as v >> 8; 51200 is 200.0 there but round(51200 * 255 / 65535) = 199."""
    write_png(tmp_path / "x.png", np.full((2, 2, 3), 51200, np.uint16), 2, 16)
    with Image.open(tmp_path / "x.png") as im:
        assert np.asarray(im)[0, 0, 0] == 200
    assert (read_image(tmp_path / "x.png") == 199).all()


@pytest.mark.parametrize("name, samples, kwargs, problem", [
    ("lab.tif", np.full((4, 4, 3), 100, np.uint8), {"photometric": 8}, "unsupported pixel format LAB"),
    ("i32.tif", np.full((4, 4), 70000, np.int32), {"photometric": 1, "sample_format": 2},
     "unsupported pixel format I with samples outside 0..65535"),
    ("nan.tif", np.full((4, 4), np.nan, np.float32), {"photometric": 1, "sample_format": 3},
     "unsupported pixel format F with NaN samples"),
])
def test_unsupported_formats_are_one_line_errors(name: str, samples: np.ndarray, kwargs: dict, problem: str,
                                                 tmp_path: Path) -> None:
    path = write_tiff(tmp_path / name, samples, **kwargs)
    with pytest.raises(SplatkitError) as info:
        read_image(path)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(f"{path}: {problem}"), msg


@pytest.mark.parametrize("name", ["png-LA8", "png-LA16", "png-P8-tRNS-index", "png-P8-tRNS-alpha"])
def test_image_store_composites_on_background(name: str, photo: dict, tmp_path: Path) -> None:
    """End to end: premultiplied RGBA from read_image + background * (1 - alpha) in ImageStore."""
    path, expected = CASES[name](tmp_path, photo)
    bg = np.array([0.2, 0.4, 0.6], np.float32)
    cam = Camera("x", W, H, np.array([[50.0, 0, W / 2], [0, 50.0, H / 2], [0, 0, 1]]), np.eye(4), path)
    img = ImageStore([cam], background=bg)[0]
    a = expected[..., 3:].astype(np.float32) / 255
    want = np.clip(expected[..., :3].astype(np.float32) / 255 + bg * (1 - a), 0, 1)
    assert img.shape == (H, W, 3) and img.dtype == np.float32
    np.testing.assert_allclose(img, want, atol=1e-6)
    clear = expected[..., 3] == 0
    assert clear.any() and np.allclose(img[clear], bg, atol=1e-6)  # fully transparent: the background
