"""Early stopping on a validation-AUC plateau ends a Ray Train run before num_epochs, on every rank."""
from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.slow


@pytest.mark.timeout(300)
def test_plateau_stops_before_max_epochs(ray_local, make_configs, tmp_path):
    from train.driver import run_training

    # A learning rate of 1e-6 leaves the model where it started, so no epoch gains min_delta=0.05 of AUC:
    # epoch 0 sets the best, epoch 1 is one bad epoch, and patience 1 stops the run there, deterministically.
    result = run_training(*make_configs(num_workers=2, num_epochs=8, learning_rate=1e-6, patience=1,
                                        min_delta=0.05), tmp_path / "run")
    assert [r["epoch"] for r in result.history] == [0, 1]
    assert result.stopped_early and result.history[-1]["stop"] == 1 and result.history[0]["stop"] == 0
    assert abs(result.history[1]["val_roc_auc"] - result.history[0]["val_roc_auc"]) < 0.05
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["stopped_early"] is True and run["epochs_trained"] == 2
