"""Long-running commands stop cleanly on SIGTERM (service managers, `docker stop`, `kill`): a line saying what
happened, no traceback, and none of the native stack dump pycolmap's glog handler would print."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time


def test_view_stops_cleanly_on_sigterm(tiny_run):
    proc = subprocess.Popen([sys.executable, "-m", "splatkit.cli", "view", str(tiny_run), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))
    seen, deadline = [], time.time() + 120
    while time.time() < deadline and not any("open http" in line for line in seen):
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            break
        seen.append(line)
    assert any("open http" in line for line in seen), "".join(seen)
    proc.send_signal(signal.SIGTERM)
    rest, _ = proc.communicate(timeout=60)
    output = "".join(seen) + rest
    assert proc.returncode == 0, output
    assert "splatkit view: stopped" in output
    for native in ("Traceback", "Aborted", "stack trace", "SIGTERM received"):
        assert native not in output, output
