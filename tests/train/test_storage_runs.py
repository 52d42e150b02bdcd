"""A real Ray Train run whose run directory is an ``s3://`` URI (moto's S3 server): outputs and Ray's
checkpoints land in the bucket, ``convfm evaluate --model s3://.../best`` reads the model back, and
``convfm train --resume s3://...`` continues the run from run.json and the checkpoints in the bucket."""
from __future__ import annotations

import io
import json

import pandas as pd
import pytest

from convfm.store import storage
from convfm.cli.main import main

pytestmark = pytest.mark.slow


@pytest.mark.timeout(240)
def test_train_to_s3_then_evaluate_and_resume_from_it(ray_local, make_configs, s3_bucket, tmp_path, monkeypatch,
                                                      capsys):
    from train.driver import run_training

    monkeypatch.setenv(storage.CACHE_ENV, str(tmp_path / "cache"))
    uri = s3_bucket("runs/e2e")
    result = run_training(*make_configs(num_workers=1, num_epochs=2, patience=5), uri)
    assert result.out_dir == uri and result.best_dir == storage.join(uri, "best")
    run = json.loads(storage.read_text(storage.join(uri, "run.json")))
    assert run["status"] == "finished" and run["name"] == "e2e" and run["epochs_trained"] == 2
    assert run["storage_path"] == storage.join(uri, "ray") and run["best_dir"] == result.best_dir
    metrics = pd.read_csv(io.StringIO(storage.read_text(storage.join(uri, "metrics.csv"))))
    assert metrics["epoch"].tolist() == [0, 1]
    assert storage.is_file(storage.join(uri, "curves.png"))
    assert [d for d in storage.list_dirs(storage.join(uri, "ray", "e2e")) if d.startswith("checkpoint_")]
    assert not list(tmp_path.glob("**/run.json")), "a URI run writes nothing under the working tree"

    report_path = tmp_path / "valid.json"
    assert main(["evaluate", "--model", result.best_dir, "--split", "valid", "--out", str(report_path)]) == 0
    report = json.loads(report_path.read_text())
    assert report["model"]["roc_auc"] == pytest.approx(result.best_metrics["val_roc_auc"], abs=1e-9)

    capsys.readouterr()
    assert main(["train", "--resume", uri, "--epochs", "3"]) == 0
    out = capsys.readouterr().out
    assert "epoch   3 " in out and "epoch   1 " not in out
    assert f"convfm evaluate --model {storage.join(uri, 'best')}" in out
    run = json.loads(storage.read_text(storage.join(uri, "run.json")))
    assert run["attempts"] == 2 and run["epochs_trained"] == 3 and run["restarts"] == [2]
    metrics = pd.read_csv(io.StringIO(storage.read_text(storage.join(uri, "metrics.csv"))))
    assert metrics["epoch"].tolist() == [0, 1, 2] and metrics["run_start_epoch"].tolist() == [0, 0, 2]


def test_a_new_run_refuses_a_uri_that_holds_one(make_configs, s3_bucket):
    from convfm.errors import ConfigError
    from train.driver import run_training

    uri = s3_bucket("runs/taken")
    storage.write_text(storage.join(uri, "run.json"), "{}")
    with pytest.raises(ConfigError, match=r"^s3://convfm-test/runs/taken\?.* already holds a run; pass --resume"):
        run_training(*make_configs(num_workers=1), uri)
