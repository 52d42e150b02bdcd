"""benchmarks/batch_size.py runs end to end on a tiny market: one row per run, SIZE@LR parsed (no timing asserts)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from convfm.config import TrainConfig

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "batch_size.py"


def test_tiny_run_prints_one_row_per_batch_size_and_rate():
    done = subprocess.run([sys.executable, str(SCRIPT), "--budget-s", "0.5", "--users", "200", "--jobs", "100",
                           "--interactions", "3000", "--runs", "32,64@0.01"],
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line.strip("| ").split(" | ") for line in done.stdout.splitlines() if line.startswith("| ")]
    assert rows[0][:2] == ["batch size", "learning rate"]
    assert [(r[0], r[1]) for r in rows[1:]] == [("32", f"{TrainConfig().learning_rate:g}"), ("64", "0.01")]
    for row in rows[1:]:
        assert int(row[3]) >= 1 and 0.0 <= float(row[5]) <= 1.0  # epochs run, a valid AUC
