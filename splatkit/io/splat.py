"""antimatter15 `.splat`: no header, 32 bytes per splat (float32 position and *linear* scale, RGBA8 colour with
opacity, quaternion as 4 bytes (q*128+128) in w,x,y,z order), no SH. Axes as in the INRIA PLY.

The writer puts the largest, most opaque splats first, as antimatter15's converter does, so viewers that
stream the file show the scene's bulk early."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from splatkit.atomic import atomic_path
from splatkit.errors import file_error
from splatkit.io._common import (byte_to_opacity, gaussians_from_arrays, model_arrays, opacity_to_byte, read_file,
                                 unit_quats)
from splatkit.model.gaussians import Gaussians
from splatkit.model.sh import SH_C0

RECORD = np.dtype([("position", "<f4", 3), ("scale", "<f4", 3), ("rgba", "u1", 4), ("rot", "u1", 4)])


def load_splat(path: str | Path) -> Gaussians:
    data = read_file(path)
    if len(data) == 0:
        raise file_error(path, "empty file: a .splat holds 32 bytes per splat")
    if len(data) % RECORD.itemsize:
        raise file_error(path, f"size {len(data)} B is not a multiple of 32 B, so not a .splat file (or truncated)")
    rec = np.frombuffer(data, RECORD)
    with np.errstate(invalid="ignore"):  # signalling NaN bits in a float field would warn
        linear = rec["scale"].astype(np.float64)
    if not (np.isfinite(linear) & (linear > 0)).all():
        raise file_error(path, "contains scales that are zero, negative or not finite")
    n = len(rec)
    return gaussians_from_arrays(
        path,
        means=rec["position"],
        scales=np.log(linear),
        quats=unit_quats((rec["rot"].astype(np.float64) - 128.0) / 128.0),
        opacities=byte_to_opacity(rec["rgba"][:, 3]),
        sh0=((rec["rgba"][:, None, :3] / 255.0) - 0.5) / SH_C0,
        shN=np.zeros((n, 0, 3)),
    )


def save_splat(g: Gaussians, path: str | Path) -> None:
    """Write `.splat` (atomically). SH above degree 0 cannot be stored and is dropped."""
    a = model_arrays(g, path)
    # Sort key: log(volume * alpha), largest first (antimatter15 sorts by -exp(sum scale) * sigmoid(opacity)).
    key = a["scales"].astype(np.float64).sum(axis=1) - np.logaddexp(0.0, -a["opacities"].astype(np.float64))
    order = np.argsort(-key, kind="stable")
    rec = np.empty(len(order), RECORD)
    rec["position"] = a["means"][order]
    f32 = np.finfo(np.float32)  # keep exp() a positive finite float32, so the file reads back
    rec["scale"] = np.clip(np.exp(a["scales"][order].astype(np.float64)), f32.tiny, f32.max)
    rgb = 0.5 + SH_C0 * a["sh0"][order, 0, :].astype(np.float64)
    rec["rgba"][:, :3] = np.clip(np.rint(rgb * 255.0), 0, 255)
    rec["rgba"][:, 3] = opacity_to_byte(a["opacities"][order])
    rec["rot"] = np.clip(np.rint(unit_quats(a["quats"][order]) * 128.0 + 128.0), 0, 255)
    with atomic_path(path) as tmp:
        tmp.write_bytes(rec.tobytes())
