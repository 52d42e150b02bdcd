"""The per-worker ConvFM training loop that Ray Train's ``TorchTrainer`` runs on every rank.

``config`` is a plain dict built by ``train.driver.loop_config``:
  model, train, data   ModelConfig / TrainConfig / DataConfig as dicts (rebuilt and validated here)
  feature_map          FeatureMap.to_dict() of the driver's fitted extractor
  train_tables         [ObjectRef] the encoded side tables of the training set, put once, shared by all ranks
  train_shards         [ObjectRef] (rows, labels) per rank, all of equal length (so DDP ranks step together)
  eval_bundle          [ObjectRef] PreparedData.for_split("valid"), read by rank 0 only
  crash_at_epoch       optional fault injection: rank 1 (rank 0 when alone) exits mid-epoch, once, ...
  crash_marker         ... the first time only (the file records that the crash happened)

Per epoch: every rank trains on its shard (DDP averages gradients), rank 0 validates, the validation AUC
and the early-stop decision are broadcast so every rank schedules and stops together, and every rank
calls ``ray.train.report`` once; rank 0 attaches a checkpoint:
  model/           a complete model directory (save_model_dir: weights, configs, extractor, metrics)
  train_state.pt   TrainingState.state_dict(): epoch, optimizer, LR schedule, early stopping, history
"""
from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional

import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from torch import nn

from convfm.artifacts import load_model_dir, save_model_dir
from convfm.batching import ExampleSet
from convfm.config import DataConfig, ModelConfig, TrainConfig
from convfm.errors import ArtifactError
from convfm.fields import FeatureMap
from convfm.model import ConvFM
from convfm.prepare import PreparedData
from convfm.trainer import TrainingState, epoch_record, epoch_seed, validate
from convfm.training import train_epoch

log = logging.getLogger(__name__)
MODEL_DIR = "model"
TRAIN_STATE = "train_state.pt"


def train_loop_per_worker(config: dict[str, Any]) -> None:
    model_config, train_config = ModelConfig.from_dict(config["model"]), TrainConfig.from_dict(config["train"])
    data_config = DataConfig.from_dict(config["data"])
    feature_map = FeatureMap.from_dict(config["feature_map"])
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()

    train_set = ExampleSet(ray.get(config["train_tables"][0]), *ray.get(config["train_shards"][rank]))
    bundle: Optional[PreparedData] = ray.get(config["eval_bundle"][0]) if rank == 0 else None
    torch.manual_seed(train_config.seed)  # same initial weights everywhere (DDP also broadcasts rank 0's)
    model, saved_state = _restore(ray.train.get_checkpoint(), model_config, feature_map)
    torch.manual_seed(train_config.seed + 7_919 * rank)  # per-rank dropout noise
    model = ray.train.torch.prepare_model(model)  # DDP when world_size > 1; moves to device
    state = TrainingState.create(model, train_config)
    if saved_state is not None:
        state.load_state_dict(saved_state)
    start_epoch = state.next_epoch
    if start_epoch and rank == 0:
        log.info("resuming from the checkpoint of epoch %d", start_epoch - 1)

    batch_size = max(1, train_config.batch_size // world_size)  # batch_size is the global batch
    for epoch in range(start_epoch, train_config.num_epochs):
        stats = train_epoch(model, train_set, state.optimizer, batch_size, device,
                            epoch_seed=epoch_seed(train_config.seed, epoch, rank), use_amp=train_config.use_amp,
                            on_batch=_crash_hook(config, epoch, rank, world_size, len(train_set) // batch_size))
        record = None
        if rank == 0:
            record = epoch_record(epoch, stats, validate(model, bundle, train_config, device))
            record["learning_rate"] = state.schedule.learning_rate
        val_auc, stop = _decide(state, epoch, record, device, world_size)
        diagnostics = _replica_diagnostics(model, device, world_size)
        if rank != 0:
            ray.train.report({"epoch": epoch, "rank": rank})
        else:
            record.update(diagnostics, world_size=world_size, torch_threads=torch.get_num_threads(),
                          run_start_epoch=start_epoch, best_epoch=state.stopper.best_epoch, stop=int(stop))
            state.history.append(record)
            _report_with_checkpoint(record, model, state, bundle.extractor, train_config, data_config)
        if stop:
            break


def _restore(checkpoint: Optional[ray.train.Checkpoint], model_config: ModelConfig,
             feature_map: FeatureMap) -> tuple[ConvFM, Optional[dict[str, Any]]]:
    """A fresh model, or the checkpoint's model and train state (refusing one of a different model)."""
    if checkpoint is None:
        return ConvFM(model_config, feature_map), None
    with checkpoint.as_directory() as directory:
        loaded = load_model_dir(Path(directory) / MODEL_DIR)
        state = torch.load(Path(directory) / TRAIN_STATE, map_location="cpu", weights_only=True)
    saved = loaded.model
    if saved.config != model_config or saved.feature_map != feature_map:
        raise ArtifactError(f"{checkpoint.path}: checkpoint holds a different model config or feature map "
                            "than this run; start a new run instead of resuming")
    return saved.train(), state


def _decide(state: TrainingState, epoch: int, record: Optional[dict[str, Any]], device: torch.device,
            world_size: int) -> tuple[float, bool]:
    """Rank 0's validation AUC and stop decision, broadcast so every rank's schedule and stopper agree."""
    if record is not None:
        state.end_epoch(epoch, record["val_roc_auc"])
        decision = torch.tensor([record["val_roc_auc"], float(state.should_stop)], dtype=torch.float64)
    else:
        decision = torch.zeros(2, dtype=torch.float64)
    if world_size > 1:
        decision = decision.to(device)
        dist.broadcast(decision, src=0)
        if record is None:
            state.end_epoch(epoch, float(decision[0]))
    return float(decision[0]), bool(decision[1])


def _replica_diagnostics(model: nn.Module, device: torch.device, world_size: int) -> dict[str, Any]:
    """Process ids and parameter checksums of all ranks: distinct PIDs show real processes; equal
    checksums after steps on different shards show that DDP averaged the gradients."""
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
            "param_checksum": sums[0], "param_checksum_spread": max(sums) - min(sums)}


def _report_with_checkpoint(record: dict[str, Any], model: nn.Module, state: TrainingState, extractor: Any,
                            train_config: TrainConfig, data_config: DataConfig) -> None:
    with tempfile.TemporaryDirectory(prefix="convfm-ckpt-") as directory:
        save_model_dir(Path(directory) / MODEL_DIR, model, extractor, metrics=record,
                       extra_json={"train_config": train_config.to_dict(), "data_config": data_config.to_dict()})
        torch.save(state.state_dict(), Path(directory) / TRAIN_STATE)
        ray.train.report(record, checkpoint=ray.train.Checkpoint.from_directory(directory))


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
