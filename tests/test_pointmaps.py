"""Feed-forward point maps: the pointmaps.npz format and VGGT's predictions.npz, the crop-box map back to the
photos, the initial point cloud, and training from them, checked against scenes whose geometry is known
(cup_colmap's COLMAP model, the demo scene's exact surfaces)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.spatial.transform import Rotation

from splatkit.data import load_scene
from splatkit.data.colmap import load_colmap
from splatkit.data.demo_scene import _build_world, trace
from splatkit.data.feedforward import dust3r_grid, vggt_grid
from splatkit.data.pointmap_fixtures import (grid_rays, perturbed_poses, projected_pointmaps, traced_pointmaps,
                                             write_scene)
from splatkit.data.pointmap_scene import PointMapInit, voxel_merge
from splatkit.data.pointmaps import FILE_NAME, read_pointmaps, write_pointmaps
from splatkit.errors import SplatkitError
from splatkit.train.config import TrainConfig
from splatkit.train.trainer import train

# Every valid point of the fixtures, unmerged: their valid pixels have confidence 1 or 5, and VGGT's layout,
# which has no `valid`, marks the others with confidence 0 as the model's low-confidence pixels.
ALL = PointMapInit(conf="0.5", voxel=0.0, max_points=0)
F32 = float(np.finfo(np.float32).eps)


def _aspect_changing_crop(width: int, height: int) -> tuple[int, int, np.ndarray]:
    """A grid rule unlike VGGT's: a 60% x 80% off-centre crop squeezed onto a 30 x 20 grid."""
    return 30, 20, np.array([0.1 * width, 0.15 * height, 0.7 * width, 0.95 * height])


@pytest.fixture(scope="module")
def demo_maps(tiny_scene):
    cameras = load_colmap(tiny_scene).cameras
    world = _build_world(np.random.default_rng(0))  # the seed generate_demo_scene drew the tiny scene from
    return traced_pointmaps(cameras, lambda o, d: trace(world, o, d)[0], _aspect_changing_crop)


# ------------------------------------------------------------------------------------------ the crop box


def _vggt_preprocess(image: Image.Image, mode: str) -> np.ndarray:
    """VGGT's load_and_preprocess_images on one float image, step by step as its code does it."""
    width, height = image.size
    if mode == "pad" and height > width:
        new_h, new_w = 518, round(width * (518 / height) / 14) * 14
    else:
        new_w, new_h = 518, round(height * (518 / width) / 14) * 14
    out = np.asarray(image.resize((new_w, new_h), Image.Resampling.BICUBIC))
    if mode == "crop" and new_h > 518:
        start = (new_h - 518) // 2
        out = out[start:start + 518]
    if mode == "pad":
        top, left = (518 - new_h) // 2, (518 - new_w) // 2
        out = np.pad(out, ((top, 518 - new_h - top), (left, 518 - new_w - left)), constant_values=np.nan)
    return out


@pytest.mark.parametrize("size,mode", [((800, 600), "crop"), ((600, 800), "crop"), ((600, 800), "pad"),
                                       ((1000, 563), "pad")])
def test_vggt_crop_box_matches_its_preprocessing(size, mode):
    """A photo whose pixels hold their own x (then y) centre coordinate, run through VGGT's resize/crop/pad:
    away from the borders each grid pixel must hold the photo coordinate the crop box maps its centre to.
    PIL's antialiased bicubic reproduces a ramp only to ~0.01 px (its weights are renormalised at
    non-integer scales); any convention slip (pixel corners vs centres, crop offset, x and y scale) moves it
    by at least half a grid pixel minus half a photo pixel, 0.27 photo px at cup's 1.54 scale."""
    width, height = size
    gw, gh, (x0, y0, x1, y1) = vggt_grid(width, height, mode)
    jj, ii = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    u, v = np.meshgrid(np.arange(gw) + 0.5, np.arange(gh) + 0.5)
    for ramp, grid_coord, lo, hi, cells in ((jj, u, x0, x1, gw), (ii, v, y0, y1, gh)):
        out = _vggt_preprocess(Image.fromarray(ramp.astype(np.float32), mode="F"), mode)
        assert out.shape == (gh, gw)
        expected = lo + (hi - lo) / cells * grid_coord
        inner = np.isfinite(out) & (expected > 3) & (expected < ramp.max() - 3)
        assert inner.mean() > 0.5
        np.testing.assert_allclose(out[inner], expected[inner], rtol=0, atol=0.05)


