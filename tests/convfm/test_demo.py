"""`convfm demo` (what `make demo` runs) end to end on a tiny market, in its own process and its own local Ray:
six stages in order, real HTTP answers, the closing how-to, and none of Ray's console noise it suppresses."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


@pytest.mark.timeout(420)
def test_tiny_demo_runs_every_stage_and_answers_http(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # its own Ray, not the test session's
    done = subprocess.run(
        [sys.executable, "-m", "convfm.cli", "demo", "--workdir", str(tmp_path / "demo"), "--users", "300",
         "--jobs", "200", "--interactions", "6000", "--epochs", "2", "--trials", "2"],
        capture_output=True, text=True, timeout=400, env=env)
    out = done.stdout
    assert done.returncode == 0, (out[-3000:], done.stderr[-3000:])
    positions = [out.index(f"== [{n}/6]") for n in range(1, 7)]
    assert positions == sorted(positions)
    assert "roc_auc" in out and "popularity" in out and "oracle" in out  # the evaluation table
    assert out.count("POST /recommend") == 3 and "fallback: popular" in out and "model v0001" in out
    assert (tmp_path / "demo" / "models" / "convfm" / "v0001" / "manifest.json").is_file()
    assert f"convfm serve --model {tmp_path / 'demo' / 'models' / 'convfm'}" in out
    combined = out + done.stderr
    assert "Traceback" not in combined
    assert "Configuration for experiment" not in combined  # Tune's banner: the demo prints its own trial table
    assert "Started Serve in namespace" not in combined  # Serve's INFO lines: the stage prints its own ready line
