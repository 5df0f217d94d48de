"""Outputs named after input images stay unique and keep the image's folder (cameras in several folders)."""

from __future__ import annotations

import json
from pathlib import Path

from scene_variants import cup_variant
from splatkit.cli import main
from splatkit.data.cameras import output_names


def test_output_names_keep_folders_and_never_collide():
    names = ["cam_a/5.jpg", "cam_b/5.jpg", "x/5.jpg", "x/5.png", "../up/z.JPG", "/abs/q.jpg", "a", "a", "a~1"]
    out = output_names(names)
    assert out[:2] == ["cam_a/5.png", "cam_b/5.png"]
    assert out[2:4] == ["x/5.jpg.png", "x/5.png.png"]  # 5.png alone would serve two inputs
    assert out[4:6] == ["up/z.png", "abs/q.png"]  # nothing may land outside the output folder
    assert len(set(out)) == len(out) and all(".." not in n and not n.startswith("/") for n in out)


def test_render_and_eval_outputs_of_images_in_two_folders(shared_datasets: Path, tmp_path: Path):
    """cup_colmap's first 16 photos as cam_a/1..8.jpg and cam_b/1..8.jpg: every view gets its own render,
    side-by-side and metrics entry (named by the file stem alone they overwrote each other)."""
    scene = cup_variant(shared_datasets, tmp_path / "cup", keep=16,
                        rename=lambda k, name: f"cam_{'ab'[k % 2]}/{k // 2 + 1}.jpg")
    run = tmp_path / "run"
    common = ["--backend", "torch"]
    assert main(["train", str(scene), "--out", str(run), "--steps", "1", "--data-factor", "8", "--test-every", "3",
                 "--eval-steps", *common]) == 0
    renders = tmp_path / "renders"
    assert main(["render", str(run), "--split", "all", "--out", str(renders), *common]) == 0
    expected = sorted(f"cam_{c}/{k}.png" for c in "ab" for k in range(1, 9))
    assert sorted(p.relative_to(renders).as_posix() for p in renders.rglob("*.png")) == expected
    assert main(["eval", str(run), *common]) == 0
    views = json.loads((run / "eval" / "metrics.json").read_text())["views"]
    held_out = [f"cam_{'ab'[i % 2]}/{i // 2 + 1}.jpg" for i in range(16)]
    held_out = sorted(held_out)[::3]  # cameras sorted by name, every 3rd held out
    assert [v["name"] for v in views] == held_out
    side_by_sides = sorted(p.relative_to(run / "eval").as_posix() for p in (run / "eval").rglob("*.png"))
    assert side_by_sides == sorted(n.replace(".jpg", ".png") for n in held_out)


def test_transforms_images_outside_the_scene_folder_keep_distinct_names(shared_datasets: Path, tmp_path: Path):
    """Two frames whose photos share a file name in two folders beside the scene get distinct camera names."""
    from splatkit.data import load_scene

    fox = json.loads((shared_datasets / "fox" / "transforms.json").read_text())
    photo = (shared_datasets / "fox" / fox["frames"][0]["file_path"]).resolve()
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "0.jpg").symlink_to(photo)
    fox["frames"] = [dict(fox["frames"][k], file_path=f"../{folder}/0.jpg") for k, folder in enumerate("ab")]
    (tmp_path / "scene").mkdir()
    (tmp_path / "scene" / "transforms.json").write_text(json.dumps(fox))
    scene = load_scene(tmp_path / "scene", test_every=0)
    assert sorted(c.name for c in scene.cameras) == ["../a/0.jpg", "../b/0.jpg"]
    assert sorted(scene.output_names) == ["a/0.png", "b/0.png"]
