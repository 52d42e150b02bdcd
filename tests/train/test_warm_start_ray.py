"""A Ray Train run with init_from on 2 workers: the published weights reach the workers, the run records where
it started, and, as it cannot improve (learning rate 1e-9), early stopping ends it on every rank before
num_epochs. One run answers both (a Ray Train fit costs ~12 s of worker start-up on a 2-core box)."""
from __future__ import annotations

import json
import logging
import types

import pytest
import torch

from convfm.config import DataConfig, ModelConfig, TrainConfig
from convfm.store.artifacts import load_model_dir

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture(scope="module")
def warm_run(ray_local, published_old, tmp_path_factory) -> types.SimpleNamespace:
    """Up to 8 epochs at learning rate 1e-9 with patience 1 and min_delta 0.05: the weights stay the published
    ones (to 1e-6), so no epoch gains min_delta of the early-stopping metric: epoch 0 sets the best, epoch 1 is
    one bad epoch, and patience 1 stops the run there, deterministically."""
    from train.driver import run_training

    out = tmp_path_factory.mktemp("warm_run") / "run"
    train = TrainConfig(num_epochs=8, batch_size=512, learning_rate=1e-9, weight_decay=0.0, use_amp=False,
                        num_workers=2, patience=1, min_delta=0.05, init_from=str(published_old.entry))
    records, logger = Records(), logging.getLogger("train.driver")
    logger.addHandler(records)
    try:
        result = run_training(DataConfig(path=str(published_old.full)), ModelConfig(), train, out)
    finally:
        logger.removeHandler(records)
    return types.SimpleNamespace(result=result, out=out, warnings="\n".join(records.lines))


def test_a_ray_train_run_starts_from_the_published_weights(warm_run, published_old):
    assert "model.embedding_dim: 64 -> 8 (the published model's)" in warm_run.warnings

    version = str((published_old.entry / "v0001").resolve())
    run = json.loads((warm_run.out / "run.json").read_text())
    assert run["init_from"]["location"] == version and run["init_from"]["version"] == "v0001"
    assert run["init_from"]["name"] == "old" and run["model"]["embedding_dim"] == 8
    assert json.loads((warm_run.out / "best" / "train_config.json").read_text())["init_from"] == version

    trained, published = load_model_dir(warm_run.result.best_dir), published_old.model
    old_vocabs, new_vocabs = published_old.old.extractor.vocabs, trained.extractor.vocabs
    for part in ("embedding", "linear"):
        before, after = getattr(published, part), getattr(trained.model, part)
        for name, vocab in old_vocabs.items():
            assert new_vocabs[name].values[: len(vocab.values)] == vocab.values
            rows = [before.spans[name][0] + vocab.index(v) for v in vocab.values]
            moved = [after.spans[name][0] + new_vocabs[name].index(v) for v in vocab.values]
            torch.testing.assert_close(after.table.weight[moved], before.table.weight[rows], rtol=0, atol=1e-6)
    assert len(new_vocabs["job"]) > len(old_vocabs["job"])


def test_plateau_stops_before_max_epochs_on_every_rank(warm_run):
    result = warm_run.result
    assert [r["epoch"] for r in result.history] == [0, 1] and result.history[-1]["world_size"] == 2
    assert result.stopped_early and result.history[-1]["stop"] == 1 and result.history[0]["stop"] == 0
    key = TrainConfig().early_stopping[0]  # the default metric the run stopped on
    assert abs(result.history[1][key] - result.history[0][key]) < 0.05
    run = json.loads((warm_run.out / "run.json").read_text())
    assert run["stopped_early"] is True and run["epochs_trained"] == 2
