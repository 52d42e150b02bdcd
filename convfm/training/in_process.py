"""The epoch protocol every trainer follows, and in-process training (one worker, no Ray).

``TrainingState`` (optimizer, LR schedule, early stopping, per-epoch history) is what a checkpoint needs
besides the weights. ``run_epoch`` is one epoch of the protocol (train, validate and record, step stopper
and schedule, append to history); the in-process loop below and the Ray Train loop (``train/loop.py``) both
drive it through ``TrainingState.epochs``, so they stop, schedule and record epochs identically. The Ray
loop only adds DDP, sharding, reporting and checkpoints around it.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any, Callable, Iterator, Optional

import torch
from torch import nn

from convfm.data.batching import ExampleSet
from convfm.config import ModelConfig, TrainConfig
from convfm.evaluation.report import evaluate_split
from convfm.jsonfile import to_plain
from convfm.model.network import ConvFM
from convfm.model.optim import CombinedOptimizer, LRSchedule, build_optimizer
from convfm.data.prepare import PreparedData
from convfm.training.epoch import train_epoch

log = logging.getLogger(__name__)
STATE_FORMAT_VERSION = 1


@dataclasses.dataclass
class EarlyStopping:
    """Stops after ``patience`` epochs without a validation AUC gain of more than ``min_delta``.

    ``best``/``best_epoch`` always track the true maximum (the weights worth keeping); only a gain above
    ``min_delta`` over the previous best resets the patience counter, so a slow creep counts as a plateau.
    """

    patience: int
    min_delta: float = 0.0
    best: float = -math.inf
    best_epoch: int = -1
    bad_epochs: int = 0

    def update(self, value: float, epoch: int) -> bool:
        """Record ``value`` for ``epoch``; True when it is the best so far."""
        if math.isnan(value) or value <= self.best:
            self.bad_epochs += 1
            return False
        self.bad_epochs = 0 if value > self.best + self.min_delta else self.bad_epochs + 1
        self.best, self.best_epoch = value, epoch
        return True

    @property
    def should_stop(self) -> bool:
        return self.bad_epochs >= self.patience


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """Shuffle seed of one epoch on one rank (rank 0 matches the in-process loop)."""
    return seed * 100_003 + epoch + 7_919 * rank


def batch_per_rank(config: TrainConfig, world_size: int) -> int:
    """``batch_size`` is the global batch: each of ``world_size`` ranks steps on its share."""
    return max(1, config.batch_size // world_size)


def epoch_record(epoch: int, train_stats: dict[str, float], report: dict[str, Any]) -> dict[str, Any]:
    """Flat per-epoch metrics: train loss, val_* of the model, popularity_* (AUC, HR@k, NDCG@k), the other
    baselines' HR@k and NDCG@k (recent_popularity_*, newest_*, oracle_*: live protocol) and the oracle AUC
    (synthetic data) beside it."""
    record: dict[str, Any] = {"epoch": int(epoch), "train_loss": train_stats["train_loss"],
                              "samples_per_s": train_stats["samples"] / max(train_stats["train_seconds"], 1e-9)}
    for key, value in report["model"].items():
        record[f"val_{key}"] = value
    record["val_loss"] = report["model"]["log_loss"]
    for method in ("popularity", "recent_popularity", "newest", "oracle"):
        for key, value in report.get(method, {}).items():
            if key == "roc_auc" or key.startswith(("hr@", "ndcg@")):
                record[f"{method}_{key}"] = value
    if report.get("oracle_auc") is not None:
        record["oracle_roc_auc"] = report["oracle_auc"]
    return to_plain(record)  # plain numbers: history loads with torch.load(weights_only=True) and as JSON


def validate(model: nn.Module, data: PreparedData, config: TrainConfig, device: torch.device | str = "cpu",
             split: str = "valid") -> dict[str, Any]:
    """evaluate_split under the run's evaluation protocol (protocol, negatives, k, seed); the live protocol
    ranks at most ``eval_max_events`` positives so that validating every epoch stays cheap."""
    core = getattr(model, "module", model)  # a DDP wrapper would sync buffers in forward: evaluate the module
    return evaluate_split(core, data, split, device=device, negatives=config.eval_negatives,
                          k=config.ranking_k, seed=config.seed, protocol=config.eval_protocol,
                          max_events=config.eval_max_events)


@dataclasses.dataclass
class TrainingState:
    """Everything besides the weights that resuming a run needs: optimizer, schedule, stopper, history."""

    optimizer: CombinedOptimizer
    schedule: LRSchedule
    stopper: EarlyStopping
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    next_epoch: int = 0

    @classmethod
    def create(cls, model: nn.Module, config: TrainConfig) -> "TrainingState":
        optimizer = build_optimizer(model, config.learning_rate, config.weight_decay)
        schedule = LRSchedule(optimizer, config.lr_schedule, config.num_epochs, config.patience)
        return cls(optimizer, schedule, EarlyStopping(config.patience, config.min_delta))

    def end_epoch(self, epoch: int, val_auc: float) -> bool:
        """Advance stopper and schedule after validating ``epoch``; True when it is the best epoch so far."""
        is_best = self.stopper.update(float(val_auc), epoch)
        self.schedule.step(float(val_auc))
        self.next_epoch = epoch + 1
        return is_best

    @property
    def should_stop(self) -> bool:
        return self.stopper.should_stop

    def epochs(self, num_epochs: int) -> Iterator[int]:
        """The epochs left to train: from ``next_epoch`` (0, or where a checkpoint left off) until
        ``num_epochs`` or an early stop. Each must go through ``run_epoch``, which advances ``next_epoch``."""
        while self.next_epoch < num_epochs and not self.should_stop:
            epoch = self.next_epoch
            yield epoch
            if self.next_epoch == epoch:
                raise RuntimeError(f"epoch {epoch} ended without run_epoch; the training state did not advance")

    def state_dict(self) -> dict[str, Any]:
        """Tensors, numbers, strings and containers only: loads with ``torch.load(weights_only=True)``."""
        return {
            "format_version": STATE_FORMAT_VERSION,
            "next_epoch": self.next_epoch,
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "stopper": {"best": self.stopper.best, "best_epoch": self.stopper.best_epoch,
                        "bad_epochs": self.stopper.bad_epochs},
            "history": [to_plain(record) for record in self.history],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a saved state; patience and min_delta stay this run's (raising them extends a stopped run)."""
        if state.get("format_version") != STATE_FORMAT_VERSION:
            raise ValueError(f"train state format_version {state.get('format_version')!r}, "
                             f"expected {STATE_FORMAT_VERSION}")
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.stopper = dataclasses.replace(self.stopper, **state["stopper"])
        self.history = [dict(record) for record in state["history"]]
        self.next_epoch = int(state["next_epoch"])


