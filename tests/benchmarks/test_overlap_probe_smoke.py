"""benchmarks/overlap_probe.py: golden skill overlaps, and an end-to-end run on a tiny market (one row per scorer,
AUCs in [0, 1])."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "overlap_probe.py"


def test_skill_overlap_golden():
    spec = importlib.util.spec_from_file_location("overlap_probe", SCRIPT)
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)
    users = pd.Series({"u1": "Python; SQL;docker", "u2": None})
    jobs = pd.Series({"j1": "sql;python;Go;K8s", "j2": "excel"})
    examples = pd.DataFrame({"user_id": ["u1", "u1", "u2", "stranger"], "job_id": ["j1", "j2", "j1", "j1"]})
    np.testing.assert_allclose(probe.skill_overlap(examples, users, jobs),
                               [[2 / 5, 2], [0, 0], [0, 0], [0, 0]])  # case and spaces do not matter


def test_tiny_run_prints_a_row_per_scorer():
    done = subprocess.run([sys.executable, str(SCRIPT), "--users", "300", "--jobs", "200", "--interactions", "4000",
                           "--epochs", "1"], capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line.strip("| ").split(" | ") for line in done.stdout.splitlines() if line.startswith("| ")]
    assert rows[0] == ["scorer", "test ROC-AUC"]
    assert [r[0] for r in rows[1:]] == ["model", "skill overlap alone (Jaccard)",
                                        "model + skill overlap (stacked on valid)"]
    assert all(0.0 <= float(r[1]) <= 1.0 for r in rows[1:])
    assert "correlation of the model's logit with the Jaccard overlap" in done.stdout
