"""`convfm tune --out s3://... --registry s3://...` against moto's S3 server: Tune's state and the trial's
checkpoints live in the bucket, the summary files are uploaded, and the best model is published to the S3
registry. The trial's actor dies once mid-epoch: Tune retries it from its last checkpoint in the bucket."""
from __future__ import annotations

import contextlib
import functools
import io
import json
import math

import pandas as pd
import pytest

from convfm.store import storage
from convfm.store.artifacts import load_model_dir
from convfm.store.registry import resolve, versions

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def test_search_to_s3_resumes_a_crashed_trial_and_publishes_the_best_model_there(ray_local, market_dir, s3_bucket,
                                                                                   tune_yaml, tmp_path, monkeypatch):
    import tune.runner
    from convfm.cli.main import main

    monkeypatch.setenv(storage.CACHE_ENV, str(tmp_path / "cache"))
    marker = tmp_path / "crashed.txt"  # the command's search, with the trial's actor exiting halfway through epoch 1
    monkeypatch.setattr(tune.runner, "run_tune", functools.partial(
        tune.runner.run_tune, loop_options={"crash_at_epoch": 1, "crash_marker": str(marker)}))
    out, registry = s3_bucket("tune/tune-s3"), s3_bucket("models")
    # one trial: tests/tune/test_search.py checks which of several trials is published; this one, where it goes
    config = tune_yaml(tmp_path / "tune.yaml", registry, num_samples=1, max_t=2, seed=0, max_failures=1,
                       space={"learning_rate": {"type": "choice", "values": [0.03, 0.01]}, "batch_size": 256,
                              "embedding_dim": 8, "conv_filters": 8, "hidden_dims": [16]})
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        code = main(["tune", "--config", str(config), "--data", str(market_dir), "--out", out])
    assert code == 0, output.getvalue()

    summary = json.loads(storage.read_text(storage.join(out, "summary.json")))
    experiment = json.loads(storage.read_text(storage.join(out, "experiment.json")))
    trials = pd.read_csv(io.StringIO(storage.read_text(storage.join(out, "trials.csv"))), dtype={"trial_id": str})
    assert experiment["status"] == "finished" and experiment["name"] == "tune-s3" and len(trials) == 1
    assert summary["model_dir"] == storage.join(registry, "tiny", "v0001") and summary["registry_version"] == "v0001"
    assert storage.is_file(storage.join(out, "trials.png"))
    assert storage.is_file(storage.join(out, "best", "manifest.json"))
    assert storage.list_dirs(storage.join(out, "ray")) == ["tune-s3"]  # Tune's experiment state in the bucket
    # the 1-worker trial trained in its Tune actor: Tune kept its checkpoints in the bucket, no Ray Train run
    trial_dir = storage.join(out, "ray", "tune-s3", f"trial-{trials['trial_id'][0]}")
    assert [name for name in storage.list_dirs(trial_dir) if name.startswith("checkpoint_")]
    assert storage.list_dirs(storage.join(out, "train")) == []
    # it crashed once in epoch 1, and Tune's retry went on from epoch 0's checkpoint, not from scratch
    assert marker.read_text().startswith("rank 0 ")
    progress = pd.read_csv(io.StringIO(storage.read_text(storage.join(trial_dir, "progress.csv"))))
    assert progress["epoch"].tolist() == [0, 1] and progress["run_start_epoch"].tolist() == [0, 1], progress
    assert trials["epochs"].tolist() == [2] and trials["ended"].tolist() == ["completed"]
    assert trials["error"].isna().all(), trials["error"]
    assert f"Next: convfm serve --model {storage.join(registry, 'tiny')}" in output.getvalue()

    entry = storage.join(registry, "tiny")
    assert versions(entry) == ["v0001"]
    loaded = load_model_dir(resolve(entry))
    best = trials.set_index("trial_id").loc[summary["best_trial"]]
    assert math.isclose(loaded.metrics["val_roc_auc"], best["best_val_roc_auc"], rel_tol=1e-9)
    assert loaded.extra["tune"]["trial_id"] == summary["best_trial"] and "serving" in loaded.extra
    assert not list(tmp_path.glob("**/summary.json")), "a URI search writes its outputs to the bucket only"
