"""benchmarks/live_ranking.py runs end to end on a tiny market and times every method (no timing assertions)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "live_ranking.py"


def test_tiny_run_prints_one_row_per_method():
    done = subprocess.run([sys.executable, str(SCRIPT), "--events", "40", "--live", "200", "--users", "300"],
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    summary = next(line for line in lines if " events, mean " in line)
    events = int(summary.split()[0])  # at most --events: the test split may hold fewer positives
    assert 0 < events <= 40 and summary.startswith(f"{events} events") and "live jobs per event" in summary, summary
    rows = [line for line in lines if line.startswith("| ") and not line.startswith("| method")]
    assert [row.split("|")[1].strip() for row in rows] == ["model", "popularity", "recent_popularity", "newest",
                                                            "oracle"]
    assert all(float(row.split("|")[3].replace(",", "")) > 0 for row in rows)  # pairs/s
