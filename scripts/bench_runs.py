"""Training runs for the benchmarks, kept so a benchmark longer than one sitting can be finished in several: a
finished run leaves its figures in `<run>/bench.json` and is not trained again; a run cut off before its end is
trained again from the start, so every wall time is one sitting's."""

from __future__ import annotations

import json
import shutil
import subprocess
import tarfile
import time
from pathlib import Path

from splatkit.atomic import write_text_atomic
from splatkit.train.config import TrainConfig
from splatkit.train.trainer import train


def trained(cfg: TrainConfig) -> dict:
    """Train `cfg` into `cfg.out` (or read its kept figures): held-out PSNR/SSIM (mean and per view), final
    #Gaussians, wall seconds, and the run's metrics.jsonl lines (`log`)."""
    done = cfg.out / "bench.json"
    if done.exists():
        return json.loads(done.read_text())
    shutil.rmtree(cfg.out, ignore_errors=True)
    start = time.perf_counter()
    metrics = train(cfg, show_progress=False)
    seconds = time.perf_counter() - start
    log = [json.loads(line) for line in (cfg.out / "metrics.jsonl").read_text().splitlines()]
    result = {"psnr": metrics["psnr"], "ssim": metrics["ssim"], "gaussians": metrics["num_gaussians"],
              "seconds": seconds, "views": {v["name"]: v["psnr"] for v in metrics["views"]}, "log": log}
    write_text_atomic(done, json.dumps(result))
    return result


def revision_tree(rev: str, into: Path) -> Path:
    """The tree of git revision `rev` of this repository, unpacked into `into` once (no work tree is touched), for
    benchmarks that run an earlier revision's code beside this one's."""
    root = Path(__file__).resolve().parents[1]
    commit = subprocess.run(["git", "-C", str(root), "rev-parse", "--verify", f"{rev}^{{commit}}"], check=True,
                            capture_output=True, text=True).stdout.strip()  # a branch name may move; a commit not
    tree = into / f"tree_{commit[:12]}"
    if not tree.is_dir():
        archive = into / f"{commit[:12]}.tar"
        subprocess.run(["git", "-C", str(root), "archive", "--format=tar", "-o", str(archive), commit], check=True)
        with tarfile.open(archive) as tar:
            tar.extractall(tree, filter="data")
        archive.unlink()
    return tree
