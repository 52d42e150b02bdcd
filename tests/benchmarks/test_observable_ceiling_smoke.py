"""benchmarks/observable_ceiling.py runs end to end on a tiny market: one row per scorer, AUCs in [0, 1]."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "observable_ceiling.py"
PARTS = ("bias", "pop", "expect", "skills", "home", "pay", "clusters")


def test_tiny_run_prints_a_row_per_scorer():
    done = subprocess.run([sys.executable, str(SCRIPT), "--users", "300", "--jobs", "200", "--interactions", "4000"],
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line.strip("| ").split(" | ") for line in done.stdout.splitlines() if line.startswith("| ")]
    assert rows[0] == ["scorer", "all test examples", "impressions", "users with a training example", "users without"]
    assert [r[0] for r in rows[1:]] == ["oracle (latent state)", *(f"oracle, {p} as observed" for p in PARTS),
                                        "all as observed", "all as observed, bias from earlier impressions"]
    for row in rows[1:]:
        assert 0.0 <= float(row[1]) <= 1.0 and 0.0 <= float(row[2]) <= 1.0
    assert float(rows[1][1]) > 0.7  # the oracle ranks its own draws well
