"""Plug-ins chosen by name on the command line, saved in config.json, read back by one decoder, resumed bitwise;
resume flags override the saved settings except those that define the run; damaged configs get one line."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil

import pytest
import torch

from splatkit.cli import main
from splatkit.config_json import from_json, to_json
from splatkit.errors import SplatkitError
from splatkit.train import checkpoint
from splatkit.train.config import TrainConfig
from splatkit.train.run_record import read_run
from splatkit.train.parameterisations import PARAMETERISATIONS, EaglesQuantized, FLoD, Plain3DGS
from splatkit.train.strategies import STRATEGIES, ADCStrategy, LPMStrategy, MCMCStrategy
from splatkit.train.trainer import train

pytestmark = pytest.mark.xdist_group("tiny_scene")

# Settings under which each registered strategy adds, removes or relocates Gaussians within 40 steps.
STRATEGY_CASES = {
    "adc": ADCStrategy(refine_start=5, refine_every=10, reset_every=25, grow_grad2d=2e-5),
    "mcmc": MCMCStrategy(refine_start=5, refine_every=10, cap_max=5000),
    "lpm": LPMStrategy(ADCStrategy(refine_start=5, refine_every=10, reset_every=25, grow_grad2d=2e-5),
                       reset_start=5, reset_every=5, patch=4),
}


# Each parameterisation with the settings of its resume case (EAGLES trains coarse-to-fine, as --quantize does).
PARAMETERISATION_CASES = {"3dgs": (Plain3DGS(), {}), "eagles": (EaglesQuantized(), {"coarse_to_fine": True}),
                          "flod": (FLoD(levels=3, level_steps=(1, 1, 2), tau=0.1), {})}
RESUME_CASES = [(name, "3dgs") for name in sorted(STRATEGY_CASES)] + [("adc", "eagles"), ("mcmc", "eagles"),
                                                                      ("adc", "flod")]


def test_every_registered_plugin_has_a_resume_case():
    assert sorted(STRATEGY_CASES) == sorted(STRATEGIES.names())
    assert sorted(PARAMETERISATION_CASES) == sorted(PARAMETERISATIONS.names())


@pytest.mark.parametrize("name", sorted(STRATEGY_CASES))
def test_strategy_round_trips_through_config_json(name, tiny_scene, tmp_path):
    cfg = TrainConfig(scene=str(tiny_scene), out=tmp_path / "run", strategy=STRATEGY_CASES[name], steps=7)
    assert from_json(TrainConfig, json.loads(json.dumps(to_json(cfg))), source="mem") == cfg
    assert to_json(cfg)["strategy"]["name"] == name


@pytest.mark.parametrize("name, parameterisation", RESUME_CASES)
def test_each_plugin_resumes_bitwise(name, parameterisation, tiny_scene, tmp_path):
    chosen, settings = PARAMETERISATION_CASES[parameterisation]
    cfg = TrainConfig(scene=str(tiny_scene), out=tmp_path / "full", steps=40, checkpoint_every=20,
                      sh_degree_interval=15, eval_steps=(), backend="native", strategy=STRATEGY_CASES[name],
                      parameterisation=chosen, log_every=10, device="cpu", **settings)
    assert from_json(TrainConfig, json.loads(json.dumps(to_json(cfg))), source="mem") == cfg
    train(cfg, show_progress=False)
    shutil.copytree(tmp_path / "full", tmp_path / "killed")  # killed after its step-20 checkpoint
    (tmp_path / "killed" / "checkpoints" / "step_0000040.pt").unlink()
    train(dataclasses.replace(cfg, out=tmp_path / "killed", resume=True), show_progress=False)
    full = checkpoint.load_checkpoint(tmp_path / "full" / "checkpoints" / "step_0000040.pt")
    resumed = checkpoint.load_checkpoint(tmp_path / "killed" / "checkpoints" / "step_0000040.pt")
    start = checkpoint.load_checkpoint(tmp_path / "killed" / "checkpoints" / "step_0000020.pt")
    assert len(full["params"]["means"]) != len(start["params"]["means"])  # the set changed after the checkpoint
    for group in ("params", "buffers"):
        assert full[group].keys() == resumed[group].keys()
        for key, value in full[group].items():
            assert torch.equal(value, resumed[group][key]), f"{group}.{key}"
    for key, state in full["optimizers"].items():
        for moment in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(state["state"][0][moment], resumed["optimizers"][key]["state"][0][moment])


def test_cli_picks_a_strategy_by_name_and_resume_extends_steps(tiny_scene, tmp_path):
    run = tmp_path / "run"
    assert main(["train", str(tiny_scene), "--out", str(run), "strategy:mcmc", "--strategy.cap-max", "1234",
                 "--steps", "6", "--backend", "native", "--eval-steps", "--device", "cpu"]) == 0
    saved = read_run(run).config
    assert isinstance(saved.strategy, MCMCStrategy) and saved.strategy.cap_max == 1234 and saved.steps == 6
    # Resume: the saved strategy and backend stay; --steps extends the run.
    assert main(["train", str(tiny_scene), "--out", str(run), "--resume", "--steps", "9"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["step"] == 9
    resumed = read_run(run).config
    assert resumed.strategy == saved.strategy and resumed.backend == "native" and resumed.steps == 9


def test_resume_refuses_to_change_what_defines_the_run(tiny_scene, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", str(tiny_scene), "--out", str(run), "--steps", "3", "--backend", "native",
                 "--eval-steps"]) == 0
    other = tmp_path / "other"
    shutil.copytree(tiny_scene, other)
    capsys.readouterr()
    for args, field in [([str(other)], "scene"), ([str(tiny_scene), "--data-factor", "2"], "data_factor"),
                        ([str(tiny_scene), "--seed", "1"], "seed"),
                        ([str(tiny_scene), "strategy:mcmc"], "strategy.name")]:
        assert main(["train", *args, "--out", str(run), "--resume", "--steps", "5"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "config.json" in err and f"cannot change {field}" in err, err
    assert checkpoint.list_checkpoints(run / "checkpoints")[-1].name == "step_0000003.pt"


@pytest.mark.parametrize("edit,field", [
    (lambda c: c["strategy"].update(grow_grad2d_typo=1e-4), "strategy.grow_grad2d_typo"),
    (lambda c: c["strategy"].update(name="lpm-from-the-future"), "strategy.name"),
    (lambda c: c.update(steps="many"), "steps"),
    (lambda c: c["lr"].update(means=[1]), "lr.means"),
    (lambda c: c.update(eval_steps=[1, "x"]), "eval_steps[1]"),
])
def test_an_edited_config_gets_one_line_naming_the_file_and_field(edit, field, tiny_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    record = json.loads((run / "config.json").read_text())
    edit(record["config"])
    (run / "config.json").write_text(json.dumps(record))
    with pytest.raises(SplatkitError, match=re.escape(f"config.json: field '{field}'")):
        read_run(run)
    for argv in (["eval", str(run)], ["train", record["config"]["scene"], "--out", str(run), "--resume"]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"field '{field}'" in err and str(run) in err, err


def test_a_config_from_before_named_plugins_reads_as_adc(tiny_run, tmp_path):
    """Configs written before strategies had names (and before newer settings existed) still load."""
    record = json.loads((tiny_run / "config.json").read_text())
    old = record["config"]
    del old["strategy"]["name"], old["parameterisation"], old["device"], old["lr"]["means_final"]
    old["init_opacity"], old["init_scale"] = 0.1, 1.0
    run = tmp_path / "old"
    shutil.copytree(tiny_run, run)
    (run / "config.json").write_text(json.dumps(record))
    config = read_run(run).config
    assert isinstance(config.strategy, ADCStrategy) and config.strategy.refine_every == 10
    assert config.init_opacity == 0.1 and config.lr.means_final == 0.01


def test_cli_help_lists_the_strategies(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert "strategy:adc" in out and "strategy:mcmc" in out


def test_a_refused_resume_leaves_the_saved_settings_alone(tiny_scene, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", str(tiny_scene), "--out", str(run), "--steps", "6", "--backend", "native",
                 "--eval-steps", "--checkpoint-every", "3"]) == 0
    saved = (run / "config.json").read_text()
    capsys.readouterr()
    for extra, message in ((["--steps", "4"], "already at step 6"), (["--device", "cuda"], "cuda"),
                           (["--init-opacity", "1.5"], "--init-opacity 1.5: must be in (0, 1)"),
                           (["strategy:adc", "--strategy.refine-every", "0"], "--strategy.refine-every 0: out of range")):
        assert main(["train", str(tiny_scene), "--out", str(run), "--resume", *extra]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
        assert (run / "config.json").read_text() == saved


def test_resume_takes_strategy_flags_without_naming_the_strategy_again(tiny_scene, tmp_path):
    run = tmp_path / "run"
    assert main(["train", str(tiny_scene), "--out", str(run), "strategy:mcmc", "--strategy.cap-max", "4100",
                 "--steps", "3", "--backend", "native", "--eval-steps"]) == 0
    assert main(["train", str(tiny_scene), "--out", str(run), "--resume", "--steps", "5",
                 "--strategy.noise-lr", "1000"]) == 0
    strategy = read_run(run).config.strategy
    assert isinstance(strategy, MCMCStrategy) and strategy.cap_max == 4100 and strategy.noise_lr == 1000


def test_resume_from_an_older_checkpoint_forgets_the_later_log(tiny_scene, tmp_path):
    run = tmp_path / "run"
    assert main(["train", str(tiny_scene), "--out", str(run), "--steps", "8", "--backend", "native",
                 "--eval-steps", "--checkpoint-every", "4", "--log-every", "1"]) == 0
    (run / "checkpoints" / "step_0000008.pt").unlink()
    with open(run / "metrics.jsonl", "a") as log:
        log.write('{"step": 9, "loss"')  # a line torn by a kill
    assert main(["train", str(tiny_scene), "--out", str(run), "--resume"]) == 0
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 9))


def test_mcmc_holds_its_cap_from_the_first_step(tiny_scene, tmp_path):
    train(TrainConfig(scene=str(tiny_scene), out=tmp_path / "run", steps=2, backend="native", device="cpu",
                      eval_steps=(), strategy=MCMCStrategy(cap_max=1000)), show_progress=False)
    saved = checkpoint.load_checkpoint(checkpoint.list_checkpoints(tmp_path / "run" / "checkpoints")[-1])
    assert len(saved["params"]["means"]) == 1000  # the tiny scene has 4,000 points


def test_a_checkpoint_from_before_plugins_resumes(tiny_scene, tmp_path):
    """Checkpoints written before the plug-in seams (params, optimizers and ADC's state at the top) resume."""
    cfg = TrainConfig(scene=str(tiny_scene), out=tmp_path / "run", steps=10, checkpoint_every=5, backend="native",
                      device="cpu", eval_steps=(), strategy=STRATEGY_CASES["adc"])
    train(cfg, show_progress=False)
    path = tmp_path / "run" / "checkpoints" / "step_0000005.pt"
    new = torch.load(path, weights_only=False)
    n = len(new["params"]["means"])
    old = {key: new[key] for key in ("step", "params", "optimizers", "generator", "torch_rng")}
    old["strategy"] = {"grad2d": torch.ones(n), "count": torch.ones(n), **new["plugins"]["strategy"]}
    torch.save(old, path)
    (tmp_path / "run" / "checkpoints" / "step_0000010.pt").unlink()
    metrics = train(dataclasses.replace(cfg, resume=True), show_progress=False)
    assert metrics["step"] == 10
