"""A worker killed mid-epoch is replaced and the run resumes from its last checkpoint; --resume continues a
stopped run. Both must continue the epoch count: each epoch exactly once in metrics.csv.

The --resume test continues the killed-worker run (one Ray Train fit fewer than training a run of its own:
~12 s of worker start-up on a 2-core box); what the first test asserts about the files is read before that."""
from __future__ import annotations

import json
import math
import types

import pandas as pd
import pytest

from convfm.cli.main import main

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def crashed_run(ray_local, make_configs, tmp_path_factory) -> types.SimpleNamespace:
    """3 epochs on 2 workers with a cosine schedule; rank 1 dies in epoch 1 and the group is replaced once."""
    from train.driver import run_training

    tmp_path = tmp_path_factory.mktemp("crashed")
    marker, run = tmp_path / "crashed.txt", tmp_path / "run"
    result = run_training(
        *make_configs(num_workers=2, num_epochs=3, lr_schedule="cosine", max_failures=1), run,
        loop_options={"crash_at_epoch": 1, "crash_marker": str(marker)},
    )
    return types.SimpleNamespace(result=result, run=run, marker=marker.read_text(),
                                 metrics=pd.read_csv(run / "metrics.csv"),
                                 record=json.loads((run / "run.json").read_text()))


@pytest.mark.timeout(240)
def test_killed_worker_is_replaced_and_training_resumes_from_checkpoint(crashed_run):
    result = crashed_run.result
    assert crashed_run.marker.startswith("rank 1 ")  # rank 1 really died (os._exit) in epoch 1
    history = result.history
    assert [r["epoch"] for r in history] == [0, 1, 2]
    assert crashed_run.metrics["epoch"].tolist() == [0, 1, 2]
    # epoch 0 ran in the first worker group; the replacement group started at epoch 1 from its checkpoint
    assert [r["run_start_epoch"] for r in history] == [0, 1, 1] and result.restarts == [1]
    first, second = set(history[0]["worker_pids"].split(",")), set(history[1]["worker_pids"].split(","))
    assert first.isdisjoint(second) and history[1]["worker_pids"] == history[2]["worker_pids"]
    # optimizer step count and LR schedule continued instead of restarting
    assert [r["learning_rate"] for r in history] == pytest.approx(
        [0.01 * (1 + math.cos(math.pi * e / 3)) / 2 for e in range(3)], rel=1e-6)
    assert result.best_metrics["val_roc_auc"] > result.best_metrics["popularity_roc_auc"] + 0.1
    assert crashed_run.record["restarts"] == [1]


@pytest.mark.timeout(240)
def test_resume_continues_a_stopped_run(crashed_run, capsys):
    run = crashed_run.run
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--epochs", "4"]) == 0
    out = capsys.readouterr().out
    assert "epoch   4 " in out and "epoch   3 " not in out and "best epoch" in out  # only the new epoch ran
    metrics = pd.read_csv(run / "metrics.csv")
    assert metrics["epoch"].tolist() == [0, 1, 2, 3] and metrics["run_start_epoch"].tolist() == [0, 1, 1, 3]
    saved = json.loads((run / "run.json").read_text())
    assert saved["attempts"] == 2 and saved["train"]["num_epochs"] == 4 and saved["restarts"] == [1, 3]

    # nothing left to do: refused before Ray does any work, naming the field to change
    assert main(["train", "--resume", str(run), "--epochs", "4"]) == 2
    assert "num_epochs: the run already trained 4 epoch(s)" in capsys.readouterr().err


@pytest.mark.timeout(120)
def test_without_restarts_a_crash_fails_the_run_with_a_clear_error(ray_local, make_configs, tmp_path):
    from train.driver import TrainingError, run_training

    with pytest.raises(TrainingError, match=r"training failed after 0 restart\(s\)"):
        run_training(*make_configs(num_workers=1, num_epochs=2, max_failures=0), tmp_path / "run",
                     loop_options={"crash_at_epoch": 0, "crash_marker": str(tmp_path / "crashed.txt")})
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["status"] == "failed" and run["error"]
    assert (tmp_path / "crashed.txt").read_text().startswith("rank 0 ")  # a lone worker is rank 0