def run_epoch(
    model: nn.Module,
    examples: ExampleSet,
    state: TrainingState,
    config: TrainConfig,
    device: torch.device,
    *,
    validation: Optional[PreparedData],
    rank: int = 0,
    world_size: int = 1,
    share_auc: Callable[[float], float] = float,
    extras: Callable[[], dict[str, Any]] = dict,
    on_batch: Optional[Callable[[int], None]] = None,
) -> Optional[dict[str, Any]]:
    """One epoch (``state.next_epoch``) of the protocol; returns its history record, or None on a rank
    without ``validation``.

    Train this rank's ``examples`` in the epoch's seeded order; validate and record where ``validation``
    is given (rank 0); ``share_auc`` makes every rank agree on rank 0's validation AUC (a DDP broadcast;
    NaN stands in on the other ranks), so each steps the same stopper and schedule and stops at the same
    epoch; ``extras`` adds the caller's keys to the record (worker diagnostics; it runs on every rank, so it
    may be a collective); then the best epoch and the stop decision, and the record joins the history.
    """
    epoch = state.next_epoch
    stats = train_epoch(model, examples, state.optimizer, batch_per_rank(config, world_size), device,
                        epoch_seed=epoch_seed(config.seed, epoch, rank), use_amp=config.use_amp, on_batch=on_batch)
    record = None
    if validation is not None:
        record = epoch_record(epoch, stats, validate(model, validation, config, device))
        record["learning_rate"] = state.schedule.learning_rate  # the rate this epoch trained with
    state.end_epoch(epoch, share_auc(math.nan if record is None else record["val_roc_auc"]))
    added = extras()
    if record is None:
        return None
    record.update(added, best_epoch=state.stopper.best_epoch, stop=int(state.should_stop))
    state.history.append(record)
    return record


def fit_in_process(
    data: PreparedData,
    model_config: ModelConfig,
    train_config: TrainConfig,
    on_epoch: Optional[Callable[[dict[str, Any]], None]] = None,
) -> tuple[ConvFM, list[dict[str, Any]]]:
    """Train on ``data.sets['train']`` with early stopping on validation AUC; return the best model + history."""
    torch.manual_seed(train_config.seed)
    device = torch.device("cuda" if train_config.use_gpu and torch.cuda.is_available() else "cpu")
    model = ConvFM(model_config, data.extractor.feature_map).to(device)
    state, best_weights = TrainingState.create(model, train_config), None
    for epoch in state.epochs(train_config.num_epochs):
        record = run_epoch(model, data.sets["train"], state, train_config, device, validation=data)
        if on_epoch is not None and record is not None:
            on_epoch(record)
        if state.stopper.best_epoch == epoch:
            best_weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if state.should_stop:
        log.info("early stop at epoch %d (best %d)", state.next_epoch - 1, state.stopper.best_epoch)
    if best_weights is not None:
        model.load_state_dict(best_weights)
    return model.eval(), state.history
