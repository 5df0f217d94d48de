"""Viewer speed in a real browser (chromium via Playwright), all measured in one run:

1. Streamed mode at 640x480 and 1280x720 for the demo model and the garden cloud: while the mouse orbits the
   view for a few seconds, frames per second reaching the browser and the latency from a camera change to its
   image being sent; then the full-resolution render once the camera stops. The reference is a plain
   `rasterize()` of the full window, timed in the same run: "speed-up" is how much faster the adaptive
   preview stream is than rendering every frame at full size.
2. The cost to training: `splatkit train demo --viewer` steps/s without the viewer, with it but no browser,
   with a browser attached and still or orbiting the whole time, and the control that separates the
   browser's own (software WebGL) load from the viewer's: the same browser on an empty page. Here chromium
   draws WebGL in software on the same 2 cores (its GPU process at raised priority), which a user's browser
   with a GPU, or on another machine, does not; so each row also gives the viewer's own share of training's
   time (renders and copies run on the training thread, between steps; the trainer reports it) and the
   cores chromium used.

Usage: python scripts/bench_viewer.py [--demo-run runs/demo] [--seconds 8] [--train-steps 400]
       [--only streamed|training] [--modes "no viewer" "browser still" ...] [--separate-cores]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from splatkit.data import load_scene
from splatkit.data.demo_scene import demo_scene_path
from splatkit.io.ply import load_ply
from splatkit.render import rasterize
from splatkit.viewer.app import Viewer
from splatkit.viewer.camera import camera_from_pose
from splatkit.viewer.session import SessionSettings
from splatkit.viewer.source import ModelSource

sys.path.insert(0, str(Path(__file__).parent))
from bench_rasterizer import garden  # noqa: E402

CHROMIUM_ARGS = ["--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
                 "--disable-background-networking", "--disable-dev-shm-usage"]


def demo_model(run: Path, steps: int) -> ModelSource:
    """The trained demo model with its cameras (trained here for `steps` if `run` has none)."""
    if not (run / "point_cloud.ply").is_file():
        run = Path(tempfile.mkdtemp()) / "demo"
        subprocess.run([sys.executable, "-m", "splatkit.cli", "train", "demo", "--out", str(run), "--steps",
                        str(steps)], check=True)
    scene = load_scene(demo_scene_path())
    t = scene.to_normalized
    return ModelSource(load_ply(run / "point_cloud.ply").transformed(t),
                       cameras=scene.cameras, name="demo")


def orbit(page, seconds: float, width: int, height: int) -> None:
    """Drag the mouse in circles over the canvas (viser orbits the camera) for `seconds`."""
    cx, cy, r = width * 0.35, height * 0.5, min(width, height) * 0.15
    page.mouse.move(cx + r, cy)
    page.mouse.down()
    start = time.perf_counter()
    while (t := time.perf_counter() - start) < seconds:
        a = 2 * math.pi * t / 4.0
        page.mouse.move(cx + r * math.cos(a), cy + r * math.sin(a))
        page.wait_for_timeout(16)
    page.mouse.up()


def streamed(browser, source: ModelSource, size: tuple[int, int], seconds: float) -> dict:
    viewer = Viewer(source, port=0, settings=SessionSettings(backend="auto"), log=lambda *a: None)
    page = browser.new_page(viewport={"width": size[0], "height": size[1]})
    try:
        with page.expect_console_message(lambda m: "Connected" in m.text, timeout=120_000):
            page.goto(f"http://127.0.0.1:{viewer.port}")
        while not viewer.sessions or next(iter(viewer.sessions.values())).last_full is None:
            time.sleep(0.1)
        session = next(iter(viewer.sessions.values()))
        session.latencies.clear()
        sent = session.frames_sent
        orbit(page, seconds, *size)
        fps = (session.frames_sent - sent) / seconds
        latency = 1000 * statistics.median(session.latencies) if session.latencies else float("nan")
        time.sleep(1.5)  # settle: one full-resolution render
        full_ms = 1000 * session.speed.last_seconds
        camera = camera_from_pose(session._pose, size[1])
        with torch.no_grad():
            start = time.perf_counter()
            rasterize(source.snapshot().gaussians, camera, backend="auto")
            reference_ms = 1000 * (time.perf_counter() - start)
    finally:
        page.close()
        viewer.stop()
    return {"fps": fps, "latency_ms": latency, "full_ms": full_ms, "reference_ms": reference_ms}


TRAINING_MODES = {
    "no viewer": (False, None),
    "viewer, no browser": (True, None),
    "browser still": (True, "live"),
    "browser orbiting": (True, "live"),
    # The control: the same orbiting browser on a page with nothing to render server-side (an empty viser
    # scene), beside training without a viewer. Here the browser draws WebGL in software (SwiftShader) on
    # the same 2 cores, which a real setup with a GPU, or on another machine, does not.
    "browser still, empty page": (False, "empty"),
    "browser orbiting, empty page": (False, "empty"),
}


def chromium_cpu_seconds() -> float:
    """CPU time used so far by every chromium process (the browser's share of the 2 cores)."""
    total = 0.0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if b"chromium" not in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]:
                continue
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except OSError:  # the process ended meanwhile
            continue
    return total


