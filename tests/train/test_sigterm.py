"""`convfm train` stopped with SIGTERM (`kill`, a scheduler's stop) as users run it, in a process with its own
local Ray: it ends as Ctrl-C does, and the run is left to ``--resume``."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow
USER_ENV = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # its own Ray, as a user's command


def sigterm_once(args: list[str], line: str) -> subprocess.CompletedProcess:
    """``convfm ARGS`` in its own process, sent SIGTERM once its stdout prints a line matching the regex ``line``
    (blocking until then: the test's timeout bounds it) -> its exit code, stdout and stderr."""
    process = subprocess.Popen([sys.executable, "-m", "convfm.cli.main", *args], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=USER_ENV)
    try:
        lines = []
        for printed in process.stdout:
            lines.append(printed)
            if re.match(line, printed):
                break
        assert lines and re.match(line, lines[-1]), (lines, process.poll())
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=90)
    finally:
        if process.poll() is None:
            process.kill()
    return subprocess.CompletedProcess(args, process.returncode, "".join(lines) + out, err)


@pytest.mark.timeout(240)
def test_sigterm_interrupts_training_and_leaves_the_run_resumable(market_dir, tmp_path):
    """Ray's own SIGTERM handler, set as the driver connects, aborted the process (exit 134 and a C++ stack
    dump) while the workers went on for seconds."""
    stopped = sigterm_once(["train", "--data", str(market_dir), "--epochs", "50", "--out", str(tmp_path / "run")],
                           r"epoch   1 ")
    err = stopped.stderr
    assert stopped.returncode == 130, err
    assert err.strip().splitlines()[-1] == "convfm train: interrupted" and "Aborted" not in err, err
    assert json.loads((tmp_path / "run" / "run.json").read_text())["status"] == "running"  # --resume goes on
