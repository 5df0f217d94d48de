"""`splatkit export`, `convert` and `info` end to end: what they write is read back and rendered against the
run's own model, options do what they say, and bad input is one line naming the file."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from splatkit.cli import main
from splatkit.data import load_scene
from splatkit.data.scene import Similarity
from splatkit.io.formats import detect_format, read_splats
from splatkit.io.ply import load_ply
from splatkit.render import rasterize

FORMATS = {"ply": ".ply", "compressed-ply": ".compressed.ply", "spz": ".spz", "splat": ".splat", "sog": ".sog",
           "sog-meta": ".meta.json", "compact": ".spkz"}


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(-10 * torch.log10(((a - b) ** 2).mean()))


def _views(run: Path):
    """The run's model and its scene's cameras, both in the capture's (file) frame."""
    record = json.loads((run / "config.json").read_text())
    scene = load_scene(Path(record["scene_path"]))
    back = Similarity.from_json(record["to_normalized"]).inverse()
    cameras = [replace(c, world_to_cam=back.apply_camera(c.world_to_cam)) for c in scene.cameras[:3]]
    return load_ply(run / "point_cloud.ply"), cameras


def _render(model, camera) -> torch.Tensor:
    return rasterize(model, camera, backend="torch").rgb


@pytest.mark.parametrize("fmt", FORMATS)
def test_export_each_format_renders_like_the_run(tiny_run, tmp_path, fmt):
    out = tmp_path / f"model{FORMATS[fmt]}"
    assert main(["export", str(tiny_run), "--format", fmt, "-o", str(out)]) == 0
    assert detect_format(out) == fmt
    original, cameras = _views(tiny_run)
    exported = read_splats(out)
    assert len(exported) == len(original)
    # Lossless ply is exact; the quantised formats stay close (.splat also drops SH).
    bound = {"ply": 80.0, "compressed-ply": 30.0, "spz": 30.0, "splat": 25.0, "sog": 25.0, "sog-meta": 25.0,
             "compact": 30.0}[fmt]
    for camera in cameras:
        assert _psnr(_render(exported, camera), _render(original, camera)) > bound


def test_export_default_path_sh_and_pruning(tiny_run, capsys):
    original = load_ply(tiny_run / "point_cloud.ply")
    threshold = float(original.activated_opacities.median())
    assert main(["export", str(tiny_run), "--format", "spz", "--sh-degree", "0", "--prune-opacity",
                 str(threshold)]) == 0
    out = tiny_run / "export" / f"{tiny_run.name}.spz"
    captured = capsys.readouterr()
    assert out.is_file() and str(out) in captured.out + captured.err
    keep = original.activated_opacities >= threshold
    assert 0 < int(keep.sum()) < len(original)  # the threshold actually splits this model
    slim = read_splats(out)
    assert slim.sh_degree == 0 and len(slim) == int(keep.sum())
    assert torch.allclose(slim.means, original.means[keep], atol=1e-2)


def test_export_training_frame_is_the_normalised_model(tiny_run, tmp_path):
    out = tmp_path / "centred.ply"
    assert main(["export", str(tiny_run), "--format", "ply", "--frame", "training", "-o", str(out)]) == 0
    t = Similarity.from_json(json.loads((tiny_run / "config.json").read_text())["to_normalized"])
    expected = t.apply_points(load_ply(tiny_run / "point_cloud.ply").means.numpy())
    np.testing.assert_allclose(load_ply(out).means.numpy(), expected, atol=1e-5)


def test_export_upright_frame_turns_the_cameras_up_to_minus_y(tiny_run, tmp_path):
    """--frame upright: a rigid turn (recovered here from the points alone) that takes the cameras' mean up to
    -y, and the exported model seen from the turned camera is the same picture, view-dependent colour included."""
    out = tmp_path / "upright.ply"
    assert main(["export", str(tiny_run), "--format", "ply", "--frame", "upright", "-o", str(out)]) == 0
    original, cameras = _views(tiny_run)
    upright = load_ply(out)
    a, b = original.means.double().numpy(), upright.means.double().numpy()
    turn, _ = Rotation.align_vectors(b - b.mean(0), a - a.mean(0))
    R = turn.as_matrix()
    np.testing.assert_allclose((a - a.mean(0)) @ R.T, b - b.mean(0), atol=1e-4)  # rigid: no scaling
    all_cameras = load_scene(Path(json.loads((tiny_run / "config.json").read_text())["scene_path"])).cameras
    mean_up = -np.mean([c.cam_to_world[:3, 1] for c in all_cameras], axis=0)  # OpenCV: camera y points down
    np.testing.assert_allclose(R @ (mean_up / np.linalg.norm(mean_up)), [0.0, -1.0, 0.0], atol=1e-4)
    move = Similarity(1.0, a.mean(0) - R.T @ b.mean(0), R)
    for camera in cameras:
        moved = replace(camera, world_to_cam=move.apply_camera(camera.world_to_cam))
        assert _psnr(_render(upright, moved), _render(original, camera)) > 50.0


