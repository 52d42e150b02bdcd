"""The ConvFM training loop: on every rank of Ray Train's ``TorchTrainer`` (``train_loop_per_worker``), or whole in
a 1-worker Tune trial's own actor (``train_in_trial``).

``config`` is a plain dict built by ``train.driver.loop_config``:
  model, train, data   ModelConfig / TrainConfig / DataConfig as dicts (rebuilt and validated here)
  feature_map          FeatureMap.to_dict() of the driver's fitted extractor
  train_tables         [ObjectRef] the encoded side tables of the training set, put once, shared by all ranks
  train_shards         [ObjectRef] (rows, labels) per rank, all of equal length (so DDP ranks step together)
  eval_bundle          [ObjectRef] PreparedData.for_split("valid"), read by rank 0 only
  extractor            [ObjectRef] instead of the three above, for data prepared on the cluster
                       (train.prepare_distributed, train.prepare_market): each rank streams its equal shard of the
                       ``train`` dataset with ray.train.get_dataset_shard, rank 0 the whole ``valid`` dataset
  popularity           [] or [ObjectRef] with ``extractor``: a job market's training-split PopularityBaseline
  initial_state        [] or [ObjectRef] a warm start's initial state dict (convfm.training.warm_start)
  crash_at_epoch       optional fault injection: rank 1 (rank 0 when alone) exits mid-epoch, once, ...
  crash_marker         ... the first time only (the file records that the crash happened)

Each epoch is ``convfm.training.in_process.run_epoch``, the protocol the in-process trainer follows too: every rank trains
on its shard (DDP averages gradients), rank 0 validates, its value of the early-stopping metric is broadcast
so every rank schedules and stops together. Around it this loop adds only DDP, the shards, worker diagnostics in rank 0's
record, and one report per rank and epoch (``ray.train.report``, or ``ray.tune.report`` in a trial actor); rank 0
attaches a checkpoint:
  model/           a complete model directory (save_model_dir: weights, configs, extractor, metrics) of the
                   model validated (``TrainingState.kept_model``: the weight average with ``ema_decay``)
  train_state.pt   TrainingState.state_dict(): epoch, optimizer, LR schedule, early stopping, history, the
                   weight average, and then the trained weights (``TRAINING_WEIGHTS``), which resuming continues
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import pandas as pd
import ray
import ray.train
import ray.train.torch
import ray.tune
import torch
import torch.distributed as dist
from torch import nn

from convfm.store.artifacts import load_model_dir, save_model_dir
from convfm.data.batching import ExampleSet
from convfm.config import DataConfig, ModelConfig, TrainConfig
from convfm.errors import ArtifactError
from convfm.features.fields import FeatureMap
from convfm.model.network import ConvFM
from convfm.data.partitioned import example_set_of
from convfm.data.prepare import PreparedData
from convfm.training.averaging import unwrap
from convfm.training.in_process import TrainingState, batch_per_rank, run_epoch
from train.prepare_distributed import BATCH_ROWS

log = logging.getLogger(__name__)
MODEL_DIR = "model"
TRAIN_STATE = "train_state.pt"
TRAINING_WEIGHTS = "training_weights"  # train_state.pt's copy of the raw weights when model/ holds their average


@dataclasses.dataclass(frozen=True)
class LoopSession:
    """Where the loop runs and how it reports: a rank of Ray Train's worker group, or a Tune trial's own actor
    (a 1-worker trial needs no worker group: ``train_in_trial``)."""

    rank: int
    world_size: int
    device: torch.device
    checkpoint: Optional[ray.train.Checkpoint | ray.tune.Checkpoint]  # the one to resume from, if any
    prepare_model: Callable[[nn.Module], nn.Module]  # DDP wrapping and the move to ``device``
    report: Callable[..., None]  # report(metrics, checkpoint=None)
    checkpoint_type: type  # the Checkpoint class ``report`` takes


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """One rank of a ``TorchTrainer`` run."""
    context = ray.train.get_context()
    _train(config, LoopSession(context.get_world_rank(), context.get_world_size(), ray.train.torch.get_device(),
                               ray.train.get_checkpoint(), ray.train.torch.prepare_model, ray.train.report,
                               ray.train.Checkpoint))


def train_in_trial(config: dict[str, Any]) -> None:
    """A whole 1-worker run inside the calling Tune trial actor: the same epochs, records and checkpoints as
    ``train_loop_per_worker`` on one rank, without the controller, worker and helper actors a ``TorchTrainer``
    starts for each trial. Tune keeps the checkpoints (its ``CheckpointConfig``) and hands the latest back
    when it retries or resumes the trial."""
    device = torch.device("cuda" if TrainConfig.from_dict(config["train"]).use_gpu else "cpu")
    _train(config, LoopSession(0, 1, device, ray.tune.get_checkpoint(), lambda model: model.to(device),
                               ray.tune.report, ray.tune.Checkpoint))


def _train(config: dict[str, Any], session: LoopSession) -> None:
    model_config, train_config = ModelConfig.from_dict(config["model"]), TrainConfig.from_dict(config["train"])
    data_config = DataConfig.from_dict(config["data"])
    feature_map = FeatureMap.from_dict(config["feature_map"])
    rank, world_size, device = session.rank, session.world_size, session.device

    if "extractor" in config:
        popularity = ray.get(config["popularity"][0]) if config.get("popularity") else None
        train_set, bundle = _streamed(data_config, ray.get(config["extractor"][0]), rank, popularity)
    else:
        train_set = ExampleSet(ray.get(config["train_tables"][0]), *ray.get(config["train_shards"][rank]))
        bundle = ray.get(config["eval_bundle"][0]) if rank == 0 else None
    torch.manual_seed(train_config.seed)  # same initial weights everywhere (DDP also broadcasts rank 0's)
    initial = ray.get(config["initial_state"][0]) if config.get("initial_state") else None
    model, saved_state = _restore(session.checkpoint, model_config, feature_map, initial)
    model = session.prepare_model(model)
    state = TrainingState.create(model, train_config, _global_count(len(train_set), device, world_size),
                                 validates=bundle is not None)
    if saved_state is not None:
        state.load_state_dict(saved_state)
    start_epoch = state.next_epoch
    if start_epoch and rank == 0:
        log.info("resuming from the checkpoint of epoch %d", start_epoch - 1)

    share_metric = functools.partial(_share_metric, device=device, world_size=world_size)
    diagnostics = functools.partial(_worker_diagnostics, model, device, world_size, start_epoch)
    steps = len(train_set) // batch_per_rank(train_config, world_size)
    for epoch in state.epochs(train_config.num_epochs):
        record = run_epoch(model, train_set, state, train_config, device, validation=bundle, rank=rank,
                           world_size=world_size, share_metric=share_metric, extras=diagnostics,
                           on_batch=_crash_hook(config, epoch, rank, world_size, steps))
        if record is None:
            session.report({"epoch": epoch, "rank": rank})
        else:
            _report_with_checkpoint(session, record, model, state, bundle.extractor, train_config, data_config)


def _streamed(data_config: DataConfig, extractor: Any, rank: int, popularity: Any = None
              ) -> tuple[ExampleSet, Optional[PreparedData]]:
    """This rank's training examples, read once from its Ray Data shard (encoded on the cluster), and on rank 0
    the validation bundle: a table's valid rows encoded here by the same extractor, or a job market's rows as
    encoded on the cluster with their (user_id, job_id, label, timestamp) and the training split's ``popularity``
    baseline (classification metrics only: ranking the live catalog needs the whole market, ``convfm evaluate``)."""
    batches = ray.train.get_dataset_shard("train").iter_batches(batch_size=BATCH_ROWS, batch_format="numpy")
    train_set = example_set_of(batches, extractor)
    if rank != 0:
        return train_set, None
    if data_config.kind == "jobs":
        parts = list(ray.train.get_dataset_shard("valid").iter_batches(batch_size=BATCH_ROWS, batch_format="numpy"))
        frame = pd.DataFrame({c: np.concatenate([p[c] for p in parts]) if parts else [] for c in
                              ("user_id", "job_id", "label", "timestamp")})
        return train_set, PreparedData(data_config, extractor, {"valid": example_set_of(parts, extractor)},
                                       {"valid": frame}, catalog=None, truth=None, popularity=popularity)
    valid = ray.train.get_dataset_shard("valid").iter_batches(batch_size=BATCH_ROWS, batch_format="pandas")
    frame = pd.concat(list(valid), ignore_index=True)
    return train_set, PreparedData(data_config, extractor, {"valid": extractor.example_set(frame)},
                                   {"valid": frame}, catalog=None, truth=None)


def _restore(checkpoint: Optional[ray.train.Checkpoint | ray.tune.Checkpoint], model_config: ModelConfig,
             feature_map: FeatureMap, initial: Optional[dict[str, torch.Tensor]] = None
             ) -> tuple[ConvFM, Optional[dict[str, Any]]]:
    """The checkpoint's model and train state (refusing one of a different model), else a fresh model holding
    ``initial`` (a warm start's weights) when given."""
    if checkpoint is None:
        model = ConvFM(model_config, feature_map)
        if initial is not None:
            model.load_state_dict(initial)
        return model, None
    with checkpoint.as_directory() as directory:
        loaded = load_model_dir(Path(directory) / MODEL_DIR)
        state = torch.load(Path(directory) / TRAIN_STATE, map_location="cpu", weights_only=True)
    saved = loaded.model
    if saved.config != model_config or saved.feature_map != feature_map:
        raise ArtifactError(f"{checkpoint.path}: checkpoint holds a different model config or feature map "
                            "than this run; start a new run instead of resuming")
    if TRAINING_WEIGHTS in state:  # model/ holds the weight average: training goes on from the raw weights
        saved.load_state_dict(state.pop(TRAINING_WEIGHTS))
    return saved.train(), state


def _global_count(count: int, device: torch.device, world_size: int) -> int:
    """The sum of ``count`` over all ranks (a collective: every rank calls it), e.g. the run's training examples."""
    if world_size == 1:
        return count
    total = torch.tensor([count], dtype=torch.int64, device=device)
    dist.all_reduce(total)
    return int(total[0])


def _share_metric(value: float, device: torch.device, world_size: int) -> float:
    """Rank 0's validation value of the early-stopping metric on every rank (the others pass NaN), so their
    schedules and stoppers agree."""
    if world_size == 1:
        return value
    shared = torch.tensor([value], dtype=torch.float64, device=device)
    dist.broadcast(shared, src=0)
    return float(shared[0])


def _worker_diagnostics(model: nn.Module, device: torch.device, world_size: int, start_epoch: int) -> dict[str, Any]:
    """Process ids and parameter checksums of all ranks (a collective: every rank calls it), world size,
    threads and the epoch this worker group started at: distinct PIDs show real processes; equal checksums
    after steps on different shards show that DDP averaged the gradients."""
    checksum = sum(float(p.detach().double().sum()) for p in model.parameters())
    mine = torch.tensor([float(os.getpid()), checksum], dtype=torch.float64, device=device)
    if world_size > 1:
        parts = [torch.zeros_like(mine) for _ in range(world_size)]
        dist.all_gather(parts, mine)
    else:
        parts = [mine]
    pids = [int(p[0]) for p in parts]
    sums = [float(p[1]) for p in parts]
    return {"worker_pids": ",".join(map(str, pids)), "distinct_pids": len(set(pids)),
            "param_checksum": sums[0], "param_checksum_spread": max(sums) - min(sums),
            "world_size": world_size, "torch_threads": torch.get_num_threads(), "run_start_epoch": start_epoch}


def _report_with_checkpoint(session: LoopSession, record: dict[str, Any], model: nn.Module, state: TrainingState,
                            extractor: Any, train_config: TrainConfig, data_config: DataConfig) -> None:
    with tempfile.TemporaryDirectory(prefix="convfm-ckpt-") as directory:
        kept = state.kept_model(model)
        save_model_dir(Path(directory) / MODEL_DIR, kept, extractor, metrics=record,
                       extra_json={"train_config": train_config.to_dict(), "data_config": data_config.to_dict()})
        train_state = state.state_dict()
        if kept is not unwrap(model):
            train_state[TRAINING_WEIGHTS] = unwrap(model).state_dict()
        torch.save(train_state, Path(directory) / TRAIN_STATE)
        session.report(record, checkpoint=session.checkpoint_type.from_directory(directory))


def _crash_hook(config: dict[str, Any], epoch: int, rank: int, world_size: int,
                steps: int) -> Optional[Callable[[int], None]]:
    """Fault injection for tests and chaos drills: kill this worker process halfway through the epoch."""
    if config.get("crash_at_epoch") != epoch or rank != (1 if world_size > 1 else 0):
        return None
    marker = Path(config["crash_marker"])
    if marker.exists():
        return None

    def crash(step: int) -> None:
        if step >= steps // 2:
            marker.write_text(f"rank {rank} pid {os.getpid()} exited at epoch {epoch} step {step}\n")
            os._exit(1)

    return crash