# ------------------------------------------------------------------------------- cup_colmap fixtures


@pytest.fixture(scope="module")
def cup(shared_datasets):
    return shared_datasets / "cup_colmap"


@pytest.fixture(scope="module")
def cup_maps(cup):
    source = load_colmap(cup)
    return projected_pointmaps(source.cameras, source.points)


@pytest.fixture(scope="module")
def cup_dust3r_maps(cup):
    source = load_colmap(cup)
    return projected_pointmaps(source.cameras, source.points, dust3r_grid)


# layout, grid, K's tolerance (relative; absolute in pixels), pose tolerance: as precise as each tool's file
LAYOUT_CASES = [("pointmaps", "vggt", (1e-12, 0), 0), ("vggt", "vggt", (4 * F32, 0), 8 * F32),
                ("cut3r", "dust3r", (4 * F32, 0), 8 * F32), ("monst3r", "dust3r", (0, 2e-6), 1e-12)]


@pytest.mark.parametrize("layout,grid,k_tol,pose_tol", LAYOUT_CASES)
def test_cup_intrinsics_and_poses_come_back_through_the_crop_box(cup, cup_maps, cup_dust3r_maps, tmp_path, layout,
                                                                 grid, k_tol, pose_tol):
    """VGGT's 518x392 grid has x and y scales that differ (800/518 vs 600/392), DUSt3R's is 512x384; mapped
    back through the crop box the photo intrinsics are COLMAP's, exactly in splatkit's float64 file and to the
    precision of each tool's files otherwise, and the scene normalises like the COLMAP scene."""
    maps = cup_maps if grid == "vggt" else cup_dust3r_maps
    assert maps.grid_size == ((518, 392) if grid == "vggt" else (512, 384))
    scene = load_scene(write_scene(tmp_path / layout, maps, cup / "images", layout), pointmap_init=ALL)
    ref = load_scene(cup)
    assert [c.name for c in scene.cameras] == [c.name for c in ref.cameras]
    for a, b in zip(scene.cameras, ref.cameras):
        assert (a.width, a.height) == (b.width, b.height)
        np.testing.assert_allclose(a.K, b.K, rtol=k_tol[0], atol=k_tol[1] * 800 / 512)
        np.testing.assert_allclose(a.world_to_cam, b.world_to_cam, rtol=0, atol=pose_tol)
    assert scene.test_ids == ref.test_ids
    assert len(scene.points) > 0.9 * len(load_colmap(cup).points)


@pytest.mark.slow
def test_cup_trains_from_point_maps(cup, cup_maps, tmp_path):
    """Training from the point-map scene (VGGT's layout, its COLMAP export's absolute threshold) improves on
    the initial points as training from COLMAP does (test_train_cup), and the init settings are kept."""
    scene_dir = write_scene(tmp_path / "vggt", cup_maps, cup / "images", "vggt")
    cfg = TrainConfig(scene=str(scene_dir), out=tmp_path / "run", steps=300, data_factor=8, eval_steps=(),
                      checkpoint_every=300, init=PointMapInit(conf="5"))
    first = train(replace(cfg, steps=1, out=tmp_path / "one"), show_progress=False)
    final = train(cfg, show_progress=False)
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["config"]["init"] == {"conf": "5", "stride": 1, "voxel": 0.002, "max_points": 100_000}
    assert final["psnr"] > first["psnr"] + 4.0, (first, final)


# ------------------------------------------------------------------------------- demo scene, exact geometry


