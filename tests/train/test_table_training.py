"""A generic labelled table (configs/table_example.yaml) trains end to end through Ray Train and evaluates."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from convfm.cli.main import main

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(300)
def test_generic_table_trains_and_evaluates(ray_local, tmp_path, capsys):
    config = tmp_path / "train.yaml"
    config.write_text(
        "model: {embedding_dim: 16, conv_filters: 16, hidden_dims: [32, 16]}\n"
        "train: {batch_size: 128, learning_rate: 0.01, num_workers: 2, num_epochs: 4}\n"
    )
    run = tmp_path / "run"
    spec = str(REPO / "configs" / "table_example.yaml")
    assert main(["train", "--config", str(config), "--table", spec, "--out", str(run)]) == 0
    out = capsys.readouterr().out
    assert "epoch   4 " in out and "best epoch" in out
    saved = json.loads((run / "run.json").read_text())
    best_auc = saved["best_metrics"]["val_roc_auc"]
    assert best_auc > 0.6, saved["best_metrics"]  # chance 0.5; the generator's own logit scores 0.80
    assert "popularity_roc_auc" not in saved["best_metrics"]  # no job ids in a generic table
    assert saved["data"]["kind"] == "table" and saved["best_metrics"]["world_size"] == 2

    assert main(["evaluate", "--model", str(run / "best"), "--table", spec, "--split", "test"]) == 0
    report = json.loads((run / "best.eval_test.json").read_text())
    assert report["model"]["roc_auc"] > 0.6 and report["model"]["count"] > 0