def training_rate(browser, steps: int, mode: str, training_core: int | None = None) -> dict:
    """Steps/s between 25% and 100% of a `splatkit train demo` run under one of TRAINING_MODES; the viewer's
    own share of training's time (as the trainer reports it) and the cores chromium used meanwhile."""
    viewer, page_kind = TRAINING_MODES[mode]
    out = Path(tempfile.mkdtemp()) / "run"
    args = [sys.executable, "-m", "splatkit.cli", "train", "demo", "--out", str(out), "--steps", str(steps),
            "--log-every", str(max(1, steps // 4))]
    if viewer:
        args += ["--viewer", "--viewer-port", "0"]
    env = dict(os.environ)
    if training_core is not None:  # one thread on its own core: the browser cannot take time from it
        args = ["taskset", "-c", str(training_core), *args]
        env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    page, empty_server, url = None, None, None
    if page_kind == "live":
        for line in proc.stdout:
            if match := re.search(r"live viewer at (http://\S+)", line):
                url = match.group(1).replace("localhost", "127.0.0.1")
                break
    elif page_kind == "empty":
        import viser

        empty_server = viser.ViserServer(port=0, verbose=False)
        url = f"http://127.0.0.1:{empty_server.get_port()}"
    if url:
        page = browser.new_page(viewport={"width": 1280, "height": 720})
        with page.expect_console_message(lambda m: "Connected" in m.text, timeout=120_000):
            page.goto(url)
    started, browser_cpu = time.perf_counter(), chromium_cpu_seconds()
    while proc.poll() is None:
        if page is not None and "orbiting" in mode:
            orbit(page, 2.0, 1280, 720)
        else:
            time.sleep(0.5)
    browser_cores = (chromium_cpu_seconds() - browser_cpu) / (time.perf_counter() - started)
    report = re.search(r"live viewer took .*\(([\d.]+)%\)", proc.stdout.read() if viewer else "")
    if empty_server is not None:
        empty_server.stop()
    if page is not None:
        page.close()
    log = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    times = {r["step"]: r["step"] / r["steps_per_s"] for r in log if "steps_per_s" in r}
    first, last = min(k for k in times if k >= steps // 4), max(times)
    return {"rate": (last - first) / (times[last] - times[first]), "browser_cores": browser_cores,
            "viewer_share": float(report.group(1)) / 100 if report else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo-run", type=Path, default=Path("runs/demo"))
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--train-steps", type=int, default=400)
    parser.add_argument("--only", choices=("streamed", "training"), help="run one half of the benchmark")
    parser.add_argument("--separate-cores", action="store_true",
                        help="pin training (one thread) to core 0 and chromium to core 1, so the rows show the "
                             "viewer's cost without the browser competing for training's core")
    parser.add_argument("--modes", nargs="+", choices=list(TRAINING_MODES), default=list(TRAINING_MODES),
                        help="training setups to time (default: all; 'no viewer' always runs)")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    models = {}
    if args.only != "training":
        models["demo"] = demo_model(args.demo_run, 2000)
        g, cameras = garden(crop=False)
        models["garden"] = ModelSource(g, cameras=cameras, name="garden")
    print(f"threads: {torch.get_num_threads()}")
    with sync_playwright() as pw:
        chromium = "/usr/bin/chromium"
        if args.separate_cores:
            chromium = str(Path(tempfile.mkdtemp()) / "chromium-on-core-1")
            Path(chromium).write_text('#!/bin/sh\nexec taskset -c 1 /usr/bin/chromium "$@"\n')
            Path(chromium).chmod(0o755)
        browser = pw.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        print(f"{'model':8} {'window':>10} {'#G':>8} {'fps moving':>11} {'latency ms':>11} {'full ms':>8} "
              f"{'every frame full ms':>20} {'speed-up':>9}")
        for name, source in models.items():
            for size in ((640, 480), (1280, 720)):
                r = streamed(browser, source, size, args.seconds)
                speedup = r["fps"] * r["reference_ms"] / 1000
                print(f"{name:8} {size[0]:>5}x{size[1]:<4} {len(source.snapshot().gaussians):>8,} {r['fps']:>11.1f} "
                      f"{r['latency_ms']:>11.0f} {r['full_ms']:>8.0f} {r['reference_ms']:>20.0f} {speedup:>8.1f}x")
        modes = ["no viewer"] + [m for m in TRAINING_MODES if m in args.modes and m != "no viewer"]
        rates = {} if args.only == "streamed" else {
            mode: training_rate(browser, args.train_steps, mode, 0 if args.separate_cores else None)
            for mode in modes}
        browser.close()
    if not rates:
        return
    pinning = " (training on core 0, one thread; chromium on core 1)" if args.separate_cores else ""
    print(f"training the demo ({args.train_steps} steps){pinning}: steps/s, share of the no-viewer rate, the viewer's own "
          f"share of training's time (renders and copies on the training thread) and chromium's CPU use")
    base = rates["no viewer"]["rate"]
    for mode, r in rates.items():
        share = f"{r['viewer_share']:6.1%}" if r["viewer_share"] is not None else "     -"
        print(f"  {mode:30} {r['rate']:6.2f} it/s  {r['rate'] / base:5.0%}   viewer {share}   "
              f"chromium {r['browser_cores']:4.2f} cores")


if __name__ == "__main__":
    main()
