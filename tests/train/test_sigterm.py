"""`convfm train` stopped with SIGTERM (`kill`, a scheduler's stop) as users run it, in a process with its own
local Ray: it ends as Ctrl-C does, and the run is left to ``--resume``."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


@pytest.mark.timeout(240)
def test_sigterm_interrupts_training_and_leaves_the_run_resumable(market_dir, tmp_path):
    """Ray's own SIGTERM handler, set as the driver connects, aborted the process (exit 134 and a C++ stack
    dump) while the workers went on for seconds."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # its own Ray, as a user's command
    process = subprocess.Popen(
        [sys.executable, "-m", "convfm.cli.main", "train", "--data", str(market_dir), "--epochs", "50",
         "--out", str(tmp_path / "run")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        lines = []
        for line in process.stdout:  # blocks until the first epoch is reported; the timeout bounds it
            lines.append(line)
            if line.startswith("epoch   1 "):
                break
        assert lines and lines[-1].startswith("epoch   1 "), (lines, process.poll())
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=90)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, err
    assert err.strip().splitlines()[-1] == "convfm train: interrupted" and "Aborted" not in err, err
    assert json.loads((tmp_path / "run" / "run.json").read_text())["status"] == "running"  # --resume goes on
