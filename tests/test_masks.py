"""Masks (nerfstudio's mask_path, a COLMAP scene's masks/ folder, alpha as a mask): read in every mode,
resampled with their photos, and a masked region's content has no effect on training or on the metrics."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from scene_variants import cup_variant
from splatkit.data import ImageStore, load_scene
from splatkit.data.images import undistortion_maps
from splatkit.data.masks import find_mask, read_mask
from splatkit.errors import SplatkitError
from splatkit.io.ply import load_ply
from splatkit.render import rasterize
from splatkit.train.config import TrainConfig
from splatkit.train.trainer import train


def _samples(mode: str) -> tuple[Image.Image, np.ndarray]:
    """A 6x5 mask image in `mode` and the keep map it stands for (non-zero samples kept)."""
    rng = np.random.default_rng(0)
    keep = rng.random((5, 6)) < 0.5
    if mode == "1":
        return Image.fromarray(keep), keep
    if mode == "L":
        return Image.fromarray(np.where(keep, rng.integers(1, 256, keep.shape), 0).astype(np.uint8)), keep
    if mode == "I;16":  # 16-bit masks with tiny values (1) still keep: any non-zero sample counts
        image = Image.fromarray(np.where(keep, 1, 0).astype(np.uint16))
        assert image.mode == "I;16"
        return image, keep
    if mode == "RGB":  # a colour mask keeps pixels where any channel is lit
        rgb = np.zeros((5, 6, 3), np.uint8)
        rgb[..., 2] = np.where(keep, 7, 0)
        return Image.fromarray(rgb), keep
    if mode == "LA":  # grey + alpha: the grey decides, the alpha is not looked at
        la = np.stack([np.where(keep, 255, 0), np.full((5, 6), 0)], -1).astype(np.uint8)
        return Image.fromarray(la, "LA"), keep
    assert mode == "P"  # palette index 0 is white here: the colour decides, not the index
    image = Image.fromarray(np.where(keep, 0, 1).astype(np.uint8), "P")
    image.putpalette([255, 255, 255, 0, 0, 0])
    return image, keep


@pytest.mark.parametrize("mode", ["1", "L", "I;16", "RGB", "LA", "P"])
def test_read_mask_modes(tmp_path: Path, mode: str):
    image, keep = _samples(mode)
    path = tmp_path / "m.png"
    image.save(path)
    np.testing.assert_array_equal(read_mask(path), np.where(keep, 255, 0))


def test_mask_names_and_bad_masks(tmp_path: Path):
    masks = tmp_path / "masks"
    (masks / "cam_a").mkdir(parents=True)
    Image.new("L", (4, 3), 255).save(masks / "cam_a" / "1.jpg.png")  # COLMAP's: name + .png
    Image.new("L", (4, 3), 255).save(masks / "cam_a" / "2.png")  # extension replaced
    assert find_mask(masks, "cam_a/1.jpg") == masks / "cam_a" / "1.jpg.png"
    assert find_mask(masks, "cam_a/2.jpg") == masks / "cam_a" / "2.png"
    assert find_mask(masks, "cam_a/3.jpg") is None
    (tmp_path / "bad.png").write_bytes(b"\x89PNG not really")
    for path, problem in ((tmp_path / "bad.png", "unreadable or corrupt mask"),
                          (tmp_path / "gone.png", "mask file is missing")):
        with pytest.raises(SplatkitError, match=problem) as info:
            read_mask(path)
        assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_mask_of_the_wrong_size_is_one_line(shared_datasets: Path, tmp_path: Path):
    scene = load_scene(cup_variant(shared_datasets, tmp_path / "cup", keep=2), data_factor=8, test_every=0)
    mask = tmp_path / "small.png"
    Image.new("L", (40, 30), 255).save(mask)
    store = ImageStore([replace(scene.cameras[0], mask_path=mask)])
    with pytest.raises(SplatkitError, match=r"mask is 40x30, which does not match the camera's 100x75") as info:
        store.mask(0)
    assert str(mask) in str(info.value)


def test_masks_follow_undistortion_and_downsampling(shared_datasets: Path, tmp_path: Path):
    """fox (OPENCV distortion) with nerfstudio mask_path: a kept pixel's every source sample is kept in the
    photo's own mask, and downsampling keeps only blocks that were wholly kept."""
    fox = shared_datasets / "fox"
    meta = json.loads((fox / "transforms.json").read_text())
    meta["frames"] = meta["frames"][:2]
    root = tmp_path / "fox"
    root.mkdir()
    (root / "images").symlink_to((fox / "images").resolve())
    (root / "masks").mkdir()
    for k, frame in enumerate(meta["frames"]):
        with Image.open(fox / frame["file_path"]) as photo:
            width, height = photo.size
        keep = np.ones((height, width), bool)
        keep[height // 3: height // 2, width // 4: width // 2] = False
        Image.fromarray(keep).save(root / "masks" / f"{k}.png")
        frame["mask_path"] = f"masks/{k}.png"
    (root / "transforms.json").write_text(json.dumps(meta))
    scene = load_scene(root, test_every=0)
    camera = scene.cameras[0]
    assert camera.undistortion is not None and camera.mask_path == (root / "masks" / "0.png").resolve()
    source = read_mask(camera.mask_path) == 255
    kept = ImageStore(scene.cameras).mask(0)[..., 0]
    map_x, map_y = undistortion_maps(camera.undistortion, camera)
    x0, y0 = np.floor(map_x).astype(int), np.floor(map_y).astype(int)
    h, w = source.shape
    for dx in (0, 1):
        for dy in (0, 1):
            xs, ys = np.clip(x0 + dx, 0, w - 1), np.clip(y0 + dy, 0, h - 1)
            weight = (np.abs(map_x - (x0 + 1 - dx)) if dx == 0 else map_x - x0) * \
                     (np.abs(map_y - (y0 + 1 - dy)) if dy == 0 else map_y - y0)
            assert np.all(source[ys, xs][kept & (weight > 1e-3)])  # kept pixels sample kept pixels only
    assert abs((~kept).mean() - (~source).mean()) < 0.03  # the hole moved, it did not grow or vanish

    factor = 4
    small = load_scene(root, data_factor=factor, test_every=0)
    kept_small = ImageStore(small.cameras).mask(1)[..., 0]
    full = ImageStore(scene.cameras).mask(1)[..., 0]
    hs, ws = kept_small.shape
    blocks = full[: hs * factor, : ws * factor].reshape(hs, factor, ws, factor).all(axis=(1, 3))
    assert np.mean(kept_small == blocks) > 0.99  # INTER_AREA blocks differ only where the sizes round


def test_missing_mask_path_is_one_line(shared_datasets: Path, tmp_path: Path):
    fox = shared_datasets / "fox"
    meta = json.loads((fox / "transforms.json").read_text())
    meta["frames"] = meta["frames"][:1]
    meta["frames"][0]["mask_path"] = "masks/none.png"
    (tmp_path / "images").symlink_to((fox / "images").resolve())
    (tmp_path / "transforms.json").write_text(json.dumps(meta))
    with pytest.raises(SplatkitError, match="mask listed in transforms.json") as info:
        load_scene(tmp_path)
    assert str(tmp_path / "masks" / "none.png") in str(info.value)


# The region masked out in the end-to-end runs, in full-resolution (800x600) pixels: rows, columns.
REGION = (slice(330, 570), slice(40, 400))
STEPS = 120


def _noise(k: int, photo: np.ndarray) -> np.ndarray:
    out = photo.copy()
    out[REGION] = np.random.default_rng(k).integers(0, 256, out[REGION].shape)
    return out


def _run(shared: Path, tmp: Path, name: str, *, photo, masks: bool, alpha_as_mask: bool = False) -> Path:
    root = cup_variant(shared, tmp / name, keep=12, rename=lambda k, old: f"{k}.png",
                       edit=lambda k, rgb: photo(k, rgb))
    if masks:
        keep = np.full((600, 800), 255, np.uint8)
        keep[REGION] = 0
        (root / "masks").mkdir()
        for k in range(12):  # both naming conventions: 3.png.png (appended) and 4.png (replaced)
            Image.fromarray(keep).save(root / "masks" / (f"{k}.png.png" if k % 2 else f"{k}.png"))
    out = tmp / f"{name}-run"
    train(TrainConfig(scene=str(root), out=out, steps=STEPS, data_factor=8, test_every=4, eval_steps=(),
                      alpha_as_mask=alpha_as_mask), show_progress=False)
    return out


def test_a_masked_region_does_not_change_training(shared_datasets: Path, tmp_path: Path):
    """12 cup photos (data factor 8) with a region masked out: filling it with noise leaves the trained model as
    it is (up to float noise), whether the mask is a file or the images' alpha; without the mask the noise is
    learned. Held-out metrics skip the region and say so."""
    intact = _run(shared_datasets, tmp_path, "intact", photo=lambda k, rgb: Image.fromarray(rgb), masks=True)
    noisy = _run(shared_datasets, tmp_path, "noisy", photo=lambda k, rgb: Image.fromarray(_noise(k, rgb)), masks=True)

    def rgba(k: int, rgb: np.ndarray) -> Image.Image:
        alpha = np.full(rgb.shape[:2] + (1,), 255, np.uint8)
        alpha[REGION] = 0
        return Image.fromarray(np.concatenate([_noise(k, rgb), alpha], -1))

    alpha = _run(shared_datasets, tmp_path, "alpha", photo=rgba, masks=False, alpha_as_mask=True)
    unmasked = _run(shared_datasets, tmp_path, "unmasked", photo=lambda k, rgb: Image.fromarray(_noise(k, rgb)),
                    masks=False)

    reference = load_ply(intact / "point_cloud.ply")
    for run in (noisy, alpha):
        model = load_ply(run / "point_cloud.ply")
        assert len(model) == len(reference)
        for key, value in model.as_dict().items():
            torch.testing.assert_close(value, reference.as_dict()[key], rtol=1e-5, atol=1e-5)

    scene = load_scene(tmp_path / "intact", data_factor=8, test_every=4)
    camera = scene.cameras[scene.train_ids[0]]
    rows, cols = slice(REGION[0].start // 8 + 1, REGION[0].stop // 8 - 1), slice(REGION[1].start // 8 + 1,
                                                                                   REGION[1].stop // 8 - 1)
    background = (0.0, 0.0, 0.0)
    shifted = [load_ply(r / "point_cloud.ply").transformed(scene.to_normalized) for r in (intact, unmasked)]
    a, b = (rasterize(g, camera, background=background).rgb[rows, cols] for g in shifted)
    assert float((a - b).abs().mean()) > 0.03  # without the mask, training learns the noise there

    metrics = json.loads((intact / "metrics.json").read_text())
    assert metrics["masked"] is True
    shares = [view["masked"] for view in metrics["views"]]
    region_share = (REGION[0].stop - REGION[0].start) * (REGION[1].stop - REGION[1].start) / (600 * 800)
    assert len(shares) == 3 and all(region_share <= s < region_share + 0.02 for s in shares)
    noisy_views = json.loads((noisy / "metrics.json").read_text())["views"]
    for before, after in zip(metrics["views"], noisy_views):
        assert after["psnr"] == pytest.approx(before["psnr"], abs=1e-3)
    shutil.rmtree(tmp_path)
