"""`splatkit partition` and `splatkit merge`: blocks cover every camera and point, cores tile the ground plane,
a block trains as a scene with its source's held-out split, and a merge keeps every Gaussian exactly once."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from splatkit.cli import main
from splatkit.data import load_scene
from splatkit.data.blocks import grid_for, ground_axes, partition, read_block
from splatkit.data.demo_scene import _build_world, generate_demo_scene, pixel_rays, trace
from splatkit.io.ply import load_ply, save_ply
from splatkit.model.gaussians import init_from_points

pytestmark = pytest.mark.xdist_group("tiny_scene")


def test_blocks_cover_every_camera_and_point_and_cores_tile_the_plane(tiny_scene):
    scene = load_scene(tiny_scene, test_every=0)
    blocks = partition(scene, 2, 2, margin=0.2)
    assert [b.name for b in blocks] == ["block_0_0", "block_0_1", "block_1_0", "block_1_1"]
    names = {c.name for c in scene.cameras}
    assert set().union(*(b.cameras for b in blocks)) == names  # every camera trains somewhere
    original = scene.to_normalized.inverse().apply_points(scene.points)
    cores = np.stack([b.region.inside(original) for b in blocks])
    assert (cores.sum(0) == 1).all()  # each point in exactly one core
    for b in blocks:  # the grown region holds the core, and its points are the block's
        grown = b.region.inside(original, grown=True)
        assert (grown | ~b.region.inside(original)).all() and b.point_count == int(grown.sum())
    far = np.array([[1e9, -1e9, 3.0], [-1e9, 1e9, -2.0]])  # the outer cells reach to infinity
    assert (np.stack([b.region.inside(far) for b in blocks]).sum(0) == 1).all()
    axes = ground_axes(scene)
    np.testing.assert_allclose(axes @ axes.T, np.eye(2), atol=1e-12)
    for per_block, blocks_wanted in ((10, 1), (5, 2), (3, 4), (1, 10)):  # --cameras-per-block
        rows, cols = grid_for(scene, per_block)
        assert blocks_wanted <= rows * cols < blocks_wanted + max(rows, cols)


def test_a_block_trains_as_its_source_narrowed_with_the_source_split(tiny_scene, tmp_path):
    assert main(["partition", str(tiny_scene), "--out", str(tmp_path / "blocks"), "--blocks", "1x2",
                 "--test-every", "5"]) == 0
    full = load_scene(tiny_scene, test_every=5)
    held_out = {full.cameras[i].name for i in full.test_ids}
    for folder in sorted((tmp_path / "blocks").iterdir()):
        record = read_block(folder)
        assert record.source == tiny_scene.resolve() and record.partition == ["block_0_0", "block_0_1"]
        block = load_scene(folder, test_every=5)
        assert [c.name for c in block.cameras] == sorted(record.cameras)
        assert {block.cameras[i].name for i in block.test_ids} == held_out & set(record.cameras)
        assert block.to_normalized.to_json() == full.to_normalized.to_json()  # exports land in the source frame
        np.testing.assert_array_equal(block.cameras[0].world_to_cam,
                                      next(c for c in full.cameras if c.name == block.cameras[0].name).world_to_cam)
    moved = tmp_path / "moved"  # the source is found relative to the block folder
    shutil.copytree(tmp_path / "blocks", moved / "blocks")
    (moved / tiny_scene.name).symlink_to(tiny_scene)
    record = json.loads((moved / "blocks" / "block_0_0" / "block.json").read_text())
    record["source"] = f"../../{tiny_scene.name}"
    (moved / "blocks" / "block_0_0" / "block.json").write_text(json.dumps(record))
    assert len(load_scene(moved / "blocks" / "block_0_0").cameras) == len(record["cameras"])


def _fake_run(run: Path, block: Path, model_ply: Path) -> None:
    """A finished run of `block` whose model is `model_ply` (what merge reads: config.json and the .ply)."""
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"config": {"scene": str(block)}, "scene_path": str(block),
                                                 "to_normalized": {"scale": 1.0, "center": [0, 0, 0]}}))
    shutil.copy(model_ply, run / "point_cloud.ply")


def test_merge_keeps_each_gaussian_exactly_once_and_refuses_incomplete_sets(tiny_scene, tmp_path):
    main(["partition", str(tiny_scene), "--out", str(tmp_path / "blocks"), "--blocks", "2x2"])
    rng = np.random.default_rng(0)
    points = rng.normal(0, 3, (5000, 3))
    model = init_from_points(points, rng.uniform(0, 1, (5000, 3)), sh_degree=1)
    save_ply(model, tmp_path / "model.ply")
    blocks = sorted((tmp_path / "blocks").iterdir())
    runs = []
    for folder in blocks:  # every block "trained" the same Gaussians everywhere, margins included
        _fake_run(tmp_path / "runs" / folder.name, folder, tmp_path / "model.ply")
        runs.append(str(tmp_path / "runs" / folder.name))
    assert main(["merge", *runs, "--out", str(tmp_path / "merged.ply")]) == 0
    merged = load_ply(tmp_path / "merged.ply")
    assert len(merged) == len(model)
    order = lambda m: torch.from_numpy(np.lexsort(m.means.numpy().T))  # noqa: E731
    torch.testing.assert_close(merged.means[order(merged)], load_ply(tmp_path / "model.ply").means[order(model)],
                               rtol=0, atol=0)
    assert main(["merge", *runs[:3], "--out", str(tmp_path / "partial.ply")]) == 2  # block_1_1 missing
    assert main(["merge", runs[0], *runs, "--out", str(tmp_path / "twice.ply")]) == 2
    assert not (tmp_path / "partial.ply").exists() and not (tmp_path / "twice.ply").exists()



def test_cameras_join_the_blocks_they_see_by_exact_geometry(tmp_path):
    """On the demo room filmed along its walls (each view sees a local stretch), a camera joins a block when
    most of what it sees lies in that block's grown region, and stays out of a block it does not see at all.
    What a camera sees is ray cast exactly from the room's geometry, not taken from the sparse points that
    `partition` uses."""
    scene_dir = generate_demo_scene(tmp_path / "walk", n_cameras=24, width=48, height=36, layout="walk")
    scene = load_scene(scene_dir, test_every=0)
    world = _build_world(np.random.default_rng(0))  # generate_demo_scene's world for seed 0
    blocks = partition(scene, 2, 1, margin=0.2)
    back = scene.to_normalized.inverse()
    u, v = np.meshgrid(np.arange(4, 48, 8) + 0.5, np.arange(3, 36, 6) + 0.5)
    for camera in scene.cameras:
        w2c = camera.world_to_cam.astype(np.float64).copy()
        w2c[:3, 3] = -w2c[:3, :3] @ back.apply_points(camera.center[None])[0]  # rotation is the original's
        origins, directions = pixel_rays(camera.K.astype(np.float64), w2c, np.stack([u.ravel(), v.ravel()], 1))
        t, _ = trace(world, origins, directions)
        surface = origins + t[:, None] * directions
        for block in blocks:
            share = block.region.inside(surface, grown=True).mean()
            eye_inside = block.region.inside(origins[:1], grown=True)[0]
            if share >= 0.5 or eye_inside:
                assert camera.name in block.cameras, (camera.name, block.name, share)
            elif share == 0:
                assert camera.name not in block.cameras, (camera.name, block.name)
    assert all(len(b.cameras) < len(scene.cameras) for b in blocks)  # the blocks are local, not the whole walk
