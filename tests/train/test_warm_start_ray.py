"""A Ray Train run with init_from: the published weights reach the worker, the run records where it started."""
from __future__ import annotations

import json
import logging

import pytest
import torch

from convfm.config import DataConfig, ModelConfig, TrainConfig
from convfm.store.artifacts import load_model_dir

pytestmark = pytest.mark.slow


@pytest.mark.timeout(240)
def test_a_ray_train_run_starts_from_the_published_weights(ray_local, published_old, tmp_path, caplog):
    from train.driver import run_training

    # learning rate 1e-9: after its one epoch the exported weights are still the initial ones, to 1e-6
    train = TrainConfig(num_epochs=1, batch_size=512, learning_rate=1e-9, weight_decay=0.0, use_amp=False,
                        init_from=str(published_old.entry))
    with caplog.at_level(logging.WARNING, logger="train.driver"):
        result = run_training(DataConfig(path=str(published_old.full)), ModelConfig(), train, tmp_path / "run")
    assert "model.embedding_dim: 64 -> 8 (the published model's)" in caplog.text

    version = str((published_old.entry / "v0001").resolve())
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["init_from"]["location"] == version and run["init_from"]["version"] == "v0001"
    assert run["init_from"]["name"] == "old" and run["model"]["embedding_dim"] == 8
    assert json.loads((tmp_path / "run" / "best" / "train_config.json").read_text())["init_from"] == version

    trained, published = load_model_dir(result.best_dir), published_old.model
    old_vocabs, new_vocabs = published_old.old.extractor.vocabs, trained.extractor.vocabs
    for part in ("embedding", "linear"):
        before, after = getattr(published, part), getattr(trained.model, part)
        for name, vocab in old_vocabs.items():
            assert new_vocabs[name].values[: len(vocab.values)] == vocab.values
            rows = [before.spans[name][0] + vocab.index(v) for v in vocab.values]
            moved = [after.spans[name][0] + new_vocabs[name].index(v) for v in vocab.values]
            torch.testing.assert_close(after.table.weight[moved], before.table.weight[rows], rtol=0, atol=1e-6)
    assert len(new_vocabs["job"]) > len(old_vocabs["job"])
