"""End to end: a 3-trial search on 2 CPUs, ASHA stopping, the published best model, seeded configs, resume."""
from __future__ import annotations

import contextlib
import io
import json
import math
import re
import shutil
import subprocess
import sys
import textwrap

import pandas as pd
import pytest

from convfm.store.registry import resolve, versions
from tune.config import TuneConfig
from search_preview import suggest_configs

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]  # the first test pays for the shared search (~1 min)


def trials(search) -> pd.DataFrame:
    return pd.read_csv(search["out_dir"] / "trials.csv").set_index("trial_id")


def test_three_trials_complete_on_two_cpus(search):
    table, summary = trials(search), search["summary"]
    assert len(table) == 3 and summary["trials"] == 3
    assert summary["errored"] == 0 and (table["error"].isna()).all()
    assert summary["concurrency"] == 2  # two 1-worker trials (0.99 + 0.01 CPU each) fill the 2 CPUs
    assert set(table["ended"]) <= {"completed", "asha", "patience"}
    assert (table["epochs"] >= 1).all() and (table["epochs"] <= search["max_t"]).all()
    assert (search["out_dir"] / "trials.png").stat().st_size > 10_000
    for trial_id in table.index:  # the printed table has every trial, the best one starred
        assert trial_id in search["output"]
    assert f"* {summary['best_trial']}" in search["output"]


def test_stopped_trials_free_their_cpus(search, ray_local):
    """Tune kills a trial's actor when ASHA stops it or it reaches max_t; its workers' placement group must
    still be freed, or later trials wait for CPUs forever."""
    import time

    deadline = time.monotonic() + 30
    while ray_local.available_resources().get("CPU", 0.0) < 2.0 - 1e-6 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert ray_local.available_resources().get("CPU", 0.0) >= 2.0 - 1e-6, ray_local.available_resources()


def test_asha_stops_a_trial_before_max_epochs(search):
    table = trials(search)
    stopped = table[table["stopped_by_asha"]]
    assert len(stopped) >= 1, table[["learning_rate", "epochs", "ended"]]
    assert (stopped["epochs"] < search["max_t"]).all() and (stopped["ended"] == "asha").all()
    # the recorded epochs are Tune's: one training_iteration per reported epoch, per trial
    for trial_id, row in table.iterrows():
        progress = pd.read_csv(next((search["out_dir"] / "ray").glob(f"*/trial-{trial_id}/progress.csv")))
        assert progress["training_iteration"].max() == row["epochs"] == progress["epoch"].nunique()
    # the lr=1e-5 trial proposed third could only start after a much better trial filled ASHA's first rung
    assert table.loc[table["learning_rate"] == 1e-5, "epochs"].min() == 1


def test_trials_are_the_seeded_suggestions(search):
    config = TuneConfig.from_dict(json.loads((search["out_dir"] / "experiment.json").read_text())["tune"])
    expected = suggest_configs(config, 3)
    assert [c["learning_rate"] for c in expected] == [0.03, 0.03, 1e-5]  # what the ASHA test relies on

    def key(values):
        return tuple(sorted((k, round(v, 9) if isinstance(v, float) else
                             "-".join(map(str, v)) if isinstance(v, list) else v) for k, v in values.items()))

    table = trials(search).reset_index()
    ran = [key({name: row[name] for name in expected[0]}) for _, row in table.iterrows()]
    assert sorted(ran) == sorted(key(c) for c in expected)


def test_best_trial_is_published_and_loads_in_a_fresh_process(search, market_dir):
    table, summary, registry = trials(search), search["summary"], search["registry"]
    best_trial = table["best_val_roc_auc"].idxmax()
    assert summary["best_trial"] == best_trial
    model_dir = resolve(registry / "tiny")
    assert versions(registry / "tiny") and (registry / "tiny" / "latest").read_text().strip() == model_dir.name
    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert math.isclose(metrics["val_roc_auc"], table.loc[best_trial, "best_val_roc_auc"], rel_tol=1e-9)
    assert metrics["epoch"] + 1 == table.loc[best_trial, "best_epoch"]
    assert json.loads((model_dir / "tune.json").read_text())["trial_id"] == best_trial
    assert (model_dir / "serving.json").is_file()  # what serve reads for titles, seen jobs and cold start

    code = textwrap.dedent(f"""
        import numpy as np, pandas as pd, torch
        from convfm.store.artifacts import load_model_dir
        from convfm.store.registry import resolve
        from convfm.training.epoch import predict_proba
        loaded = load_model_dir(resolve({str(registry / 'tiny')!r}))
        pairs = pd.read_csv({str(market_dir / 'interactions.csv')!r}, dtype=str).head(50)[["user_id", "job_id"]]
        pairs["label"] = np.float32(0)
        probs = predict_proba(loaded.model, loaded.extractor.example_set(pairs), 64, torch.device("cpu"))
        print(len(probs), bool(np.isfinite(probs).all()), loaded.metrics["val_roc_auc"])
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    count, finite, auc = result.stdout.split()
    assert (count, finite) == ("50", "True") and math.isclose(float(auc), metrics["val_roc_auc"])


def test_trials_record_the_cpus_they_reserved(search):
    """tune.cpus_per_worker (0.99 by default) owns a trial's worker CPUs; its recorded train config says so,
    not train.cpus_per_worker (1 by default)."""
    experiment = json.loads((search["out_dir"] / "experiment.json").read_text())
    assert experiment["tune"]["cpus_per_worker"] == experiment["train"]["cpus_per_worker"] == 0.99
    model_dir = resolve(search["registry"] / "tiny")
    assert json.loads((model_dir / "train_config.json").read_text())["cpus_per_worker"] == 0.99


def test_resume(search, tmp_path, capsys):
    from convfm.cli.main import main

    # a finished search is not resumed
    assert main(["tune", "--resume", str(search["out_dir"])]) == 2
    assert "the search already finished" in capsys.readouterr().err
    # a search interrupted after its trials, before the export: Tuner.restore runs nothing again, exports
    copy = tmp_path / search["out_dir"].name
    shutil.copytree(search["out_dir"], copy)
    experiment = json.loads((copy / "experiment.json").read_text())
    (copy / "experiment.json").write_text(json.dumps({**experiment, "status": "running"}))
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        assert main(["tune", "--resume", str(copy)]) == 0
    assert not re.search(r"^trial \S+\s+epoch", output.getvalue(), re.M)  # no trial trained again
    assert pd.read_csv(copy / "trials.csv").equals(pd.read_csv(search["out_dir"] / "trials.csv"))
    assert json.loads((copy / "summary.json").read_text())["best_trial"] == search["summary"]["best_trial"]
    assert json.loads((copy / "experiment.json").read_text())["attempts"] == 2
