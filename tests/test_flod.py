"""FLoD levels of detail (Seo et al. 2024) as a parameterisation: each level's size floor holds, a level switch
seeds the next level with copies that render as their frozen parents, frozen levels stay as they were while
training goes on, the run's phases follow the level budgets, and the level index survives the run's files."""

from __future__ import annotations

import json
import re
import math

import numpy as np
import pytest
import torch
from scipy.spatial import cKDTree

from splatkit.data.cameras import Camera
from splatkit.cli import main
from splatkit.io.export import describe
from splatkit.io.formats import read_splats
from splatkit.io.ply import load_ply
from splatkit.errors import SplatkitError
from splatkit.model.gaussians import PARAM_NAMES, Gaussians, init_from_points
from splatkit.model.levels import LevelChoice, band_edges, level_counts, single_level
from splatkit.render import rasterize
from splatkit.train.config import TrainConfig
from splatkit.train.gaussian_model import GaussianModel
from splatkit.train.learning_rates import LearningRates
from splatkit.train.parameterisations import FLoD
from splatkit.train.plugin import StepInfo
from splatkit.train.strategies import ADCStrategy
from splatkit.train.trainer import start, train

pytestmark = pytest.mark.xdist_group("tiny_scene")


def _model(n: int = 400) -> tuple[GaussianModel, FLoD]:
    rng = np.random.default_rng(0)
    init = init_from_points(rng.normal(size=(n, 3)), rng.uniform(size=(n, 3)), sh_degree=1)
    flod = FLoD(levels=3, tau=0.2, rho=4.0, level_steps=(1, 1, 1))
    model = GaussianModel(flod)
    flod.create(model, init, LearningRates(), scene_extent=1.0)
    return model, flod


def test_overlap_pruning_thins_crowds_to_one_per_cell_and_never_empties_a_level():
    """Every point crowds closer than the threshold (fox's random initial points at level 1): the reference's
    rule would remove them all; one per threshold-sized cell, the most opaque, must stay. Checked against a
    plain loop over the points."""
    model, flod = _model(n=2000)
    with torch.no_grad():
        model.params["means"].mul_(0.05)  # 3-NN distances ~0.01, all under the threshold below
        model.params["opacities"].copy_(torch.randn(2000, generator=torch.Generator().manual_seed(3)))
    threshold = 0.1
    prune = flod.overlapping(model, threshold)
    means, opacity = model.params["means"].detach().numpy(), model.params["opacities"].detach().numpy()
    best: dict[tuple, int] = {}
    for i, cell in enumerate(map(tuple, np.floor(means / threshold).astype(int))):
        if cell not in best or opacity[i] > opacity[best[cell]]:
            best[cell] = i
    assert sorted(np.flatnonzero(~prune.numpy())) == sorted(best.values()) and 1 < len(best) < 2000
    spread, _ = _model(n=50)  # points far apart: nothing crowds, nothing goes
    assert not flod.overlapping(spread, 1e-3).any()


def test_floors_follow_tau_over_rho_and_the_top_level_has_none():
    flod = FLoD()
    assert [flod.floor(level) for level in range(1, 6)] == [0.2, 0.05, 0.0125, 0.003125, 0.0]
    assert flod.phases(100_000) == [10_000, 15_000, 20_000, 25_000, 30_000]
    assert sum(flod.phases(7_001)) == 7_001


