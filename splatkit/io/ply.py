"""INRIA 3DGS `.ply`: one `vertex` element of float32 properties (x y z, nx ny nz, f_dc_0..2, f_rest_*,
opacity, scale_0..2, rot_0..3), raw (pre-activation) values, f_rest channel-major, rot_0 = w, OpenCV axes.
A model with levels of detail (FLoD) adds a uchar `level` property (1 = coarsest), which INRIA-style readers
skip as they skip normals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from plyfile import PlyData, PlyElement

from splatkit.atomic import atomic_path
from splatkit.errors import file_error
from splatkit.io._common import checked_values
from splatkit.model.gaussians import Gaussians
from splatkit.model.sh import sh_degree_from_bases

_REQUIRED = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1", "scale_2",
             "rot_0", "rot_1", "rot_2", "rot_3"]


def _property_names(n_rest: int) -> list[str]:
    return (["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
            + [f"f_rest_{i}" for i in range(n_rest)]
            + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"])


def save_ply(gaussians: Gaussians, path: str | Path) -> None:
    """Write `gaussians` as an INRIA-layout binary little-endian PLY (atomically)."""
    g = gaussians.detach().to("cpu")
    n = len(g)
    # (N, K-1, 3) -> channel-major (N, 3, K-1) -> flat, as INRIA's writer does.
    rest = g.shN.transpose(1, 2).reshape(n, -1)
    columns = [g.means, torch.zeros(n, 3), g.sh0.reshape(n, 3), rest, g.opacities[:, None], g.scales, g.quats]
    data = torch.cat(columns, dim=1).numpy().astype(np.float32)
    names = _property_names(rest.shape[1])
    level = [("level", "u1")] if g.level is not None else []
    vertices = np.empty(n, dtype=[(name, "<f4") for name in names] + level)
    for i, name in enumerate(names):
        vertices[name] = data[:, i]
    if level:
        vertices["level"] = g.level.numpy()
    with atomic_path(path) as tmp:
        PlyData([PlyElement.describe(vertices, "vertex")], byte_order="<").write(str(tmp))


def load_ply(path: str | Path) -> Gaussians:
    """Read an INRIA-layout PLY of any SH degree 0-3 (normals optional; degree inferred from f_rest_*)."""
    path = Path(path)
    if not path.is_file():
        raise file_error(path, "no such file")
    try:
        ply = PlyData.read(str(path))
        vertex = ply["vertex"]
        names = [p.name for p in vertex.properties]
    except Exception as exc:  # plyfile raises many types for malformed headers or bodies
        raise file_error(path, f"not a readable PLY file ({exc})") from None
    missing = [name for name in _REQUIRED if name not in names]
    if missing:
        raise file_error(path, f"not a 3DGS splat PLY: missing properties {', '.join(missing)}")
    rest_names = [f"f_rest_{i}" for i in range(sum(n.startswith("f_rest_") for n in names))]
    if sorted(n for n in names if n.startswith("f_rest_")) != sorted(rest_names):
        raise file_error(path, "f_rest_* properties are not numbered 0..N-1 without gaps")
    if len(rest_names) % 3:
        raise file_error(path, f"{len(rest_names)} f_rest_* properties is not a multiple of 3")
    coeffs = len(rest_names) // 3
    try:
        degree = sh_degree_from_bases(coeffs + 1)
    except ValueError:
        raise file_error(path, f"{len(rest_names)} f_rest_* properties match no SH degree") from None
    if degree > 3:
        raise file_error(path, f"SH degree {degree} is not supported (at most 3)")

    def column(*keys: str) -> torch.Tensor:
        return torch.from_numpy(np.stack([np.asarray(vertex[k], np.float32) for k in keys], axis=1))

    n = vertex.count
    rest = column(*rest_names) if rest_names else torch.zeros(n, 0)
    gaussians = Gaussians(
        means=column("x", "y", "z"),
        scales=column("scale_0", "scale_1", "scale_2"),
        quats=column("rot_0", "rot_1", "rot_2", "rot_3"),
        opacities=column("opacity")[:, 0],
        sh0=column("f_dc_0", "f_dc_1", "f_dc_2")[:, None, :],
        shN=rest.reshape(n, 3, coeffs).transpose(1, 2).contiguous(),
        level=_levels(vertex, names, path),
    )
    return checked_values(gaussians, path)


def _levels(vertex, names: list[str], path: Path) -> torch.Tensor | None:
    """The optional FLoD level of each splat, (N,) int64, counted from 1."""
    if "level" not in names:
        return None
    level = np.asarray(vertex["level"])
    if level.dtype.kind not in "iu" or (len(level) and level.min() < 1):
        raise file_error(path, "the level property must hold whole numbers from 1 (levels of detail)")
    return torch.from_numpy(level.astype(np.int64))