def test_demo_points_project_to_their_grid_pixels_through_the_photo_intrinsics(tiny_scene, demo_maps, tmp_path):
    """Exact surface points traced through an off-centre, aspect-changing crop: projected with the recovered
    photo intrinsics they land on the photo pixel the crop box assigns to their grid pixel."""
    scene = load_scene(write_scene(tmp_path / "s", demo_maps, tiny_scene / "images"), test_every=0, pointmap_init=ALL)
    world = scene.to_normalized.apply_points(demo_maps.world_points.reshape(-1, 3).astype(np.float64))
    world = world.reshape(demo_maps.world_points.shape)
    gw, gh = demo_maps.grid_size
    u, v = np.meshgrid(np.arange(gw) + 0.5, np.arange(gh) + 0.5)
    for i, cam in enumerate(scene.cameras):
        x = world[i].reshape(-1, 3) @ cam.world_to_cam[:3, :3].T + cam.world_to_cam[:3, 3]
        uv = (x @ cam.K.T)[:, :2] / x[:, 2:]
        _, _, (x0, y0, x1, y1) = _aspect_changing_crop(cam.width, cam.height)
        expected = np.stack([x0 + (x1 - x0) / gw * u, y0 + (y1 - y0) / gh * v], -1).reshape(-1, 2)
        np.testing.assert_allclose(uv, expected, atol=1e-3)  # float32 points at ~3 m: ~1e-6 m, 1e-4 px
    assert len(scene.points) == gw * gh * len(scene.cameras)


def _traced_colours(cameras, grid) -> np.ndarray:
    """The demo scene's exact colour at each grid pixel centre's ray, as traced_pointmaps orders points."""
    world = _build_world(np.random.default_rng(0))
    return np.concatenate([trace(world, *grid_rays(cam, grid)[:2])[1] for cam in cameras])


def test_demo_point_colours_come_from_the_mapped_photo_pixel(tiny_scene, demo_maps, tmp_path):
    """Each point's colour is the photo's pixel under its grid pixel's centre. Against the exact colour there
    (traced), the photo pixel the true crop box picks is closer than the one a box moved by one photo pixel
    picks, in each direction (the photos are antialiased renders, so no exact match is expected)."""
    truth = _traced_colours(load_colmap(tiny_scene).cameras, _aspect_changing_crop).reshape(-1, 3)

    def error(shift) -> float:
        maps = replace(demo_maps, crop_box=demo_maps.crop_box + np.array([*shift, *shift]))
        scene = load_scene(write_scene(tmp_path / str(shift), maps, tiny_scene / "images"), test_every=0,
                           pointmap_init=ALL)
        return float(np.abs(scene.colors - truth).mean())

    true_error = error((0, 0))
    assert true_error < 0.06
    for shift in ((1, 0), (-1, 0), (0, 1), (0, -1)):
        assert true_error < 0.8 * error(shift), shift


def test_depth_maps_give_the_same_points_as_world_points(tiny_scene, demo_maps, tmp_path):
    R, t = demo_maps.cam_from_world[:, :3, :3], demo_maps.cam_from_world[:, :3, 3]
    depth = np.einsum("nij,nhwj->nhwi", R, demo_maps.world_points.astype(np.float64))[..., 2] + t[:, 2, None, None]
    path = tmp_path / FILE_NAME
    write_pointmaps(path, demo_maps)
    arrays = dict(np.load(path))
    del arrays["world_points"]
    arrays["depth"] = depth
    np.savez(path, **arrays)
    maps = read_pointmaps(path)
    scale = np.abs(demo_maps.world_points).max()
    np.testing.assert_allclose(maps.world_points, demo_maps.world_points, atol=16 * F32 * scale)


def test_demo_trains_from_traced_point_maps(tiny_scene, demo_maps, tmp_path):
    scene_dir = write_scene(tmp_path / "s", demo_maps, tiny_scene / "images")
    cfg = TrainConfig(scene=str(scene_dir), out=tmp_path / "run", steps=60, eval_steps=(), checkpoint_every=60,
                      test_every=5, log_every=20)
    first = train(replace(cfg, steps=1, out=tmp_path / "one"), show_progress=False)
    final = train(cfg, show_progress=False)
    assert final["psnr"] > first["psnr"] + 2.0, (first, final)


# ------------------------------------------------------------------------------- init and rejection


