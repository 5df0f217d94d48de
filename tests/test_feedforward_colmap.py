"""The COLMAP models feed-forward tools write, in their own layouts: VGGT's demo_colmap.py and MASt3R-SfM
(`sparse/` without `0/`, a PINHOLE camera per image, one observation per point) and InstantSplat
(`sparse_N/0/` with cameras and images but no 2D points and no points3D file: `points3D.ply` instead).
Each is built from the demo scene's exact model and must load to the same cameras and points."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pycolmap
import pytest
from plyfile import PlyData, PlyElement

from splatkit.data import load_scene
from splatkit.data.colmap import load_colmap
from splatkit.errors import SplatkitError


def _text_model(source: Path, out: Path, *, camera_per_image: bool, keep_points: bool, one_observation: bool
                ) -> None:
    """Rewrite the demo scene's text model into `out` the way a feed-forward tool would."""
    rec = pycolmap.Reconstruction(str(source / "sparse" / "0"))
    (cam,) = rec.cameras.values()
    images = sorted(rec.images.values(), key=lambda im: im.image_id)
    camera_lines, image_lines, point_lines = [], [], []
    seen: dict[int, list[str]] = {im.image_id: [] for im in images}
    if keep_points:
        for pid, p in sorted(rec.points3D.items()):
            track = p.track.elements[:1] if one_observation else p.track.elements
            entries = []
            for el in track:
                xy = rec.images[el.image_id].points2D[el.point2D_idx].xy
                entries.append(f"{el.image_id} {len(seen[el.image_id])}")
                seen[el.image_id].append(f"{xy[0]:.6f} {xy[1]:.6f} {pid}")
            x, y, z = p.xyz
            r, g, b = p.color
            point_lines.append(f"{pid} {x:.9g} {y:.9g} {z:.9g} {r} {g} {b} 0.5 " + " ".join(entries))
    for im in images:
        cam_id = im.image_id if camera_per_image else 1
        if camera_per_image or not camera_lines:
            params = " ".join(f"{v:.17g}" for v in cam.params)
            camera_lines.append(f"{cam_id} PINHOLE {cam.width} {cam.height} {params}")
        pose = im.cam_from_world()
        qx, qy, qz, qw = pose.rotation.quat
        t = pose.translation
        image_lines.append(f"{im.image_id} {qw:.17g} {qx:.17g} {qy:.17g} {qz:.17g} {t[0]:.17g} {t[1]:.17g} "
                           f"{t[2]:.17g} {cam_id} {im.name}")
        image_lines.append(" ".join(seen[im.image_id]))
    out.mkdir(parents=True)
    (out / "cameras.txt").write_text("\n".join(camera_lines) + "\n")
    (out / "images.txt").write_text("\n".join(image_lines) + "\n")
    (out / "points3D.txt").write_text("\n".join(point_lines) + "\n")


def _to_binary(folder: Path) -> None:
    pycolmap.Reconstruction(str(folder)).write_binary(str(folder))
    for f in folder.glob("*.txt"):
        f.unlink()


def _scene(tiny_scene: Path, root: Path) -> Path:
    root.mkdir()
    (root / "images").symlink_to(tiny_scene / "images")
    return root


def _assert_same_cameras(scene, ref) -> None:
    assert [c.name for c in scene.cameras] == [c.name for c in ref.cameras]
    for a, b in zip(scene.cameras, ref.cameras):
        np.testing.assert_allclose(a.K, b.K, rtol=1e-12)
        np.testing.assert_allclose(a.world_to_cam, b.world_to_cam, atol=1e-9)


def test_vggt_colmap_export_layout(tiny_scene, tmp_path):
    """VGGT's demo_colmap.py (without bundle adjustment): binary model straight in sparse/, a camera per
    image, every point observed once."""
    root = _scene(tiny_scene, tmp_path / "vggt")
    _text_model(tiny_scene, root / "sparse", camera_per_image=True, keep_points=True, one_observation=True)
    _to_binary(root / "sparse")
    assert not (root / "sparse" / "0").exists()
    scene, ref = load_scene(root), load_scene(tiny_scene)
    _assert_same_cameras(scene, ref)
    np.testing.assert_allclose(scene.points, ref.points, atol=1e-5)
    assert sum(len(o.point_ids) for o in scene.observations) == len(scene.points)


@pytest.mark.parametrize("binary", [True, False])
def test_instantsplat_layout_reads_points3D_ply(tiny_scene, tmp_path, binary):
    """InstantSplat's init writes sparse_N/0/ with no 2D points and no points3D file (pycolmap alone refuses
    it), its points in points3D.ply (x y z nx ny nz red green blue) with confidence.npy beside."""
    root = _scene(tiny_scene, tmp_path / "instantsplat")
    model = root / "sparse_10" / "0"
    _text_model(tiny_scene, model, camera_per_image=False, keep_points=False, one_observation=False)
    if binary:
        _to_binary(model)
    (model / f"points3D{'.bin' if binary else '.txt'}").unlink()
    source = load_colmap(tiny_scene)
    rgb = np.round(source.colors * 255).astype(np.uint8)
    vertex = np.empty(len(source.points), [(k, "f4") for k in ("x", "y", "z", "nx", "ny", "nz")]
                      + [(k, "u1") for k in ("red", "green", "blue")])
    for k, v in zip("xyz", source.points.T):
        vertex[k] = v
    for k in ("nx", "ny", "nz"):
        vertex[k] = 0
    for k, v in zip(("red", "green", "blue"), rgb.T):
        vertex[k] = v
    PlyData([PlyElement.describe(vertex, "vertex")]).write(str(model / "points3D.ply"))
    np.save(model / "confidence.npy", np.ones(len(source.points), np.float32))

    scene, ref = load_scene(root), load_scene(tiny_scene)
    _assert_same_cameras(scene, ref)
    np.testing.assert_allclose(scene.points, ref.points, atol=1e-5)
    np.testing.assert_allclose(scene.colors, rgb / 255.0, atol=1e-7)
    assert all(len(o.point_ids) == 0 for o in scene.observations)

    shutil.copytree(root / "sparse_10", root / "sparse_3")
    with pytest.raises(SplatkitError, match="holds 2 InstantSplat models \\(sparse_10, sparse_3\\)"):
        load_scene(root)
