"""benchmarks/stacking_probe.py: per-user sums strictly before each example's time against a brute-force count,
golden skill overlaps, the observable formula against its own terms, and an end-to-end run on a tiny market (one
row per scorer, AUCs in [0, 1], the ensemble lines)."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from convfm.data.synth import generate_market
from convfm.data.synth_time import EPOCH

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "stacking_probe.py"


def load_probe():
    spec = importlib.util.spec_from_file_location("stacking_probe", SCRIPT)
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)
    return probe


def test_sums_before_each_example_match_a_brute_force_count():
    """Strictly before t; examples before the first event, after the last, at an event's exact time, and of
    users without events included."""
    rng = np.random.default_rng(0)
    events = pd.DataFrame({"user_id": rng.choice(["a", "b", "c"], 300),
                           "timestamp": rng.integers(10**15, 10**15 + 10**13, 300)})
    values = rng.random((300, 2))
    examples = pd.DataFrame({"user_id": rng.choice(["a", "b", "c", "stranger"], 80),
                             "timestamp": rng.integers(10**15 - 10**12, 10**15 + 2 * 10**13, 80)})
    examples.loc[:4, ["user_id", "timestamp"]] = events.loc[:4, ["user_id", "timestamp"]].to_numpy()  # ties
    expected = np.array([values[(events["user_id"] == u).to_numpy() & (events["timestamp"] < t).to_numpy()].sum(0)
                         for u, t in zip(examples["user_id"], examples["timestamp"])])
    np.testing.assert_allclose(load_probe().before(events, values, examples), expected, atol=1e-9)


def test_skill_overlap_golden():
    users = pd.Series({"u1": "Python; SQL;docker", "u2": None})
    jobs = pd.Series({"j1": "sql;python;Go;K8s", "j2": "excel"})
    examples = pd.DataFrame({"user_id": ["u1", "u1", "u2", "stranger"], "job_id": ["j1", "j2", "j1", "j1"]})
    np.testing.assert_allclose(load_probe().skill_overlap(examples, users, jobs),
                               [[2 / 5, 2], [0, 0], [0, 0], [0, 0]])  # case and spaces do not matter


def test_formula_terms_weighted_by_the_truth_sum_to_the_observable_formula():
    """Before anyone's first positive (no history term) the formula's logit is the intercept plus its weighted
    static terms; with every input observed as is (a user's bias zeroed) the bias term is zero."""
    probe = load_probe()
    market = generate_market(200, 100, 2000, seed=3)
    frame = market.interactions[["user_id", "job_id"]].iloc[:300].assign(
        timestamp=np.int64(EPOCH.astype("datetime64[us]").astype(np.int64)) + np.arange(300))
    terms = probe.formula_terms(probe.observed_oracle(market), frame)
    weights = market.oracle.weights
    summed = market.oracle.intercept + sum(weights[k] * terms[name] for k, name in enumerate(probe.STATIC_TERMS))
    np.testing.assert_allclose(terms["observable formula"], summed, atol=1e-6)
    assert not terms["user_bias"].any() and terms["skill_jaccard"].max() > 0


def test_tiny_run_prints_a_row_per_scorer():
    done = subprocess.run([sys.executable, str(SCRIPT), "--users", "300", "--jobs", "200", "--interactions", "4000",
                           "--epochs", "1", "--inits", "2"], capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line.strip("| ").split(" | ") for line in done.stdout.splitlines() if line.startswith("| ")]
    varying = [r[0].split()[-1] for r in rows if r[0].startswith("model + formula term ")]
    assert "user_bias" not in varying and {"skill_jaccard", "freshness"} <= set(varying)  # bias: 0 as observed
    assert rows[0] == ["scorer", "test ROC-AUC"]
    assert [r[0] for r in rows[1:]] == [
        "model (initial weights 0)", "model + passed over (stacked on valid)",
        "model + residual bias (stacked on valid)", "model + location and level (stacked on valid)",
        "model + skill overlap (stacked on valid)", "model + all of them", "the observable formula alone",
        "model + the observable formula", *[f"model + formula term {t}" for t in varying],
        "model + every formula term"]
    assert all(0.0 <= float(r[1]) <= 1.0 for r in rows[1:])
    assert "2 initial-weight seeds: test ROC-AUC" in done.stdout and "their mean logit (an ensemble)" in done.stdout
    assert 0.0 <= float(done.stdout.split("stacked with all the signals: ROC-AUC ")[1].split()[0]) <= 1.0
