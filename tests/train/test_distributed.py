"""Ray Train with 2 CPU workers: quality against the baselines, real DDP, restorable checkpoints, and the one
epoch protocol the in-process trainer shares. These tests read the session's ``run_two_workers`` (whose rank 1
dies once: tests/train/test_fault_tolerance.py checks the restart), trained once for both files; a 1-worker Ray
Train run is tests/train/test_seed_pipeline.py's."""
from __future__ import annotations

import dataclasses
import json

import pandas as pd
import pytest
import torch

from convfm.store import storage
from convfm.store.artifacts import load_model_dir, verify_model_dir
from convfm.config import DataConfig, TrainConfig
from convfm.data.prepare import prepare_data
from convfm.training.in_process import fit_in_process, validate

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]
RAY_LOOP_ONLY = ["worker_pids", "distinct_pids", "param_checksum", "param_checksum_spread", "world_size",
                 "torch_threads", "run_start_epoch"]


def best_and_baselines(result) -> tuple[float, float, float]:
    best = result.best_metrics
    return best["val_roc_auc"], best["popularity_roc_auc"], best["oracle_roc_auc"]


def test_validation_auc_beats_popularity_well(run_two_workers):
    result = run_two_workers.result
    auc, popularity, oracle = best_and_baselines(result)
    # measured: 0.76, popularity 0.55, oracle 0.85 (see the report in run.json)
    assert auc > popularity + 0.12, result.best_metrics
    assert auc > 0.68 and auc < oracle + 0.02, result.best_metrics
    # each validation positive against the ~84 jobs live at its time (the live protocol): measured NDCG@10 0.72
    # with the skill-match term (0.33-0.34 before it) vs all-time popularity 0.23, newest-first 0.54, oracle 0.71.
    # The model may pass the oracle here: the oracle ranks by the chance of applying once shown, while the held-out
    # positive is also a job the feed chose to show (README "Model quality").
    best = result.best_metrics
    assert 1.25 * best["popularity_ndcg@10"] < best["val_ndcg@10"] <= 1.0, best
    assert best["val_ndcg@10"] > best["newest_ndcg@10"], best
    assert [r["epoch"] for r in result.history] == [0, 1, 2]
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]


def test_two_workers_are_two_processes_with_averaged_gradients(run_two_workers):
    for record in run_two_workers.result.history:
        pids = {int(p) for p in record["worker_pids"].split(",")}
        assert record["world_size"] == 2 and record["distinct_pids"] == 2 and len(pids) == 2
        # Ranks trained on different shards; identical weights afterwards means DDP averaged the gradients
        # (sparse embedding gradients included, on gloo).
        assert record["param_checksum_spread"] <= 1e-9 * abs(record["param_checksum"]), record


def test_best_checkpoint_restores_identical_scores(run_two_workers, market_dir):
    """Rank 0 validates on the whole split, so the in-process validation of the best model gives its numbers."""
    loaded, result = load_model_dir(run_two_workers.best), run_two_workers.result
    assert json.loads((run_two_workers.best / "data_config.json").read_text())["path"] == str(market_dir)
    data = prepare_data(DataConfig.load_json(run_two_workers.best / "data_config.json"), extractor=loaded.extractor)
    report = validate(loaded.model, data, TrainConfig.from_dict(loaded.extra["train_config"]))
    best = result.best_metrics
    assert report["model"]["roc_auc"] == pytest.approx(best["val_roc_auc"], abs=1e-9)
    assert report["model"]["log_loss"] == pytest.approx(best["val_log_loss"], abs=1e-9)
    assert report["model"]["ndcg@10"] == pytest.approx(best["val_ndcg@10"], abs=1e-9)
    # the kept checkpoint is the early-stopping metric's best epoch (log loss by default), as the stopper saw it
    assert loaded.metrics["epoch"] == result.best_epoch == result.history[-1]["best_epoch"] == min(
        result.history, key=lambda r: r["val_log_loss"])["epoch"]


def test_weight_decay_scales_with_the_training_examples_of_all_ranks(run_two_workers, market_dir):
    examples = len(prepare_data(DataConfig(path=str(market_dir))).sets["train"])
    assert examples > 200  # each rank holds about half: a per-rank count would double the decay
    # the ranks' shards together: the training examples, less at most a row per rank left over for equal shards
    assert run_two_workers.metrics["weight_decay"].tolist() == pytest.approx([0.5 * 100 / examples] * 3, rel=1e-3)


def test_run_directory_holds_metrics_curves_and_run_record(run_two_workers):
    """run_two_workers's directory is in a bucket (tests/train/test_fault_tolerance.py checks where each file is)."""
    metrics, run, result = run_two_workers.metrics, run_two_workers.record, run_two_workers.result
    assert metrics["epoch"].tolist() == [0, 1, 2]
    assert {"train_loss", "val_loss", "val_roc_auc", "val_log_loss", "val_hr@10", "val_ndcg@10", "val_mrr",
            "popularity_roc_auc"} <= set(metrics.columns)
    assert run["status"] == "finished" and run["best_epoch"] == result.best_epoch
    assert run["stopped_early"] is False and run["epochs_trained"] == 3 and run["restarts"] == [1]
    assert run["train"]["num_workers"] == 2 and run["model"]["sparse_embeddings"] is True
    assert set(storage.list_files(result.best_dir)) >= {
        "weights.pt", "model_config.json", "feature_map.json", "extractor.json", "extractor.npz",
        "metrics.json", "train_config.json", "data_config.json", "manifest.json"}


def test_best_model_carries_serving_json_in_its_manifest(run_two_workers, market_dir):
    """train's best/ is servable as is (convfm demo --trials 0 serves it): titles, seen jobs, popularity."""
    from convfm.store.serving_data import ServingData

    best = run_two_workers.best
    manifest = json.loads((best / "manifest.json").read_text())
    assert "serving.json" in manifest["files"]
    verify_model_dir(best)
    serving = ServingData.from_payload(json.loads((best / "serving.json").read_text()))
    jobs = pd.read_csv(market_dir / "jobs.csv", dtype=str)
    assert sorted(serving.jobs["job_id"]) == sorted(jobs["job_id"]) and serving.jobs["title"].str.len().gt(0).all()
    assert serving.seen and serving.popularity is not None
    assert "train_config" in load_model_dir(best).extra  # the checkpoint's own extra files kept


def test_checkpoint_train_state_loads_without_pickle(run_two_workers):
    state = torch.load(run_two_workers.checkpoint / "train_state.pt", map_location="cpu", weights_only=True)
    assert state["next_epoch"] == 3 and len(state["history"]) == 3
    assert set(state) >= {"optimizer", "schedule", "stopper"} and state["schedule"]["kind"] == "cosine"
    assert len(state["optimizer"]["optimizers"]) == 2  # Adam (dense) + SparseAdam (sparse embeddings)


def test_in_process_and_ray_loops_record_the_same_history_keys(run_two_workers, make_configs):
    """Both trainers drive convfm.training.in_process.run_epoch: the same history keys in the same order; the
    Ray loop adds only its worker diagnostics."""
    data_config, model_config, train_config = make_configs(num_workers=1)
    _, history = fit_in_process(prepare_data(data_config), model_config,
                                dataclasses.replace(train_config, num_epochs=1))
    ray_keys = list(run_two_workers.result.history[0])
    assert [key for key in ray_keys if key not in RAY_LOOP_ONLY] == list(history[0])
    assert set(ray_keys) - set(history[0]) == set(RAY_LOOP_ONLY)
    assert {"learning_rate", "best_epoch", "stop", "val_roc_auc"} <= set(history[0])
