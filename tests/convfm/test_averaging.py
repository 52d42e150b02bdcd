"""The weight average (TrainConfig.ema_decay): its arithmetic, its BatchNorm statistics, what validation and
the kept model see, and resuming it."""
import pytest
import torch
from torch import nn

from convfm.config import DataConfig, ModelConfig, TrainConfig
from convfm.data.prepare import prepare_data
from convfm.evaluation.report import evaluate_split
from convfm.errors import ConfigError
from convfm.model.network import ConvFM
from convfm.training.averaging import STATISTICS_ROWS, WeightAverage
from convfm.training.in_process import TrainingState, fit_in_process, run_epoch

SMALL = ModelConfig(embedding_dim=8, conv_filters=8, hidden_dims=(16, 8))


@pytest.fixture(scope="module")
def prepared(market_dir):
    return prepare_data(DataConfig(path=str(market_dir)))


def set_weight(model: nn.Linear, value: float) -> None:
    with torch.no_grad():
        model.weight.fill_(value)


def test_the_average_follows_decay_after_a_warm_up():
    model = nn.Linear(2, 1, bias=False)
    set_weight(model, 0.0)
    average = WeightAverage.of(model, decay=0.75)
    for value in (4.0, 8.0, 0.0):
        set_weight(model, value)
        average.update(model)
    # decays 1/10, 2/11, 3/12 (below 0.75): 0.9 * 4 = 3.6, then 2/11 * 3.6 + 9/11 * 8 = 7.2, then 0.25 * 7.2 = 1.8
    assert average.model.weight[0].tolist() == pytest.approx([1.8, 1.8]) and average.steps == 3
    assert model.weight.tolist() == [[0.0, 0.0]] and not average.model.weight.requires_grad
    average.steps = 1_000  # past the warm-up: decay itself
    set_weight(model, 10.0)
    average.update(model)
    assert average.decay_now == 0.75 and average.model.weight[0].tolist() == pytest.approx([0.75 * 1.8 + 2.5] * 2)


def test_refreshed_statistics_are_the_averaged_weights_own(prepared):
    torch.manual_seed(0)
    model = ConvFM(SMALL, prepared.extractor.feature_map)
    average = WeightAverage.of(model, decay=0.5)
    average.update(model)
    norm = next(m for m in average.model.modules() if isinstance(m, nn.BatchNorm1d))
    raw_norm = next(m for m in model.modules() if isinstance(m, nn.BatchNorm1d))
    examples, inputs = prepared.sets["train"], []
    hook = norm.register_forward_hook(lambda module, args, out: inputs.append(args[0].detach().clone()))
    refreshed = average.refresh_statistics(examples, 256, torch.device("cpu"))
    hook.remove()
    # a plain mean over whole batches up to STATISTICS_ROWS of what the averaged weights feed the norm
    assert len(inputs) == -(-STATISTICS_ROWS // 256) == int(norm.num_batches_tracked)
    assert torch.allclose(norm.running_mean, torch.cat(inputs).mean(0), atol=1e-5)
    assert torch.allclose(norm.running_var, torch.stack([x.var(0) for x in inputs]).mean(0), atol=1e-5)
    first = (norm.running_mean.clone(), norm.running_var.clone())
    with torch.no_grad():
        norm.running_mean.fill_(100.0)  # stale statistics leave no trace: they are recomputed, not blended
    average.refresh_statistics(examples, 256, torch.device("cpu"))
    assert torch.allclose(norm.running_mean, first[0]) and torch.allclose(norm.running_var, first[1])
    assert refreshed is average.model and not refreshed.training and norm.momentum == raw_norm.momentum
    assert torch.equal(raw_norm.running_mean, torch.zeros_like(raw_norm.running_mean))  # the raw model's untouched


def test_validation_and_the_kept_model_are_the_average(prepared):
    config = TrainConfig(num_epochs=3, batch_size=256, ema_decay=0.9)
    model, history = fit_in_process(prepared, SMALL, config)
    best = min(history, key=lambda r: r["val_log_loss"])
    report = evaluate_split(model, prepared, "valid")
    assert report["model"]["log_loss"] == pytest.approx(best["val_log_loss"], abs=1e-9)

    torch.manual_seed(config.seed)
    raw = ConvFM(SMALL, prepared.extractor.feature_map)
    state = TrainingState.create(raw, config, 1000)
    record = run_epoch(raw, prepared.sets["train"], state, config, torch.device("cpu"), validation=prepared)
    assert state.kept_model(raw) is state.average.model and state.average.steps == len(prepared.sets["train"]) // 256
    raw_report = evaluate_split(raw.eval(), prepared, "valid")
    assert record["val_log_loss"] != pytest.approx(raw_report["model"]["log_loss"], abs=1e-6)  # not the raw weights
    run_epoch(raw, prepared.sets["train"], state, config, torch.device("cpu"), validation=prepared)

    torch.manual_seed(config.seed)  # the same epoch without the average trains the raw weights identically
    alone = ConvFM(SMALL, prepared.extractor.feature_map)
    plain_config = TrainConfig(num_epochs=3, batch_size=256, ema_decay=0.0)
    plain = TrainingState.create(alone, plain_config, 1000)
    for _ in range(2):  # the second epoch would differ if refreshing the statistics drew from the random stream
        run_epoch(alone, prepared.sets["train"], plain, plain_config, torch.device("cpu"), validation=prepared)
    assert plain.average is None and plain.kept_model(alone) is alone
    for name, weight in alone.state_dict().items():
        assert torch.equal(raw.state_dict()[name], weight), name


def test_a_resumed_state_continues_the_average(prepared, tmp_path):
    torch.manual_seed(0)
    model = ConvFM(SMALL, prepared.extractor.feature_map)
    config = TrainConfig(ema_decay=0.9)
    state = TrainingState.create(model, config, 1000)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(1.0)
    state.average.update(model)
    torch.save(state.state_dict(), tmp_path / "state.pt")
    resumed = TrainingState.create(ConvFM(SMALL, prepared.extractor.feature_map), config, 1000)
    resumed.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    assert resumed.average.steps == 1
    for name, weight in state.average.model.state_dict().items():
        assert torch.equal(resumed.average.model.state_dict()[name], weight), name
    # a state saved without an average (ema_decay 0, or before it existed) resumes with a fresh one
    fresh = TrainingState.create(model, config, 1000)
    fresh.load_state_dict(TrainingState.create(model, TrainConfig(ema_decay=0.0), 1000).state_dict())
    assert fresh.average.steps == 0


def test_only_the_validating_rank_keeps_the_average(prepared):
    torch.manual_seed(0)
    model = ConvFM(SMALL, prepared.extractor.feature_map)
    config = TrainConfig(ema_decay=0.9, num_epochs=1, batch_size=256)
    other = TrainingState.create(model, config, 1000, validates=False)  # a DDP rank other than 0
    assert other.average is None and other.kept_model(model) is model
    assert run_epoch(model, prepared.sets["train"], other, config, torch.device("cpu"), validation=None) is None
    rank0 = TrainingState.create(model, config, 1000)
    other.load_state_dict(rank0.state_dict())  # resuming from rank 0's state, which carries an average
    assert other.average is None and other.next_epoch == 0


def test_ema_decay_must_stay_below_one():
    assert TrainConfig(ema_decay=0.0).ema_decay == 0.0
    with pytest.raises(ConfigError, match=r"ema_decay: must be a number in \[0, 1\), got 1"):
        TrainConfig(ema_decay=1)
