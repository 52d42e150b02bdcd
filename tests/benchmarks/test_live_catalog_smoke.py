"""benchmarks/live_catalog.py runs end to end on a small catalog: every round's new jobs come back from
/recommend and a following Scorer applies the same delta; --catch-up prints its two rows (no timing assertions)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "live_catalog.py"


def test_tiny_run_prints_one_row_per_round_and_the_medians():
    done = subprocess.run([sys.executable, str(SCRIPT), "--jobs", "1500", "--new", "40", "--rounds", "2",
                           "--users", "300"], capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    rows = [line for line in lines if line.startswith("| ") and not line.startswith("| round")]
    assert [row.split("|")[2].strip() for row in rows] == ["1,500", "1,540"]  # the catalog grew by 40
    assert all(float(cell) > 0 for row in rows for cell in row.split("|")[3:6])
    assert any(line.startswith("medians: apply CPU ") for line in lines)


def test_catch_up_prints_the_folded_and_one_at_a_time_timings():
    done = subprocess.run([sys.executable, str(SCRIPT), "--jobs", "1500", "--new", "2", "--catch-up", "20",
                           "--users", "300"], capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line.split("|") for line in done.stdout.splitlines() if line.startswith("| a fresh")
            or line.startswith("| training")]
    assert len(rows) == 2 and all(float(row[2]) > 0 and float(row[3]) > 0 for row in rows)