def _refused(maps, photos: Path, out: Path) -> str:
    """The one-line error for `maps` with cam_from_world replaced by its inverse (camera-to-world poses)."""
    inverted = replace(maps, cam_from_world=np.linalg.inv(maps.cam_from_world))
    with pytest.raises(SplatkitError) as info:
        load_scene(write_scene(out, inverted, photos / "images"))
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{out / FILE_NAME}: image {maps.image_names[0]}: ")
    assert message.endswith("cam_from_world looks like camera-to-world poses (invert them), or the intrinsics "
                            "are not in the grid's pixels")
    return message


def test_inverted_poses_put_cup_points_behind_the_cameras(cup, cup_maps, tmp_path):
    """From the second photo on (the first is seen from where inversion leaves 45% in front), cup's points
    fall behind inverted cameras."""
    later = replace(cup_maps, image_names=cup_maps.image_names[1:], valid=cup_maps.valid[1:],
                    **{k: getattr(cup_maps, k)[1:] for k in ("world_points", "cam_from_world", "intrinsics",
                                                             "crop_box", "conf")})
    assert "10.jpg: 95% of its points lie behind its camera" in _refused(later, cup, tmp_path / "s")


def test_inverted_poses_in_the_demo_room_project_far_from_their_pixels(tiny_scene, demo_maps, tmp_path):
    """In a room seen from its middle most points stay in front of an inverted camera; they reproject far
    from the grid pixels that saw them."""
    assert "grid pixels (median) from the pixels that see them" in _refused(demo_maps, tiny_scene, tmp_path / "s")


def test_confidence_filter_percentile_and_absolute(tiny_scene, demo_maps, tmp_path):
    rng = np.random.default_rng(1)
    conf = rng.uniform(0, 10, demo_maps.conf.shape).astype(np.float32)
    scene_dir = write_scene(tmp_path / "s", replace(demo_maps, conf=conf), tiny_scene / "images")
    total = conf.size
    for spec, kept in (("p0", total), ("p75", np.sum(conf >= np.percentile(conf, 75))), ("5", np.sum(conf >= 5))):
        n = len(load_scene(scene_dir, pointmap_init=replace(ALL, conf=spec)).points)
        assert n == kept, spec
    strided = load_scene(scene_dir, pointmap_init=replace(ALL, conf="p0", stride=2))
    assert len(strided.points) == len(demo_maps.image_names) * 15 * 10
    for bad in ("p101", "lots", "nan"):
        with pytest.raises(SplatkitError, match="--init.conf"):
            load_scene(scene_dir, pointmap_init=replace(ALL, conf=bad))


def test_voxel_merge_is_the_mean_of_each_cell_and_the_cap_holds():
    rng = np.random.default_rng(2)
    points = rng.uniform(0, 1, (5000, 3))
    colors = rng.uniform(0, 1, (5000, 3)).astype(np.float32)
    merged, merged_colors = voxel_merge(points, colors, 0.25)
    cells: dict[tuple, list[int]] = {}
    for i, c in enumerate(map(tuple, np.floor((points - points.min(0)) / 0.25).astype(int))):
        cells.setdefault(c, []).append(i)
    expected = sorted((tuple(points[idx].mean(0)), tuple(colors[idx].mean(0))) for idx in cells.values())
    got = sorted(zip(map(tuple, merged), map(tuple, merged_colors)))
    assert len(got) == len(expected) <= 64
    np.testing.assert_allclose(np.array([g[0] for g in got]), np.array([e[0] for e in expected]), atol=1e-12)
    np.testing.assert_allclose(np.array([g[1] for g in got]), np.array([e[1] for e in expected]), atol=1e-6)


def test_perturbed_poses_turn_and_shift_by_the_amounts_asked(demo_maps):
    moved = perturbed_poses(demo_maps, 2.0, 0.1, seed=3)
    assert np.array_equal(moved.cam_from_world[0], demo_maps.cam_from_world[0])
    for before, after in zip(demo_maps.cam_from_world[1:], moved.cam_from_world[1:]):
        turn = Rotation.from_matrix(after[:3, :3] @ before[:3, :3].T).magnitude()
        assert np.degrees(turn) == pytest.approx(2.0, abs=1e-9)
        centers = [-m[:3, :3].T @ m[:3, 3] for m in (before, after)]
        assert np.linalg.norm(centers[1] - centers[0]) == pytest.approx(0.1, abs=1e-9)


