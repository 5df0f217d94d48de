"""Pieces every quantised splat format needs, kept in one place so the formats agree: reading a file as one
user-facing error, the 8-bit opacity code, smallest-three quaternions, and turning decoded numpy arrays into a
checked `Gaussians` (and a model back into arrays)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from splatkit.errors import file_error
from splatkit.model.gaussians import Gaussians

MAX_SH_DEGREE = 3  # what the renderers evaluate


def read_file(path: str | Path) -> bytes:
    path = Path(path)
    if not path.is_file():
        raise file_error(path, "no such file")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise file_error(path, f"cannot read the file ({exc.strerror})") from None


def check_writable(g: Gaussians, path: str | Path) -> None:
    """Refuse what no format stores faithfully and no reader accepts: an empty or non-finite model."""
    if len(g) == 0:
        raise file_error(path, "nothing to write: the model has no splats")
    if not g.is_finite():
        raise file_error(path, "cannot write a model that contains NaN or infinite values")


def model_arrays(g: Gaussians, path: str | Path) -> dict[str, np.ndarray]:
    """The raw parameters as float32 numpy arrays, after `check_writable`."""
    check_writable(g, path)
    g = g.detach().to("cpu")
    return {k: v.numpy().astype(np.float32, copy=False) for k, v in g.as_dict().items()}


def with_sh_degree(g: Gaussians, sh_degree: int | None, path: str | Path) -> Gaussians:
    """Drop SH bands above `sh_degree` (never pads: a file cannot gain detail the model lacks)."""
    if sh_degree is None:
        return g
    if not 0 <= sh_degree <= MAX_SH_DEGREE:
        raise file_error(path, f"sh_degree must be 0..{MAX_SH_DEGREE}, got {sh_degree}")
    return g.with_sh_degree(min(sh_degree, g.sh_degree))


def gaussians_from_arrays(path: str | Path, means: np.ndarray, scales: np.ndarray, quats: np.ndarray,
                          opacities: np.ndarray, sh0: np.ndarray, shN: np.ndarray) -> Gaussians:
    """Decoded arrays -> float32 `Gaussians`, rejecting NaN/inf (a float field in the file may hold any bits)."""
    arrays = [means, scales, quats, opacities, sh0, shN]
    with np.errstate(over="ignore"):  # values beyond float32 become inf, refused just below
        tensors = [torch.from_numpy(np.array(a, dtype=np.float32)) for a in arrays]  # own, writable copies
    return checked_values(Gaussians(*tensors), path)


def checked_values(g: Gaussians, path: str | Path) -> Gaussians:
    """`g`, unless a value is NaN or infinite, raw or once activated: a float field in a file may hold any bits,
    and a log-scale above ~88.7 is finite but overflows float32 as a scale (no splat is that wide)."""
    if not g.is_finite():
        raise file_error(path, "contains NaN or infinite values")
    if not bool(torch.isfinite(g.activated_scales).all()):
        raise file_error(path, "contains log-scales too large to activate (above 88.7, the float32 limit)")
    return g


def opacity_to_byte(logits: np.ndarray) -> np.ndarray:
    alpha = 0.5 * (1.0 + np.tanh(0.5 * logits.astype(np.float64)))  # sigmoid that cannot overflow
    return np.clip(np.rint(alpha * 255.0), 0, 255).astype(np.uint8)


def byte_to_opacity(b: np.ndarray) -> np.ndarray:
    """Logit of an 8-bit alpha. Bytes 0 and 255 decode half a step inside (0, 1): that keeps the logit finite
    while every alpha stays within half a quantisation step (0.5/255) of what was written."""
    alpha = np.clip(b.astype(np.float64), 0.5, 254.5) / 255.0
    return np.log(alpha / (1.0 - alpha))


def unit_quats(q: np.ndarray) -> np.ndarray:
    """Rows normalised to unit length; an all-zero row (no rotation information) becomes the identity."""
    q = q.astype(np.float64)
    norm = np.linalg.norm(q, axis=1, keepdims=True)
    out = np.divide(q, norm, out=np.zeros_like(q), where=norm > 0)
    out[norm[:, 0] == 0, 0] = 1.0
    return out


def smallest_three(q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unit quaternions (N, 4) -> (index of the largest |component|, the other three in order), with the sign
    chosen so the dropped component is positive (q and -q are the same rotation)."""
    idx = np.argmax(np.abs(q), axis=1)
    rows = np.arange(len(q))
    q = q * np.where(q[rows, idx] < 0, -1.0, 1.0)[:, None]
    keep = np.ones_like(q, dtype=bool)
    keep[rows, idx] = False
    return idx, q[keep].reshape(len(q), 3)


def from_smallest_three(idx: np.ndarray, rest: np.ndarray) -> np.ndarray:
    """Inverse of `smallest_three`: the dropped component is sqrt(1 - sum of squares of the others)."""
    n = len(idx)
    q = np.empty((n, 4))
    keep = np.ones((n, 4), dtype=bool)
    keep[np.arange(n), idx] = False
    q[keep] = rest.reshape(-1)
    q[np.arange(n), idx] = np.sqrt(np.maximum(0.0, 1.0 - np.sum(rest * rest, axis=1)))
    return q
