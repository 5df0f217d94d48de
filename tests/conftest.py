"""Shared pytest fixtures."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

# Each pytest-xdist worker gets one OpenMP thread (torch's runtime and the native kernels' are separate pools):
# two workers with two spinning threads each on a 2-core machine ran the suite's trainings 2.3x slower. Set
# before torch loads; subprocesses the tests start inherit it. tests/test_native.py checks two threads itself.
if "PYTEST_XDIST_WORKER" in os.environ:
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402

from splatkit.data.demo_scene import generate_demo_scene  # noqa: E402
from splatkit.train.config import TrainConfig  # noqa: E402
from splatkit.train.strategies import ADCStrategy  # noqa: E402
from splatkit.train.trainer import train  # noqa: E402

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu-sandbox", "--use-angle=swiftshader",
                 "--enable-unsafe-swiftshader", "--disable-background-networking", "--disable-dev-shm-usage"]


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    """The real captures in ../shared/datasets (next to the repo); tests skip when it is absent."""
    path = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
    if not path.is_dir():
        pytest.skip("../shared/datasets not found")
    return path


@pytest.fixture(scope="session")
def tiny_scene(tmp_path_factory) -> Path:
    """A 10-camera, 48x36 demo scene: enough for end-to-end tests that must stay fast."""
    return generate_demo_scene(tmp_path_factory.mktemp("scene") / "tiny", n_cameras=10, width=48, height=36)


@pytest.fixture(scope="session")
def tiny_run(tiny_scene, tmp_path_factory) -> Path:
    """A 20-step training run of the tiny scene (torch backend), with point_cloud.ply and a checkpoint."""
    out = tmp_path_factory.mktemp("run") / "run"
    cfg = TrainConfig(scene=str(tiny_scene), out=out, steps=20, checkpoint_every=20, eval_steps=(),
                      backend="torch", strategy=ADCStrategy(refine_start=5, refine_every=10, reset_every=25),
                      log_every=10, test_every=0)
    train(cfg, show_progress=False)
    return out


@pytest.fixture(scope="module")
def browser():
    """Debian's chromium driven by Playwright (WebGL from SwiftShader); skips, saying why, where either is
    missing (a user's laptop). CI installs chromium (.ci/run)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("Playwright is not installed (pip install -e '.[dev]')")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no chromium at {CHROMIUM} (Debian/Ubuntu: apt install chromium)")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()
