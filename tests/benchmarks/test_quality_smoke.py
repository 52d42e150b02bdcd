"""benchmarks/quality.py runs end to end on a tiny market and prints the model / popularity / oracle table."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "quality.py"


def test_tiny_run_prints_model_popularity_and_oracle():
    done = subprocess.run([sys.executable, str(SCRIPT), "--users", "200", "--jobs", "100", "--interactions", "3000",
                           "--epochs", "1", "--negatives", "9"], capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    header = lines.index("metric          model  popularity  oracle")
    assert any(line.startswith("200 users, 100 jobs, 3000 interactions") for line in lines[:header])
    auc = next(line.split() for line in lines if line.startswith("roc_auc"))
    assert all(0.0 <= float(value) <= 1.0 for value in auc[1:4])  # model, popularity and the oracle
