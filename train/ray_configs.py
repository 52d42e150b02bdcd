"""The ``TorchTrainer`` of a run, built in one place for ``train.driver`` (one run) and ``tune.runner`` (one run
per multi-worker trial), so a training run and a tune trial with the same TrainConfig get the same workers,
resources and checkpoint policy (1-worker trials keep theirs through Tune's ``CheckpointConfig``)."""
from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import ray.train
from ray.train.torch import TorchTrainer
from ray.train.v2._internal.callbacks import DatasetsCallback

from convfm.config import TrainConfig
from train.loop import train_loop_per_worker


class ConvFMTrainer(TorchTrainer):
    """``TorchTrainer`` without Ray Data's per-run ``DatasetManager`` actor when the run has no Ray Data datasets
    (the in-memory path ships its shards through the object store). Ray 2.60 starts that actor at every worker
    group start whatever the datasets: one more Python process, ~3.4 CPU-seconds of start-up measured on 2
    cores, for each run, restart and tune trial. It overrides a private hook of the pinned Ray version;
    tests/train/test_ray_configs.py fails if the hook or the callback changes."""

    def _create_default_callbacks(self) -> list[Any]:
        callbacks = super()._create_default_callbacks()
        if self.datasets:
            return callbacks
        return [callback for callback in callbacks if not isinstance(callback, DatasetsCallback)]


def checkpoint_policy(config: TrainConfig, metric: Optional[str] = None, mode: Optional[str] = None) -> dict[str, Any]:
    """Keyword arguments of Ray Train's and Ray Tune's ``CheckpointConfig`` (two classes): keep the
    ``keep_checkpoints`` best by ``metric``/``mode``, by default the early-stopping metric's, so the kept
    checkpoints hold the best epoch the stopper saw (tune passes its own)."""
    default_metric, default_mode = config.early_stopping
    return {"num_to_keep": config.keep_checkpoints, "checkpoint_score_attribute": metric or default_metric,
            "checkpoint_score_order": mode or default_mode}


def build_trainer(
    loop_config: Mapping[str, Any],
    config: TrainConfig,
    *,
    name: str,
    storage_path: str,
    callbacks: Sequence[Any] = (),
    metric: Optional[str] = None,
    mode: Optional[str] = None,
    max_failures: Optional[int] = None,
    datasets: Optional[Mapping[str, Any]] = None,
) -> ConvFMTrainer:
    """``train_loop_per_worker`` on ``config.num_workers`` workers, keeping checkpoints by ``checkpoint_policy``
    (plus the latest). ``max_failures`` replaces ``config.max_failures``
    (tune trials: 0). ``datasets`` (Ray Data, ``train.prepare_distributed``): ``train`` is split among the workers,
    the others reach every worker whole.

    Same name + storage as an earlier attempt = Ray resumes it (latest checkpoint via get_checkpoint)."""
    return ConvFMTrainer(
        train_loop_per_worker,
        train_loop_config=dict(loop_config),
        datasets=None if datasets is None else dict(datasets),
        dataset_config=ray.train.DataConfig(datasets_to_split=["train"]),
        scaling_config=ray.train.ScalingConfig(
            num_workers=config.num_workers, use_gpu=config.use_gpu,
            resources_per_worker={"CPU": config.cpus_per_worker}, placement_strategy=config.placement_strategy),
        run_config=ray.train.RunConfig(
            name=name, storage_path=storage_path, callbacks=list(callbacks),
            checkpoint_config=ray.train.CheckpointConfig(**checkpoint_policy(config, metric, mode)),
            failure_config=ray.train.FailureConfig(
                max_failures=config.max_failures if max_failures is None else max_failures)),
    )
