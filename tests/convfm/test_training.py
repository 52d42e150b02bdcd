"""In-process training on synthetic data: quality against the popularity baseline and the oracle."""
import numpy as np
import pytest
import torch

from convfm.config import DataConfig, ModelConfig, TrainConfig
from convfm.errors import ConfigError
from convfm.evaluation.report import evaluate_split
from convfm.data.prepare import prepare_data
from convfm.model.network import ConvFM
from convfm.model.optim import build_optimizer
from convfm.training.in_process import EarlyStopping, TrainingState, fit_in_process
from convfm.training.epoch import predict_proba, train_epoch


@pytest.fixture(scope="module")
def prepared(market_dir):
    return prepare_data(DataConfig(path=str(market_dir)))


@pytest.fixture(scope="module")
def trained(prepared):
    config = ModelConfig(embedding_dim=16, conv_filters=16, hidden_dims=(32, 16))
    # weight decay 0: the default 5 slows the first epochs, and 6 epochs check the loop, not the regularization
    # (benchmarks/overfitting.py measures that)
    return fit_in_process(prepared, config, TrainConfig(num_epochs=6, patience=3, batch_size=256, weight_decay=0.0))


@pytest.mark.timeout(240)
def test_training_beats_popularity_and_approaches_oracle(prepared, trained):
    model, history = trained
    report = evaluate_split(model, prepared, "test")
    auc, pop, oracle = report["model"]["roc_auc"], report["popularity"]["roc_auc"], report["oracle_auc"]
    assert auc > pop + 0.08, report
    assert oracle is not None and auc > oracle - 0.15, report
    assert report["model"]["ndcg@10"] > 1.5 * report["popularity"]["ndcg@10"]
    assert history[0]["train_loss"] > history[-1]["train_loss"]
    best = min(range(len(history)), key=lambda e: history[e]["val_log_loss"])  # the default stopping metric
    assert history[-1]["best_epoch"] == best
    assert history[-1]["stop"] == int(len(history) - 1 - best >= 3)  # patience 3


def test_the_lowest_validation_log_loss_epoch_is_returned(prepared, trained):
    model, history = trained
    best = min(history, key=lambda r: r["val_log_loss"])
    report = evaluate_split(model, prepared, "valid")
    assert report["model"]["log_loss"] == pytest.approx(best["val_log_loss"], abs=1e-9)
    assert report["model"]["roc_auc"] == pytest.approx(best["val_roc_auc"], abs=1e-9)


def test_prediction_is_deterministic(prepared, trained):
    model, _ = trained
    a = predict_proba(model, prepared.sets["valid"], 512, torch.device("cpu"))
    b = predict_proba(model, prepared.sets["valid"], 97, torch.device("cpu"))
    assert np.allclose(a, b, atol=1e-6)  # batch size does not change eval-mode scores


def test_the_optimizer_decays_at_the_rate_of_the_training_set_size(prepared, trained):
    model = ConvFM(ModelConfig(embedding_dim=4, conv_filters=4, hidden_dims=(8,)), prepared.extractor.feature_map)
    config = TrainConfig(weight_decay=4.0, weight_decay_examples=1000)
    decays = [TrainingState.create(model, config, n).optimizer.param_groups[0]["weight_decay"] for n in (500, 4000)]
    assert decays == [4.0, 1.0]
    _, history = trained  # weight_decay 0: the record says what the optimizer applied
    assert {r["weight_decay"] for r in history} == {0.0}


def test_epochs_run_from_next_epoch_until_num_epochs_or_an_early_stop(prepared):
    model = ConvFM(ModelConfig(embedding_dim=4, conv_filters=4, hidden_dims=(8,)), prepared.extractor.feature_map)
    state = TrainingState.create(model, TrainConfig(num_epochs=6, patience=1), 1000)
    state.next_epoch = 2  # as restored from a checkpoint
    seen = []
    for epoch in state.epochs(6):
        seen.append(epoch)
        state.end_epoch(epoch, 0.5)  # best at 2, no gain at 3: patience 1 stops there
    assert seen == [2, 3] and state.should_stop
    assert list(TrainingState.create(model, TrainConfig(), 1000).epochs(0)) == []
    with pytest.raises(RuntimeError, match="epoch 0 ended without run_epoch"):
        for _ in TrainingState.create(model, TrainConfig(), 1000).epochs(3):
            pass


def test_early_stopping_counts_bad_epochs():
    stopper = EarlyStopping(patience=2)
    assert stopper.update(0.7, 0) and not stopper.update(0.69, 1) and not stopper.should_stop
    assert not stopper.update(float("nan"), 2) and stopper.should_stop and stopper.best_epoch == 0


def test_early_stopping_on_log_loss_keeps_the_minimum_and_stops_after_patience():
    stopper = EarlyStopping(patience=2, min_delta=0.01, metric="log_loss")
    assert stopper.update(0.50, 0) and stopper.bad_epochs == 0
    assert stopper.update(0.495, 1) and stopper.bad_epochs == 1  # the best so far, but a gain below min_delta
    assert not stopper.update(0.52, 2) and stopper.should_stop
    assert (stopper.best, stopper.best_epoch) == (0.495, 1)
    with pytest.raises(ConfigError, match=r"early_stopping_metric: must be one of \['roc_auc', 'log_loss'\]"):
        EarlyStopping(patience=1, metric="loss")


def small_model(data) -> ConvFM:
    return ConvFM(ModelConfig(embedding_dim=4, conv_filters=4, hidden_dims=(8,), dropout_rate=0.0),
                  data.extractor.feature_map)


