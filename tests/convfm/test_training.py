"""In-process training on synthetic data: quality against the popularity baseline and the oracle."""
import numpy as np
import pytest
import torch

from convfm.config import DataConfig, ModelConfig, TrainConfig
from convfm.evaluation.report import evaluate_split
from convfm.data.prepare import prepare_data
from convfm.model.network import ConvFM
from convfm.training.in_process import EarlyStopping, TrainingState, fit_in_process
from convfm.training.epoch import predict_proba


@pytest.fixture(scope="module")
def prepared(market_dir):
    return prepare_data(DataConfig(path=str(market_dir)))


@pytest.fixture(scope="module")
def trained(prepared):
    config = ModelConfig(embedding_dim=16, conv_filters=16, hidden_dims=(32, 16))
    return fit_in_process(prepared, config, TrainConfig(num_epochs=6, patience=3, batch_size=256))


@pytest.mark.timeout(240)
def test_training_beats_popularity_and_approaches_oracle(prepared, trained):
    model, history = trained
    report = evaluate_split(model, prepared, "test")
    auc, pop, oracle = report["model"]["roc_auc"], report["popularity"]["roc_auc"], report["oracle_auc"]
    assert auc > pop + 0.08, report
    assert oracle is not None and auc > oracle - 0.15, report
    assert report["model"]["ndcg@10"] > 1.5 * report["popularity"]["ndcg@10"]
    assert history[0]["train_loss"] > history[-1]["train_loss"]
    best = max(range(len(history)), key=lambda e: history[e]["val_roc_auc"])
    assert history[-1]["best_epoch"] == best
    assert history[-1]["stop"] == int(len(history) - 1 - best >= 3)  # patience 3


def test_best_epoch_weights_are_returned(prepared, trained):
    model, history = trained
    best = max(history, key=lambda r: r["val_roc_auc"])
    report = evaluate_split(model, prepared, "valid")
    assert report["model"]["roc_auc"] == pytest.approx(best["val_roc_auc"], abs=1e-9)


def test_prediction_is_deterministic(prepared, trained):
    model, _ = trained
    a = predict_proba(model, prepared.sets["valid"], 512, torch.device("cpu"))
    b = predict_proba(model, prepared.sets["valid"], 97, torch.device("cpu"))
    assert np.allclose(a, b, atol=1e-6)  # batch size does not change eval-mode scores


def test_epochs_run_from_next_epoch_until_num_epochs_or_an_early_stop(prepared):
    model = ConvFM(ModelConfig(embedding_dim=4, conv_filters=4, hidden_dims=(8,)), prepared.extractor.feature_map)
    state = TrainingState.create(model, TrainConfig(num_epochs=6, patience=1))
    state.next_epoch = 2  # as restored from a checkpoint
    seen = []
    for epoch in state.epochs(6):
        seen.append(epoch)
        state.end_epoch(epoch, 0.5)  # best at 2, no gain at 3: patience 1 stops there
    assert seen == [2, 3] and state.should_stop
    assert list(TrainingState.create(model, TrainConfig()).epochs(0)) == []
    with pytest.raises(RuntimeError, match="epoch 0 ended without run_epoch"):
        for _ in TrainingState.create(model, TrainConfig()).epochs(3):
            pass


def test_early_stopping_counts_bad_epochs():
    stopper = EarlyStopping(patience=2)
    assert stopper.update(0.7, 0) and not stopper.update(0.69, 1) and not stopper.should_stop
    assert not stopper.update(float("nan"), 2) and stopper.should_stop and stopper.best_epoch == 0


def test_serving_payload_uses_the_prepared_jobs_table(prepared, monkeypatch):
    """prepare_data keeps the catalog's display columns, so writing serving.json does not re-read the market."""
    import convfm.store.serving_data
    from convfm.store.serving_data import DISPLAY_COLUMNS, serving_payload

    assert prepared.jobs is not None and set(prepared.jobs.columns) <= {"job_id", *DISPLAY_COLUMNS}
    assert "description" not in prepared.jobs.columns  # only what serving.json shows
    assert prepared.for_split("valid").jobs is None  # never shipped to workers

    def reload(config):
        raise AssertionError("serving_payload re-read the job market")

    monkeypatch.setattr(convfm.store.serving_data, "load_job_market", reload)
    payload = serving_payload(prepared)
    assert payload["jobs"]["job_id"] == prepared.jobs["job_id"].astype(str).tolist()
    assert payload["jobs"]["title"] and all(payload["jobs"]["title"])


def test_serving_payload_reloads_jobs_for_data_prepared_without_them(prepared):
    import dataclasses

    from convfm.store.serving_data import serving_payload

    bare = dataclasses.replace(prepared, jobs=None)  # e.g. PreparedData built by hand (benchmarks)
    assert serving_payload(bare)["jobs"] == serving_payload(prepared)["jobs"]


def test_table_data_keeps_no_jobs_table(tmp_path):
    import pandas as pd

    from convfm.errors import ConfigError
    from convfm.store.serving_data import serving_payload

    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"color": rng.choice(["red", "blue"], 200), "label": rng.integers(0, 2, 200)})
    frame.to_csv(tmp_path / "t.csv", index=False)
    data = prepare_data(DataConfig(kind="table", path=str(tmp_path / "t.csv"), categorical=("color",)))
    assert data.jobs is None
    with pytest.raises(ConfigError, match="kind: serving needs a job-market model"):
        serving_payload(data)
