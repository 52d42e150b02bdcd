"""The in-process trainer and the Ray Train loop drive one epoch protocol (convfm.training.in_process.run_epoch), so their
histories hold the same keys in the same order; the Ray loop adds only its worker diagnostics."""
from __future__ import annotations

import dataclasses

import pytest

from convfm.data.prepare import prepare_data
from convfm.training.in_process import fit_in_process

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]
RAY_LOOP_ONLY = ["worker_pids", "distinct_pids", "param_checksum", "param_checksum_spread", "world_size",
                 "torch_threads", "run_start_epoch"]


def test_in_process_and_ray_loops_record_the_same_history_keys(run_one_worker, make_configs):
    data_config, model_config, train_config = make_configs(num_workers=1)
    _, history = fit_in_process(prepare_data(data_config), model_config,
                                dataclasses.replace(train_config, num_epochs=1))
    ray_keys = list(run_one_worker.history[0])
    assert [key for key in ray_keys if key not in RAY_LOOP_ONLY] == list(history[0])
    assert set(ray_keys) - set(history[0]) == set(RAY_LOOP_ONLY)
    assert {"learning_rate", "best_epoch", "stop", "val_roc_auc"} <= set(history[0])