def test_a_resumed_training_state_keeps_its_metric(prepared, tmp_path):
    model = small_model(prepared)
    config = TrainConfig(early_stopping_metric="log_loss", lr_schedule="plateau")
    state = TrainingState.create(model, config, 1000)
    state.end_epoch(0, 0.40)
    torch.save(state.state_dict(), tmp_path / "state.pt")
    saved = torch.load(tmp_path / "state.pt", weights_only=True)
    resumed = TrainingState.create(model, config, 1000)
    resumed.load_state_dict(saved)
    assert (resumed.stopper.metric, resumed.stopper.best, resumed.next_epoch) == ("log_loss", 0.40, 1)
    assert not resumed.end_epoch(1, 0.45) and resumed.stopper.bad_epochs == 1  # a higher loss is worse
    with pytest.raises(ConfigError, match="early_stopping_metric: the checkpoint's run stopped on 'log_loss', "
                                          "this run on 'roc_auc'"):
        TrainingState.create(model, TrainConfig(early_stopping_metric="roc_auc", lr_schedule="plateau"),
                             1000).load_state_dict(saved)


def test_a_resumed_run_trains_its_next_epoch_exactly_as_the_uninterrupted_run(prepared, tmp_path):
    """Shuffle order and dropout noise are seeded per epoch: resuming from epoch 0's weights and state (as a
    checkpoint holds them, through torch.save) gives epoch 1 bit for bit, dropout and id dropout on."""
    from convfm.training.in_process import run_epoch

    config = TrainConfig(batch_size=128, ema_decay=0.9)
    model_config = ModelConfig(embedding_dim=4, conv_filters=4, hidden_dims=(8,), dropout_rate=0.3, id_dropout=0.5)

    def fresh() -> tuple[ConvFM, TrainingState]:
        torch.manual_seed(config.seed)
        model = ConvFM(model_config, prepared.extractor.feature_map)
        return model, TrainingState.create(model, config, len(prepared.sets["train"]))

    model, state = fresh()
    run_epoch(model, prepared.sets["train"], state, config, torch.device("cpu"), validation=prepared)
    torch.save({"weights": model.state_dict(), "state": state.state_dict()}, tmp_path / "checkpoint.pt")
    torch.rand(1000)  # a resumed process's RNG is wherever its start left it
    run_epoch(model, prepared.sets["train"], state, config, torch.device("cpu"), validation=prepared)

    resumed, resumed_state = fresh()
    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    resumed.load_state_dict(saved["weights"])
    resumed_state.load_state_dict(saved["state"])
    run_epoch(resumed, prepared.sets["train"], resumed_state, config, torch.device("cpu"), validation=prepared)
    assert resumed_state.history[-1]["train_loss"] == state.history[-1]["train_loss"]
    for name, weight in model.state_dict().items():
        assert torch.equal(resumed.state_dict()[name], weight), name


def test_a_state_saved_before_the_metric_choice_resumes_on_auc_only(prepared):
    """Format 1: no metric in the stopper (it was AUC), one optimizer parameter group (weight decay 0)."""
    model = small_model(prepared)
    before = TrainConfig(early_stopping_metric="roc_auc", weight_decay=0.0)
    old = TrainingState.create(model, before, 1000).state_dict()
    old["format_version"] = 1
    del old["stopper"]["metric"]
    resumed = TrainingState.create(model, before, 1000)
    resumed.load_state_dict(old)
    assert resumed.stopper.metric == "roc_auc" and resumed.stopper.best == float("-inf")
    with pytest.raises(ConfigError, match="stopped on 'roc_auc', this run on 'log_loss'"):
        TrainingState.create(model, TrainConfig(weight_decay=0.0), 1000).load_state_dict(old)
    with pytest.raises(ConfigError, match=r"weight_decay: the checkpoint's optimizer has \[1\] parameter group\(s\), "
                                          r"this run's \[2\]"):
        TrainingState.create(model, TrainConfig(early_stopping_metric="roc_auc"), 1000).load_state_dict(old)


def train_once(data, embedding_l2: float, learning_rate: float) -> tuple[ConvFM, dict[str, float]]:
    torch.manual_seed(0)
    model = small_model(data)
    optimizer = build_optimizer(model, learning_rate)
    stats = train_epoch(model, data.sets["train"], optimizer, 512, torch.device("cpu"), epoch_seed=1,
                        embedding_l2=embedding_l2)
    return model, stats


def test_embedding_l2_zero_is_the_plain_log_loss_step(prepared):
    model, stats = train_once(prepared, 0.0, 0.01)
    torch.manual_seed(0)
    plain = small_model(prepared)
    optimizer, losses = build_optimizer(plain, 0.01), []
    for batch, labels in prepared.sets["train"].batches(512, shuffle=True, seed=1, drop_last=True):
        optimizer.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(plain(*batch), labels)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    for name, weight in plain.state_dict().items():
        assert torch.equal(weight, model.state_dict()[name]), name
    assert stats["train_loss"] == pytest.approx(np.mean(losses), rel=1e-6)
    penalized, _ = train_once(prepared, 1e-2, 0.01)
    assert not torch.equal(penalized.embedding.table.weight, model.embedding.table.weight)


def test_reported_train_loss_leaves_the_penalty_out(prepared):
    """At a learning rate of 0 no step changes the model, so both runs see the same log loss."""
    _, plain = train_once(prepared, 0.0, 0.0)
    _, penalized = train_once(prepared, 1.0, 0.0)
    assert penalized["train_loss"] == pytest.approx(plain["train_loss"], rel=1e-6)


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
