"""Bad input gives one-line `SplatkitError`s that name the broken file and say what is wrong."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from splatkit.data import ImageStore, load_scene
from splatkit.errors import SplatkitError


def _raises(match_file: Path | str, problem: str, fn, *args, **kwargs) -> str:
    with pytest.raises(SplatkitError) as info:
        fn(*args, **kwargs)
    msg = str(info.value)
    assert "\n" not in msg, msg
    assert str(match_file) in msg and problem in msg, msg
    return msg


def _text_model(root: Path, model: str = "PINHOLE", params: str = "20 20 8 6", images: int = 2,
                points: bool = True) -> None:
    """A tiny COLMAP text model with 16x12 images 0.png, 1.png, ... written to disk."""
    sparse = root / "sparse" / "0"
    sparse.mkdir(parents=True)
    (root / "images").mkdir()
    (sparse / "cameras.txt").write_text(f"1 {model} 16 12 {params}\n")
    lines = []
    for k in range(images):
        lines += [f"{k + 1} 1 0 0 0 {k * 0.1} 0 0 1 {k}.png", "8 6 1" if points else ""]
        Image.fromarray(np.full((12, 16, 3), 100, np.uint8)).save(root / "images" / f"{k}.png")
    (sparse / "images.txt").write_text("\n".join(lines) + "\n")
    track = " ".join(f"{k + 1} 0" for k in range(images))
    (sparse / "points3D.txt").write_text(f"1 0 0 5 200 100 50 0.1 {track}\n" if points else "")


def test_text_model_loads(tmp_path: Path) -> None:
    _text_model(tmp_path)
    scene = load_scene(tmp_path, test_every=0)
    assert len(scene.cameras) == 2 and scene.points.shape == (1, 3)
    np.testing.assert_allclose(scene.colors[0], [200 / 255, 100 / 255, 50 / 255])
    assert ImageStore(scene.cameras)[1].shape == (12, 16, 3)


def test_missing_image(tmp_path: Path) -> None:
    _text_model(tmp_path)
    (tmp_path / "images" / "1.png").unlink()
    _raises(tmp_path / "images" / "1.png", "missing", load_scene, tmp_path)


def test_corrupt_and_wrong_size_images(tmp_path: Path) -> None:
    _text_model(tmp_path)
    scene = load_scene(tmp_path, test_every=0)
    bad = tmp_path / "images" / "0.png"
    bad.write_bytes(b"\x89PNG garbage" + bytes(range(256)))
    _raises(bad, "corrupt image", ImageStore(scene.cameras).__getitem__, 0)
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(tmp_path / "images" / "1.png")
    _raises(tmp_path / "images" / "1.png", "does not match the camera's 16x12", ImageStore(scene.cameras).__getitem__, 1)
    jpg = tmp_path / "garbage.jpg"
    jpg.write_bytes(np.random.default_rng(0).bytes(2000))
    from dataclasses import replace

    cams = [replace(scene.cameras[0], image_path=jpg)]
    _raises(jpg, "unreadable or corrupt image", ImageStore(cams).__getitem__, 0)
    _raises(tmp_path / "gone.png", "image file is missing",
            ImageStore([replace(scene.cameras[0], image_path=tmp_path / "gone.png")]).__getitem__, 0)


@pytest.mark.parametrize("name", ["cameras", "images", "points3D"])
def test_truncated_bin_files(shared_datasets: Path, tmp_path: Path, name: str) -> None:
    root = tmp_path / "cup"
    (root / "sparse").mkdir(parents=True)
    shutil.copytree(shared_datasets / "cup_colmap" / "sparse" / "0", root / "sparse" / "0")
    (root / "images").symlink_to(shared_datasets / "cup_colmap" / "images")
    f = root / "sparse" / "0" / f"{name}.bin"
    f.chmod(0o644)
    data = f.read_bytes()
    for cut in (len(data) // 2, len(data) - 3):  # pycolmap itself silently accepts the second one
        f.write_bytes(data[:cut])
        _raises(f, "truncated or corrupt COLMAP file", load_scene, root)


@pytest.mark.parametrize("model,params", [("FOV", "20 20 8 6 0.1"), ("FULL_OPENCV", "20 20 8 6" + " 0" * 8)])
def test_unsupported_camera_model(tmp_path: Path, model: str, params: str) -> None:
    _text_model(tmp_path, model, params)
    _raises(tmp_path / "sparse" / "0" / "cameras.txt", f"unsupported COLMAP camera model {model}",
            load_scene, tmp_path)


def test_empty_models(tmp_path: Path) -> None:
    _text_model(tmp_path / "a", images=0)
    _raises(tmp_path / "a" / "sparse" / "0" / "images.txt", "no registered images", load_scene, tmp_path / "a")
    _text_model(tmp_path / "b", points=False)  # cameras but no points: start from what the cameras see
    scene = load_scene(tmp_path / "b", test_every=0)
    assert len(scene.points) > 1000 and np.all(np.isfinite(scene.points))


def test_missing_sparse_folder_and_unknown_folders(tmp_path: Path) -> None:
    (tmp_path / "s" / "sparse").mkdir(parents=True)
    _raises(tmp_path / "s" / "sparse", "no COLMAP model found", load_scene, tmp_path / "s")
    (tmp_path / "u" / "images").mkdir(parents=True)
    _raises(tmp_path / "u", "not a scene", load_scene, tmp_path / "u")
    _raises(tmp_path / "nope", "does not exist", load_scene, tmp_path / "nope")


def test_transforms_json_errors(tmp_path: Path) -> None:
    (tmp_path / "transforms.json").write_text("{not json")
    _raises(tmp_path / "transforms.json", "not a readable JSON file", load_scene, tmp_path)
    (tmp_path / "transforms.json").write_text('{"camera_angle_x": 0.7, "frames": '
                                               '[{"file_path": "img/a", "transform_matrix": [[1,0,0,0]]}]}')
    _raises(tmp_path / "img" / "a", "missing", load_scene, tmp_path)


def test_no_training_views_is_one_line_before_any_work(shared_datasets: Path, tmp_path: Path, capsys) -> None:
    from scene_variants import cup_variant
    from splatkit.cli import main

    scene = cup_variant(shared_datasets, tmp_path / "cup", keep=6)
    _raises(scene, "no training views: all 6 views are held out with --test-every 1", load_scene, scene,
            test_every=1)
    capsys.readouterr()
    assert main(["train", str(scene), "--test-every", "1", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no training views" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_a_one_image_scene_trains(shared_datasets: Path, tmp_path: Path) -> None:
    """One photo: nothing is held out, and the scene's length unit comes from the points (the rig has no
    spread), so learning rates and thresholds are not scaled to zero."""
    from scene_variants import cup_variant
    from splatkit.train.config import TrainConfig
    from splatkit.train.trainer import train

    root = cup_variant(shared_datasets, tmp_path / "cup", keep=1)
    scene = load_scene(root, data_factor=8)
    assert scene.train_ids == [0] and scene.test_ids == []
    depth = np.median(np.linalg.norm(scene.points - scene.cameras[0].center, axis=1))
    assert scene.extent == pytest.approx(1.0) and depth == pytest.approx(1.0, rel=1e-5)
    metrics = train(TrainConfig(scene=str(root), out=tmp_path / "run", steps=3, data_factor=8, backend="torch",
                                eval_steps=()), show_progress=False)
    assert metrics["step"] == 3 and metrics["views"] == []
