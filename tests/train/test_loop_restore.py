"""A Ray Train checkpoint of a run with the weight average: model/ holds the average (what is validated, kept
and published), train_state.pt the raw weights that resuming trains on. No Ray cluster: the loop's own helpers."""
from __future__ import annotations

import shutil
from pathlib import Path

import ray.train
import torch

from convfm.config import DataConfig, ModelConfig, TrainConfig
from convfm.data.prepare import prepare_data
from convfm.model.network import ConvFM
from convfm.store.artifacts import load_model_dir
from convfm.training.in_process import TrainingState, run_epoch
from train.loop import MODEL_DIR, TRAIN_STATE, TRAINING_WEIGHTS, LoopSession, _report_with_checkpoint, _restore

SMALL = ModelConfig(embedding_dim=8, conv_filters=8, hidden_dims=(16, 8))


def test_a_checkpoint_keeps_the_average_and_resumes_from_the_raw_weights(market_dir, tmp_path):
    data = prepare_data(DataConfig(path=str(market_dir)))
    config = TrainConfig(num_epochs=2, batch_size=256, ema_decay=0.9)
    torch.manual_seed(0)
    model = ConvFM(SMALL, data.extractor.feature_map)
    state = TrainingState.create(model, config, 1000)
    record = run_epoch(model, data.sets["train"], state, config, torch.device("cpu"), validation=data)
    kept: list[Path] = []

    def report(metrics: dict, checkpoint: ray.train.Checkpoint | None = None) -> None:
        kept.append(Path(shutil.copytree(checkpoint.path, tmp_path / "checkpoint")))  # its directory is temporary

    session = LoopSession(0, 1, torch.device("cpu"), None, lambda m: m, report, ray.train.Checkpoint)
    _report_with_checkpoint(session, record, model, state, data.extractor, config, data.config)
    saved = load_model_dir(kept[0] / MODEL_DIR).model
    for name, weight in state.average.model.state_dict().items():
        assert torch.equal(saved.state_dict()[name], weight), name  # the published model is the average

    restored, train_state = _restore(ray.train.Checkpoint.from_directory(str(kept[0])), SMALL,
                                     data.extractor.feature_map)
    assert TRAINING_WEIGHTS not in train_state and (kept[0] / TRAIN_STATE).exists()
    for name, weight in model.state_dict().items():
        assert torch.equal(restored.state_dict()[name], weight), name  # training goes on from the raw weights
    resumed = TrainingState.create(restored, config, 1000)
    resumed.load_state_dict(train_state)
    assert resumed.average.steps == state.average.steps and resumed.next_epoch == 1
    for name, weight in state.average.model.state_dict().items():
        assert torch.equal(resumed.average.model.state_dict()[name], weight), name
