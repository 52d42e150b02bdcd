"""benchmarks/warm_start.py runs end to end on a tiny market and prints its setup line, the per-epoch table of
both runs (epoch 0: before training) and, for each, when it reached the from-scratch best validation AUC."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "warm_start.py"


def test_tiny_run_prints_both_curves_and_when_each_reaches_the_scratch_best():
    done = subprocess.run([sys.executable, str(SCRIPT), "--users", "200", "--jobs", "100", "--interactions", "3000",
                           "--epochs", "2", "--old-epochs", "1", "--threads", "1"], capture_output=True, text=True,
                          timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert lines[0].startswith("200 users, 100 jobs, 3000 interactions, seed 0, split global_time")
    grown = re.search(r"'user': '(\d+)->(\d+)', 'job': '(\d+)->(\d+)'", lines[0])
    assert grown and int(grown[2]) > int(grown[1]) and int(grown[4]) > int(grown[3])  # later ids were appended
    start = lines.index("| epoch | from scratch val AUC | warm start val AUC |")
    rows = [line.strip("| ").split(" | ") for line in lines[start + 2:start + 5]]
    assert [row[0] for row in rows] == ["0", "1", "2"]
    aucs = [[float(v) for v in row[1:]] for row in rows]
    assert all(0.0 <= v <= 1.0 for row in aucs for v in row)
    assert aucs[0][0] != aucs[0][1]  # before any step the warm model is the published one, not a fresh one
    best = max(row[0] for row in aucs[1:])
    assert f"to reach the from-scratch best validation AUC {best:.4f}:" in lines
    outcome = re.compile(r"^  (from scratch|warm start): (epoch [0-2], \d+\.\d s \(\d+\.\d CPU s\)|not reached in 2 epochs)$")
    assert [outcome.match(line)[1] for line in lines[-2:]] == ["from scratch", "warm start"]