def test_convert_between_formats_and_info(tiny_run, tmp_path, capsys):
    spz = tmp_path / "a.spz"
    assert main(["convert", str(tiny_run / "point_cloud.ply"), str(spz)]) == 0
    packed = tmp_path / "b.compressed.ply"
    assert main(["convert", str(spz), str(packed)]) == 0
    original, cameras = _views(tiny_run)
    assert _psnr(_render(read_splats(packed), cameras[0]), _render(original, cameras[0])) > 28.0
    named = tmp_path / "c.bin"  # the output format can be named when the extension says nothing
    assert main(["convert", str(packed), str(named), "--format", "splat"]) == 0
    assert named.stat().st_size == 32 * len(original)
    capsys.readouterr()
    assert main(["info", str(packed)]) == 0
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert "compressed-ply" in text and f"{len(original):,}" in text
    per_splat = packed.stat().st_size / len(original)
    assert f"{per_splat:.1f}" in text


@pytest.mark.parametrize("argv, problem", [
    (["convert", "{tmp}/missing.spz", "{tmp}/x.ply"], "no such file"),
    (["convert", "{tmp}/garbage.ply", "{tmp}/x.spz"], "garbage.ply"),
    (["convert", "{run}/point_cloud.ply", "{tmp}/x.xyz"], "extension"),
    (["info", "{tmp}/garbage.ply"], "garbage.ply"),
    (["export", "{run}", "--prune-opacity", "1.5", "-o", "{tmp}/x.spz", "--format", "spz"], "opacity"),
    (["export", "{run}/point_cloud.ply", "--frame", "training"], "run folder"),
    (["export", "{run}/point_cloud.ply", "--frame", "upright"], "run folder"),
    (["export", "{run}", "--player", "{tmp}/page", "-o", "{tmp}/elsewhere.compressed.ply"], "player folder"),
    (["export", "{run}", "--player", "{tmp}/page", "--format", "compact"], "do not read splatkit's compact"),
    (["export", "{run}", "--lod-set", "{tmp}/set", "-o", "{tmp}/x.spz"], "drop --level, --levels, --budget, -o"),
    (["export", "{run}", "--format", "sog-lod", "--level", "1"], "holds every level"),
    (["export", "{run}", "-o", "{tmp}/garbage.ply/x.spz"], "garbage.ply is a file, not a folder"),
    (["export", "{run}", "--format", "sog-lod", "-o", "{tmp}/garbage.ply/lod-meta.json"], "is a file, not a folder"),
    (["convert", "{run}/point_cloud.ply", "{tmp}", "--format", "spz"], "is a folder"),
    (["info", "{run}"], "is a folder, not a splat file"),
    (["render", "{run}", "--level", "0"], "levels count from 1"),
])
def test_bad_input_is_one_line(tiny_run, tmp_path, capsys, argv, problem):
    (tmp_path / "garbage.ply").write_bytes(b"ply\nformat nonsense\n")
    argv = [a.format(tmp=tmp_path, run=tiny_run) for a in argv]
    assert main(argv) == 2
    captured = capsys.readouterr()
    err = captured.err + captured.out
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and problem in lines[0] and "Traceback" not in err


def _inria_ply(path: Path, rows: np.ndarray) -> Path:
    """An INRIA-layout .ply (SH degree 0) written with plyfile, independent of our writer."""
    from plyfile import PlyData, PlyElement

    names = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1",
             "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    vertex = np.zeros(len(rows), [(n, "f4") for n in names])
    for k, n in enumerate(names):
        vertex[n] = rows[:, k]
    PlyData([PlyElement.describe(vertex, "vertex")]).write(str(path))
    return path


@pytest.mark.parametrize("case", ["empty", "all NaN"])
def test_every_command_on_a_model_with_nothing_to_show(tiny_scene, tmp_path, capsys, case):
    rows = np.zeros((0, 17), np.float32) if case == "empty" else np.full((5, 17), np.nan, np.float32)
    ply = _inria_ply(tmp_path / "model.ply", rows)
    problem = "holds no splats" if case == "empty" else "NaN"
    for argv in (["info", str(ply)], ["convert", str(ply), str(tmp_path / "out.spz")], ["export", str(ply)],
                 ["render", str(ply), "--scene", str(tiny_scene), "--out", str(tmp_path / "r")], ["view", str(ply)]):
        capsys.readouterr()
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and str(ply) in err and problem in err, (argv, err)
    assert not (tmp_path / "out.spz").exists() and not (tmp_path / "r").exists()


def test_an_unbundled_sog_is_sized_with_its_images(tiny_run, tmp_path, capsys):
    out = tmp_path / "site" / "meta.json"
    assert main(["export", str(tiny_run), "--format", "sog-meta", "-o", str(out)]) == 0
    images = sorted(p.name for p in out.parent.glob("*.webp"))
    assert len(images) >= 5
    total = sum(p.stat().st_size for p in out.parent.iterdir())
    capsys.readouterr()
    assert main(["info", str(out)]) == 0
    assert f"{total / len(read_splats(out)):.1f}" in capsys.readouterr().err


def test_export_takes_the_format_from_the_output_name(tiny_run, tmp_path):
    assert main(["export", str(tiny_run), "-o", str(tmp_path / "m.spz")]) == 0
    assert detect_format(tmp_path / "m.spz") == "spz"
    assert main(["export", str(tiny_run), "-o", str(tmp_path / "m.bin")]) == 2  # no format to tell from it


def test_exports_are_readable_by_others_as_any_new_file(tiny_run, tmp_path):
    """Written through a temporary file (atomic), yet with the mode the umask gives new files, not owner-only:
    a player folder is served by a web server running as another user."""
    previous = os.umask(0o022)
    try:
        assert main(["export", str(tiny_run), "-o", str(tmp_path / "m.sog")]) == 0
    finally:
        os.umask(previous)
    assert (tmp_path / "m.sog").stat().st_mode & 0o777 == 0o644
