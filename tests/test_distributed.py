"""Batched views and data-parallel training on torch.distributed (gloo, two CPU processes under torchrun).

The claim under test: N processes x B views per step is the algorithm of one process with N*B views per step.
With two views the gradients sum in the same order either way (each view's loss runs backward on its own graph;
halving is exact in binary floats), so the two runs must agree bitwise, through densification."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from splatkit.errors import SplatkitError
from splatkit.train import checkpoint
from splatkit.train.config import TrainConfig
from splatkit.train.distributed import DataParallel
from splatkit.train.sampler import ViewSampler
from splatkit.train.strategies import ADCStrategy
from splatkit.train.trainer import train

STEPS = 40
# gloo binds to the address the host name resolves to, which on some CI machines no other process can reach.
LOOPBACK = {"GLOO_SOCKET_IFNAME": "lo"} if sys.platform.startswith("linux") else {}
# Two refinements (steps 10 and 20, then 30) change the count: identical edits are checked at each of them.
ADC_FLAGS = ["strategy:adc", "--strategy.refine-start", "5", "--strategy.refine-every", "10",
             "--strategy.grow-grad2d", "2e-5"]


def _config(scene: Path, out: Path, **kw) -> TrainConfig:
    adc = ADCStrategy(refine_start=5, refine_every=10, grow_grad2d=2e-5)
    return TrainConfig(scene=str(scene), out=out, steps=STEPS, checkpoint_every=20, eval_steps=(), test_every=5,
                       log_every=10, threads=1, strategy=adc, **kw)


def _torchrun(scene: Path, out: Path, *flags: str, steps: int = STEPS) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "splatkit", "train", str(scene), "--out", str(out), "--steps", str(steps),
               "--checkpoint-every", "20", "--eval-steps", "--test-every", "5", "--log-every", "10",
               "--threads", "1", *flags, *ADC_FLAGS]
    env = {**os.environ, "OMP_NUM_THREADS": "1", **LOOPBACK}
    return subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)


def _final(run: Path) -> dict:
    return checkpoint.load_checkpoint(checkpoint.list_checkpoints(run / "checkpoints")[-1])


def _assert_same_model(a: dict, b: dict) -> None:
    assert a["step"] == b["step"]
    for name, value in a["params"].items():
        assert torch.equal(value, b["params"][name]), name
    for name, value in a["buffers"].items():
        assert torch.equal(value, b["buffers"][name]), name


def test_sampler_visits_every_view_once_per_epoch_and_never_twice_in_a_step():
    train_ids = [0, 1, 2, 4, 5, 6, 7]
    sampler, generator = ViewSampler(train_ids), torch.Generator().manual_seed(0)
    epoch = [sampler.next(2, generator) for _ in range(3)]
    assert all(len(set(batch)) == 2 for batch in epoch)
    assert len({i for batch in epoch for i in batch}) == 6  # 6 of the 7 views, each once
    state, generator_state = sampler.state_dict(), generator.get_state()
    assert len(state["order"]) == 1  # one view left: a step of 2 starts the next epoch
    following = sampler.next(2, generator)
    assert len(set(following)) == 2 and len(sampler.state_dict()["order"]) == 5
    restored = ViewSampler(train_ids)  # a resume goes on with the same views
    restored.load_state_dict(state)
    assert restored.next(2, torch.Generator().set_state(generator_state)) == following


@pytest.mark.slow
def test_two_processes_train_bitwise_what_one_process_trains_with_two_views_and_resume_either_way(tiny_scene, tmp_path):
    one = train(_config(tiny_scene, tmp_path / "one", batch_size=2), show_progress=False)
    result = _torchrun(tiny_scene, tmp_path / "two")
    assert result.returncode == 0, result.stderr[-3000:]
    single, data_parallel = _final(tmp_path / "one"), _final(tmp_path / "two")
    _assert_same_model(single, data_parallel)
    log = [json.loads(line) for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in log] == [10, 20, 30, 40]  # process 0 alone writes the log
    assert len({entry["num_gaussians"] for entry in log}) > 1  # densification ran: edits were compared
    assert all(entry["views_per_s"] == pytest.approx(2 * entry["steps_per_s"]) for entry in log)
    assert json.loads((tmp_path / "two" / "metrics.json").read_text())["psnr"] == pytest.approx(one["psnr"])
    assert "2 processes x 1 view per step" in result.stderr

    # Resumes across process counts: one process's checkpoint at step 20 goes on in two, and two processes'
    # in one; both end where the uninterrupted runs did.
    for source, target in (("one", "one_then_two"), ("two", "two_then_one")):
        shutil.copytree(tmp_path / source, tmp_path / target)
        checkpoint.list_checkpoints(tmp_path / target / "checkpoints")[-1].unlink()  # keep step 20's
    # --resume keeps the saved --batch-size (2) unless told: two processes x 1 view keep 2 views a step
    assert _torchrun(tiny_scene, tmp_path / "one_then_two", "--resume", "--batch-size", "1").returncode == 0
    train(_config(tiny_scene, tmp_path / "two_then_one", batch_size=2, resume=True), show_progress=False)
    for resumed in ("one_then_two", "two_then_one"):
        _assert_same_model(single, _final(tmp_path / resumed))


def _check_identical_in(rank: int, world: int, port: int, errors) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      **LOOPBACK)
    processes = DataParallel(torch.device("cpu"))
    params = {"means": torch.zeros(3, 3), "opacities": torch.zeros(3)}
    processes.check_identical(params, 10)  # the same on both: passes
    params["opacities"][1] = 1e-6 * rank  # one process's model drifted
    try:
        processes.check_identical(params, 20)
    except SplatkitError as exc:
        errors.put(str(exc))
    processes.close()


def test_diverged_processes_stop_with_one_line_naming_the_step():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    context = mp.get_context("spawn")
    errors = context.Queue()
    workers = [context.Process(target=_check_identical_in, args=(rank, 2, port, errors)) for rank in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
    messages = [errors.get(timeout=5) for _ in range(2)]
    assert all(m.startswith("step 20: the processes' models diverged") and "1 differ from 0" in m for m in messages)
    assert not dist.is_initialized()