def test_a_level_switch_seeds_copies_that_render_as_their_frozen_parents():
    model, flod = _model()
    with torch.no_grad():  # sizes near and far above the floor
        model.params["scales"].copy_(torch.linspace(-12, 1, 1200).reshape(400, 3))
    camera = Camera.from_pose("c", np.eye(3), np.array([0.0, 0.0, -5.0]), math.radians(50), 80, 60)
    before = model.activated()
    image = rasterize(before, camera, backend="native").rgb
    flod.next_level(model)
    assert flod.current_level(model) == 2 and len(model.params["frozen_means"]) == 400
    after = model.activated()
    torch.testing.assert_close(after.scales, before.scales, rtol=1e-6, atol=0)
    torch.testing.assert_close(rasterize(after, camera, backend="native").rgb, image, rtol=0, atol=1e-6)
    frozen = single_level(model.gaussians(), 1)
    torch.testing.assert_close(frozen.activated_scales, before.scales, rtol=1e-6, atol=0)
    assert all(model.optimizers[name].state == {} for name in model.optimizers)  # moments restart


def test_training_through_the_levels_keeps_floors_frozen_levels_and_level_indices(tiny_scene, tmp_path):
    flod = FLoD(levels=3, level_steps=(1, 1, 1), tau=0.1)
    cfg = TrainConfig(scene=str(tiny_scene), out=tmp_path / "run", steps=60, eval_steps=(), backend="native",
                      device="cpu", parameterisation=flod, checkpoint_every=60, log_every=10,
                      strategy=ADCStrategy(refine_start=5, refine_every=5, reset_every=1000, grow_grad2d=2e-5))
    trainer = start(cfg)
    assert trainer.phases == [20, 20, 20]
    snapshots = {}
    for _ in range(60):
        trainer.train_step()
        g = trainer.model.gaussians()
        for level, count in level_counts(g).items():  # no Gaussian is smaller than its level's floor
            sizes = g.activated_scales[g.level == level]
            assert (sizes >= flod.floor(level) * (1 - 1e-6)).all(), (trainer.step, level)
        if trainer.step in (20, 40):  # a level just froze: keep what it holds
            snapshots[trainer.step // 20] = single_level(g, trainer.step // 20)
    final = trainer.model.gaussians()
    assert sorted(level_counts(final)) == [1, 2, 3]
    for level, frozen in snapshots.items():  # unchanged by the training of the levels after it
        for name in PARAM_NAMES:
            assert torch.equal(getattr(single_level(final, level), name), getattr(frozen, name)), (level, name)
    assert all(not model_param.requires_grad for name, model_param in trainer.model.params.items()
               if name.startswith("frozen_"))


def test_a_finished_run_writes_every_level_and_renders_the_finest(tiny_scene, tmp_path):
    cfg = TrainConfig(scene=str(tiny_scene), out=tmp_path / "run", steps=30, eval_steps=(), backend="native",
                      device="cpu", parameterisation=FLoD(levels=3, level_steps=(1, 1, 1), tau=0.1))
    metrics = train(cfg, show_progress=False)
    ply = load_ply(tmp_path / "run" / "point_cloud.ply")
    counts = level_counts(ply)
    assert sorted(counts) == [1, 2, 3] and metrics["num_gaussians"] == counts[3]
    for fmt, name in (("compact", "m.spkz"), ("ply", "m.ply"), ("spz", "m.spz")):  # levels kept where stored
        assert main(["export", str(tmp_path / "run"), "--format", fmt, "-o", str(tmp_path / name)]) == 0
        back = read_splats(tmp_path / name)
        assert level_counts(back) == (counts if fmt != "spz" else {}) and len(back) == (
            sum(counts.values()) if fmt != "spz" else counts[3])
        for level in counts if fmt != "spz" else ():  # each level's splats where it has them (files reorder)
            ours, theirs = single_level(back, level).means.numpy(), single_level(ply, level).means.numpy()
            assert cKDTree(theirs).query(ours)[0].max() < 1e-3 * (1 + np.abs(theirs).max()), (fmt, level)
    assert main(["export", str(tmp_path / "run"), "--format", "spz", "--level", "2", "-o",
                 str(tmp_path / "2.spz")]) == 0
    assert len(read_splats(tmp_path / "2.spz")) == counts[2]
    assert main(["export", str(tmp_path / "run"), "--format", "compact", "--lod-set", str(tmp_path / "set")]) == 0
    manifest = json.loads((tmp_path / "set" / "lod.json").read_text())
    assert [entry["level"] for entry in manifest["levels"]] == [1, 2, 3] and manifest["focal_px"] > 0
    for entry in manifest["levels"]:
        path = tmp_path / "set" / entry["file"]
        assert entry["bytes"] == path.stat().st_size and entry["count"] == len(read_splats(path))
        assert entry["count"] == counts[entry["level"]]
    assert describe(tmp_path / "run" / "point_cloud.ply").levels == counts  # `info` lists them
    before = (tmp_path / "run" / "metrics.json").read_bytes()
    assert main(["eval", str(tmp_path / "run"), "--level", "1"]) == 0  # its own folder, labelled
    scored = json.loads((tmp_path / "run" / "eval" / "level-1" / "metrics.json").read_text())
    assert scored["levels"] == "level-1" and (tmp_path / "run" / "metrics.json").read_bytes() == before
    # A streamed SOG of the run holds every level; its evaluation is labelled by its folder (the name is fixed).
    streamed = tmp_path / "s" / "lod-meta.json"
    assert main(["export", str(tmp_path / "run"), "--format", "sog-lod", "-o", str(streamed)]) == 0
    assert level_counts(read_splats(streamed)) == counts
    assert main(["eval", str(tmp_path / "run"), "--model", str(streamed), "--level", "2"]) == 0
    assert (tmp_path / "run" / "eval" / "s-lod-meta.json" / "level-2" / "metrics.json").is_file()
    bands = [entry["band"] for entry in manifest["levels"]]  # coarsest far out, finest from the camera on
    assert bands[0][1] is None and bands[-1][0] == 0.0 and bands[0][0] == bands[1][1] and bands[1][0] == bands[2][1]


def test_band_edges_are_where_each_floor_projects_to_one_pixel():
    floors = {1: 0.2, 2: 0.05, 3: 0.0125, 4: 0.003125, 5: 1e-4}
    edges = band_edges(floors, 3, 5, focal=100.0)  # d(l) = 100 * s_min(l) / 1 px
    assert edges == {5: (0.0, 0.3125), 4: (0.3125, 1.25), 3: (1.25, math.inf)}
    assert band_edges(floors, 1, 2, focal=400.0, screen_size=2.0) == {2: (0.0, 40.0), 1: (40.0, math.inf)}
    assert band_edges(floors, 4, 4, focal=100.0) == {4: (0.0, math.inf)}


def _levelled(distances_per_level: dict[int, list[float]], floors: dict[int, float]) -> Gaussians:
    """Gaussians on the +z axis at the given distances from the origin, each level's smallest axis at its floor."""
    rows = [(level, d) for level, ds in distances_per_level.items() for d in ds]
    n = len(rows)
    means = torch.tensor([[0.0, 0.0, d] for _, d in rows])
    scales = torch.log(torch.tensor([[floors[level], 1.0, 1.0] for level, _ in rows]))
    return Gaussians(means, scales, torch.tensor([[1.0, 0, 0, 0]] * n), torch.zeros(n), torch.zeros(n, 1, 3),
                     torch.zeros(n, 0, 3), level=torch.tensor([level for level, _ in rows]))


def test_selective_rendering_takes_each_level_within_its_band():
    floors = {1: 0.2, 2: 0.05, 3: 0.0125}
    g = _levelled({1: [0.5, 5.0, 50.0], 2: [0.5, 5.0, 50.0], 3: [0.5, 5.0, 50.0]}, floors)
    camera = Camera.from_pose("c", np.eye(3), np.zeros(3), 2 * math.atan(0.5), 100, 100)  # focal 100 px
    chosen = LevelChoice(levels=(1, 3)).for_view(g, camera)
    # level 3 nearer than 100 px * 0.05 = 5, level 2 in [5, 100 * 0.2 = 20), level 1 from 20 on
    assert sorted(zip(chosen.level.tolist(), chosen.means[:, 2].tolist())) == [(1, 50.0), (2, 5.0), (3, 0.5)]
    assert torch.equal(LevelChoice(level=2).for_view(g, camera).level, torch.tensor([2, 2, 2]))


def test_a_budget_picks_the_finest_set_that_fits_and_never_more():
    floors = {1: 0.2, 2: 0.05, 3: 0.0125}
    rng = np.random.default_rng(0)
    g = _levelled({1: list(rng.uniform(0.1, 60, 20)), 2: list(rng.uniform(0.1, 60, 80)),
                   3: list(rng.uniform(0.1, 60, 320))}, floors)
    camera = Camera.from_pose("c", np.eye(3), np.zeros(3), 2 * math.atan(0.5), 100, 100)
    sizes = {(a, b): len(LevelChoice(levels=(a, b)).for_view(g, camera)) for b in (1, 2, 3) for a in range(1, b + 1)}
    for budget in (20, 25, 60, 100, 150, 319, 320, 1000):
        chosen = LevelChoice(budget=budget).for_view(g, camera)
        fitting = [(b, a) for (a, b), n in sizes.items() if n <= budget]
        b, a = max(fitting)  # the finest level near the camera first, then the finest far away
        assert len(chosen) == sizes[(a, b)] <= budget, budget
    with pytest.raises(SplatkitError, match="no level fits"):
        LevelChoice(budget=19).for_view(g, camera)
    with pytest.raises(SplatkitError, match="one of"):
        LevelChoice(level=1, budget=5)


def test_lod_preset_sets_defaults_that_flags_override_and_refuses_quantize(capsys):
    from splatkit.cli import parse

    cfg = parse(["train", "demo", "--lod", "--steps", "7000"])
    assert isinstance(cfg.parameterisation, FLoD) and cfg.lod
    assert FLoD().phases(7000) == [700, 1050, 1400, 1750, 2100]
    # The reference refines from its step 500 of 30,000 in the finest level, until 40-50% of each level.
    assert (cfg.strategy.refine_start, cfg.strategy.refine_until) == (round(2100 * 500 / 30_000), 0.5)
    # Its intervals (2,000, 1,000, 500, 500, 200 steps of levels of 10k, 15k, 20k, 25k, 30k) scaled to these
    # levels, never under refine_every's 100 steps.
    reference = [(2000, 10_000), (1000, 15_000), (500, 20_000), (500, 25_000), (200, 30_000)]
    for phase, (length, (every, level_steps)) in enumerate(zip(FLoD().phases(7000), reference)):
        info = StepInfo(0, 7000, [], [], None, 1.0, phase=phase, phase_steps=length)
        assert cfg.strategy.interval(info) == max(100, round(every / level_steps * length))
    assert cfg.strategy.interval(StepInfo(0, 7000, [], [], None, 1.0)) == 100
    cfg = parse(["train", "demo", "--lod", "parameterisation:flod", "--parameterisation.levels", "3",
                 "--parameterisation.level-steps", "1", "1", "1"])
    assert cfg.parameterisation.levels == 3 and cfg.strategy.refine_until == 0.5
    assert main(["train", "demo", "--lod", "--quantize"]) == 2
    assert "do not combine" in capsys.readouterr().err
    assert main(["train", "demo", "--lod", "--steps", "3"]) == 2  # five levels need five steps at least
    assert "leaves level" in capsys.readouterr().err


@pytest.mark.parametrize("choice, words", [
    (dict(levels=(5, 3)), "coarser (smaller) level first"),
    (dict(budget=0), "positive"),
    (dict(level=1, levels=(1, 2)), "one of"),
])
def test_impossible_level_choices_get_one_line(choice, words):
    with pytest.raises(SplatkitError, match=re.escape(words)):
        LevelChoice(**choice)