def test_point_cap(tiny_scene, demo_maps, tmp_path):
    scene_dir = write_scene(tmp_path / "s", demo_maps, tiny_scene / "images")
    assert len(load_scene(scene_dir, pointmap_init=replace(ALL, max_points=777)).points) == 777


@pytest.mark.parametrize("edit,message", [
    (lambda a: a.pop("cam_from_world"), "has no 'cam_from_world'"),
    (lambda a: a.update(format_version=np.int32(2)), "format_version"),
    (lambda a: a.update(intrinsics=a["intrinsics"][:, :2]), r"'intrinsics' has shape \(10, 2, 3\)"),
    (lambda a: a.update(crop_box=a["crop_box"][:, ::-1]), "crop_box"),
    (lambda a: a.update(image_names=np.arange(10)), "image_names"),
    (lambda a: a["cam_from_world"].__setitem__((3, 0, 0), np.nan), "image 003.png: cam_from_world is not finite"),
    (lambda a: a["intrinsics"].__setitem__((0, 0, 0), -5.0), "image 000.png: intrinsics"),
])
def test_malformed_files_get_one_line(tiny_scene, demo_maps, tmp_path, edit, message):
    scene_dir = write_scene(tmp_path / "s", demo_maps, tiny_scene / "images")
    arrays = dict(np.load(scene_dir / FILE_NAME))
    edit(arrays)
    np.savez(scene_dir / FILE_NAME, **arrays)
    with pytest.raises(SplatkitError, match=message) as info:
        load_scene(scene_dir)
    assert "\n" not in str(info.value) and str(scene_dir / FILE_NAME) in str(info.value)


def test_truncated_file_and_missing_photo(tiny_scene, demo_maps, tmp_path):
    scene_dir = write_scene(tmp_path / "s", demo_maps, tiny_scene / "images")
    data = (scene_dir / FILE_NAME).read_bytes()
    (scene_dir / FILE_NAME).write_bytes(data[: len(data) // 2])
    with pytest.raises(SplatkitError, match="not a readable .npz"):
        load_scene(scene_dir)
    write_pointmaps(scene_dir / FILE_NAME, demo_maps)
    (scene_dir / "images" / "004.png").unlink()
    with pytest.raises(SplatkitError, match=r"004\.png: image listed in .*pointmaps\.npz is missing"):
        load_scene(scene_dir)


def test_monst3r_dynamic_masks_leave_moving_things_out(tiny_scene, tmp_path):
    """MonST3R marks moving pixels 255 in dynamic_mask_<i>.png; their points are not initial points."""
    cameras = load_colmap(tiny_scene).cameras
    world = _build_world(np.random.default_rng(0))
    maps = traced_pointmaps(cameras, lambda o, d: trace(world, o, d)[0], dust3r_grid)
    scene_dir = write_scene(tmp_path / "s", maps, tiny_scene / "images", "monst3r")
    every = replace(ALL, conf="p0")  # MonST3R writes log-confidence: 0 for the fixture's confidence 1
    everything = len(load_scene(scene_dir, pointmap_init=every).points)
    gw, gh = maps.grid_size
    mask = np.zeros((gh, gw), np.uint8)
    mask[: gh // 2] = 255
    Image.fromarray(mask).save(scene_dir / "dynamic_mask_3.png")
    assert len(load_scene(scene_dir, pointmap_init=every).points) == everything - gw * (gh // 2)


def test_vggt_file_must_match_the_photo_folder(tiny_scene, demo_maps, tmp_path):
    """VGGT's file stores no image names: the count must match the sorted photos, and the grid must be VGGT's
    crop or pad of them (the demo maps' 30x20 grid is neither)."""
    scene_dir = write_scene(tmp_path / "s", demo_maps, tiny_scene / "images", "vggt")
    with pytest.raises(SplatkitError, match=r"30x20 grid is not what VGGT's crop or VGGT's pad makes of "
                                            r"000.png \(48x36\)"):
        load_scene(scene_dir)
    (scene_dir / "images" / "009.png").unlink()
    with pytest.raises(SplatkitError, match="holds 10 views but .* has 9 photos"):
        load_scene(scene_dir)
