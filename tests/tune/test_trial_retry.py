"""A 1-worker trial trains in its Tune actor; when that actor dies, Tune retries the trial (tune.max_failures)
from the trial's last checkpoint, not from scratch."""
from __future__ import annotations

import pandas as pd
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


def test_a_crashed_trial_resumes_from_its_last_checkpoint(ray_local, market_dir, tmp_path):
    from convfm.config import DataConfig, ModelConfig, TrainConfig
    from tune.runner import run_tune

    marker = tmp_path / "crashed.txt"
    space = {"embedding_dim": 8, "conv_filters": 8, "hidden_dims": [16], "learning_rate": 0.03, "batch_size": 256}
    summary = run_tune(DataConfig(path=str(market_dir)), ModelConfig(), TrainConfig(patience=10),
                       {"num_samples": 1, "max_t": 2, "max_failures": 1, "registry": str(tmp_path / "models"),
                        "name": "retry", "space": space}, tmp_path / "tune-retry",
                       loop_options={"crash_at_epoch": 1, "crash_marker": str(marker)})

    assert marker.read_text().startswith("rank 0 ")  # the trial's actor exited halfway through epoch 1
    (row,) = summary.trials.to_dict("records")
    assert row["epochs"] == 2 and row["ended"] == "completed" and not row["error"], row
    (progress_file,) = (tmp_path / "tune-retry" / "ray").glob(f"*/trial-{row['trial_id']}/progress.csv")
    progress = pd.read_csv(progress_file)
    # epoch 0 once (its checkpoint survived the crash); the retry started at epoch 1 from that checkpoint
    assert progress["epoch"].tolist() == [0, 1], progress
    assert progress["run_start_epoch"].tolist() == [0, 1]
    assert 0.5 < summary.best_metrics["val_roc_auc"] <= 1.0
