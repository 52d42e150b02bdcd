"""benchmarks/retrieval.py runs end to end on the tiny model at tiny sizes (no timing assertions)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "retrieval.py"
pytestmark = pytest.mark.timeout(240)


def test_smoke_run_prints_one_row_per_size(tiny):
    done = subprocess.run([sys.executable, str(SCRIPT), "--smoke-test", "--model", str(tiny.model_dir),
                           "--threads", "1"], capture_output=True, text=True, timeout=200)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line.split("|")[1:-1] for line in done.stdout.splitlines() if line.startswith("| ") and "jobs" not in line]
    assert [r[0].strip() for r in rows] == ["500", "2,000"], done.stdout
    for row in rows:
        recall = float(row[5].split()[0])
        assert 0.0 <= recall <= 1.0 and float(row[2]) > 0 and float(row[3]) > 0, row
