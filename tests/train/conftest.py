"""Ray Train runs shared by the tests of train/: each is trained once per session on the small market.

A Ray Train fit costs ~12 s of worker start-up on a 2-core box before its first epoch, so tests read these
runs instead of training their own wherever one can answer the question.
"""
from __future__ import annotations

import io
import types
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from convfm.config import DataConfig, ModelConfig, TrainConfig
from convfm.store import storage

TINY_MODEL = {"embedding_dim": 16, "conv_filters": 16, "hidden_dims": [32, 16]}
# weight decay 0: at learning rate 0.01 the default 5 would shrink the weights 5% a step; these runs check the
# Ray Train loop, benchmarks/overfitting.py the regularization
FAST_TRAIN = {"batch_size": 256, "learning_rate": 0.01, "num_epochs": 3, "patience": 3, "weight_decay": 0.0}


def configs(market_dir: Path, model: dict[str, Any] | None = None,
            **train: Any) -> tuple[DataConfig, ModelConfig, TrainConfig]:
    return (DataConfig(path=str(market_dir)), ModelConfig.from_dict({**TINY_MODEL, **(model or {})}),
            TrainConfig.from_dict({**FAST_TRAIN, **train}))


@pytest.fixture(scope="session")
def make_configs(market_dir):
    """configs(model_overrides=None, **train_overrides) on the session's small market."""
    return lambda model=None, **train: configs(market_dir, model, **train)


@pytest.fixture(scope="session")
def run_two_workers(ray_local, market_dir, s3_bucket, tmp_path_factory) -> types.SimpleNamespace:
    """2 CPU workers (DDP on gloo) with sparse embedding gradients and a cosine schedule, 3 epochs, to
    ``s3://.../runs/crashed`` (moto's S3 server): rank 1 dies in epoch 1 and the group is replaced once from the
    checkpoint in the bucket. Its files are read here (``metrics``, ``record``, the last checkpoint downloaded to
    ``checkpoint``, the best model to ``best``), as tests/train/test_fault_tolerance.py later resumes the run;
    models read from the bucket are cached under ``cache``. The suite's only 1-worker Ray Train runs are
    tests/train/test_seed_pipeline.py's and the crash without restarts in test_fault_tolerance.py."""
    from ray.train import Result

    from convfm.store.registry import cached_copy

    from train.driver import run_training
    from train.outputs import read_run

    tmp_path = tmp_path_factory.mktemp("two")
    marker, uri, cache = tmp_path / "crashed.txt", s3_bucket("runs/crashed"), tmp_path / "cache"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(storage.CACHE_ENV, str(cache))
        result = run_training(
            *configs(market_dir, {"sparse_embeddings": True}, num_workers=2, lr_schedule="cosine", max_failures=1,
                     weight_decay=0.5, weight_decay_examples=100),  # a decay too small to matter, scaled
            uri, loop_options={"crash_at_epoch": 1, "crash_marker": str(marker)})
        record = read_run(uri)
        checkpoint = Result.from_path(storage.join(record["storage_path"], record["name"])).checkpoint
        return types.SimpleNamespace(
            result=result, uri=uri, cache=cache, tmp_path=tmp_path, marker=marker.read_text(), record=record,
            metrics=read_metrics(uri), checkpoint=Path(checkpoint.to_directory(str(tmp_path / "checkpoint"))),
            best=cached_copy(result.best_dir))


def read_metrics(out_dir: str | Path) -> pd.DataFrame:
    """A run directory's metrics.csv (a path or URI)."""
    return pd.read_csv(io.StringIO(storage.read_text(storage.join(out_dir, "metrics.csv"))))


@pytest.fixture(scope="session")
def run_metrics():
    """``run_metrics(out_dir) -> DataFrame``: see ``read_metrics``."""
    return read_metrics
