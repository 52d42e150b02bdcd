"""A worker killed mid-epoch is replaced and the run resumes from its last checkpoint; --resume continues a
stopped run. Both must continue the epoch count: each epoch exactly once in metrics.csv."""
from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from convfm.cli.main import main

pytestmark = pytest.mark.slow


@pytest.mark.timeout(240)
def test_killed_worker_is_replaced_and_training_resumes_from_checkpoint(ray_local, make_configs, tmp_path):
    from train.driver import run_training

    marker = tmp_path / "crashed.txt"
    result = run_training(
        *make_configs(num_workers=2, num_epochs=3, lr_schedule="cosine", max_failures=1), tmp_path / "run",
        loop_options={"crash_at_epoch": 1, "crash_marker": str(marker)},
    )
    assert marker.read_text().startswith("rank 1 ")  # rank 1 really died (os._exit) in epoch 1
    history = result.history
    assert [r["epoch"] for r in history] == [0, 1, 2]
    assert pd.read_csv(tmp_path / "run" / "metrics.csv")["epoch"].tolist() == [0, 1, 2]
    # epoch 0 ran in the first worker group; the replacement group started at epoch 1 from its checkpoint
    assert [r["run_start_epoch"] for r in history] == [0, 1, 1] and result.restarts == [1]
    first, second = set(history[0]["worker_pids"].split(",")), set(history[1]["worker_pids"].split(","))
    assert first.isdisjoint(second) and history[1]["worker_pids"] == history[2]["worker_pids"]
    # optimizer step count and LR schedule continued instead of restarting
    assert [r["learning_rate"] for r in history] == pytest.approx(
        [0.01 * (1 + math.cos(math.pi * e / 3)) / 2 for e in range(3)], rel=1e-6)
    assert result.best_metrics["val_roc_auc"] > result.best_metrics["popularity_roc_auc"] + 0.1
    assert json.loads((tmp_path / "run" / "run.json").read_text())["restarts"] == [1]


@pytest.mark.timeout(240)
def test_resume_continues_a_stopped_run(ray_local, market_dir, tmp_path, capsys):
    config = tmp_path / "train.yaml"
    config.write_text(
        "model: {embedding_dim: 16, conv_filters: 16, hidden_dims: [32, 16]}\n"
        "train: {batch_size: 256, learning_rate: 0.01, num_workers: 1, patience: 3}\n"
    )
    run = tmp_path / "run"
    assert main(["train", "--config", str(config), "--data", str(market_dir), "--epochs", "2", "--out", str(run)]) == 0
    first = capsys.readouterr().out
    assert "epoch   1 " in first and "epoch   2 " in first and "best epoch" in first

    assert main(["train", "--resume", str(run), "--epochs", "3"]) == 0
    second = capsys.readouterr().out
    assert "epoch   3 " in second and "epoch   1 " not in second  # only the new epoch ran
    metrics = pd.read_csv(run / "metrics.csv")
    assert metrics["epoch"].tolist() == [0, 1, 2] and metrics["run_start_epoch"].tolist() == [0, 0, 2]
    saved = json.loads((run / "run.json").read_text())
    assert saved["attempts"] == 2 and saved["train"]["num_epochs"] == 3 and saved["restarts"] == [2]

    # nothing left to do: refused before Ray does any work, naming the field to change
    assert main(["train", "--resume", str(run), "--epochs", "3"]) == 2
    assert "num_epochs: the run already trained 3 epoch(s)" in capsys.readouterr().err


@pytest.mark.timeout(120)
def test_without_restarts_a_crash_fails_the_run_with_a_clear_error(ray_local, make_configs, tmp_path):
    from train.driver import TrainingError, run_training

    with pytest.raises(TrainingError, match=r"training failed after 0 restart\(s\)"):
        run_training(*make_configs(num_workers=1, num_epochs=2, max_failures=0), tmp_path / "run",
                     loop_options={"crash_at_epoch": 0, "crash_marker": str(tmp_path / "crashed.txt")})
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["status"] == "failed" and run["error"]
    assert (tmp_path / "crashed.txt").read_text().startswith("rank 0 ")  # a lone worker is rank 0
