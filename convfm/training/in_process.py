"""The epoch protocol every trainer follows, and in-process training (one worker, no Ray).

``TrainingState`` (optimizer, LR schedule, early stopping, per-epoch history, the weight average) is what a
checkpoint needs besides the weights. ``run_epoch`` is one epoch of the protocol (train, validate and record, step
stopper and schedule, append to history); the in-process loop below and the Ray Train loop (``train/loop.py``) both
drive it through ``TrainingState.epochs``, so they stop, schedule and record epochs identically. The Ray
loop only adds DDP, sharding, reporting and checkpoints around it.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any, Callable, Iterator, Mapping, Optional

import torch
from torch import nn

from convfm.data.batching import ExampleSet
from convfm.config import EARLY_STOPPING_METRICS, ModelConfig, TrainConfig
from convfm.evaluation.report import evaluate_split
from convfm.jsonfile import to_plain
from convfm.model.network import ConvFM
from convfm.model.optim import CombinedOptimizer, LRSchedule, build_optimizer
from convfm.data.prepare import PreparedData
from convfm.training.averaging import WeightAverage, unwrap
from convfm.training.epoch import train_epoch
from convfm.validate import check_choice, require

log = logging.getLogger(__name__)
STATE_FORMAT_VERSION = 2  # 2: the stopper records its metric


@dataclasses.dataclass
class EarlyStopping:
    """Stops after ``patience`` epochs without a gain of more than ``min_delta`` in the validation ``metric``
    (``EARLY_STOPPING_METRICS``: roc_auc is maximized, log_loss minimized).

    ``best``/``best_epoch`` always track the true best value (the weights worth keeping); only a gain above
    ``min_delta`` over the previous best resets the patience counter, so a slow creep counts as a plateau.
    """

    patience: int
    min_delta: float = 0.0
    metric: str = "roc_auc"
    best: Optional[float] = None  # None: -inf when maximizing, +inf when minimizing (nothing seen yet)
    best_epoch: int = -1
    bad_epochs: int = 0

    def __post_init__(self) -> None:
        check_choice(self.metric, "early_stopping_metric", tuple(EARLY_STOPPING_METRICS))
        if self.best is None:
            self.best = -math.inf if self.maximize else math.inf

    @property
    def maximize(self) -> bool:
        return EARLY_STOPPING_METRICS[self.metric] == "max"

    def update(self, value: float, epoch: int) -> bool:
        """Record ``value`` for ``epoch``; True when it is the best so far."""
        gain = value - self.best if self.maximize else self.best - value  # NaN for a NaN value
        if not gain > 0:
            self.bad_epochs += 1
            return False
        self.bad_epochs = 0 if gain > self.min_delta else self.bad_epochs + 1
        self.best, self.best_epoch = value, epoch
        return True

    @property
    def should_stop(self) -> bool:
        return self.bad_epochs >= self.patience


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """Shuffle and dropout seed of one epoch on one rank (rank 0 matches the in-process loop)."""
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
    core = unwrap(model)  # a DDP wrapper would sync buffers in forward: evaluate the module
    return evaluate_split(core, data, split, device=device, negatives=config.eval_negatives,
                          k=config.ranking_k, seed=config.seed, protocol=config.eval_protocol,
                          max_events=config.eval_max_events)


@dataclasses.dataclass
class TrainingState:
    """Everything besides the weights that resuming a run needs: optimizer, schedule, stopper, history, and the
    weight average (``TrainConfig.ema_decay`` above 0), which is then the model validated and kept."""

    optimizer: CombinedOptimizer
    schedule: LRSchedule
    stopper: EarlyStopping
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    next_epoch: int = 0
    average: Optional[WeightAverage] = None

    @classmethod
    def create(cls, model: nn.Module, config: TrainConfig, train_examples: int, *,
               validates: bool = True) -> "TrainingState":
        """``train_examples``: the run's training examples over all ranks (they set the weight decay:
        ``TrainConfig.weight_decay_for``). ``validates``: whether this rank validates (DDP rank 0); only that rank
        keeps the weight average."""
        optimizer = build_optimizer(model, config.learning_rate, config.weight_decay_for(train_examples))
        schedule = LRSchedule(optimizer, config.lr_schedule, config.num_epochs, config.patience,
                              mode=config.early_stopping[1])
        average = WeightAverage.of(model, config.ema_decay) if config.ema_decay and validates else None
        return cls(optimizer, schedule, EarlyStopping(config.patience, config.min_delta, config.early_stopping_metric),
                   average=average)

    def kept_model(self, model: nn.Module) -> nn.Module:
        """The model that validation scores and a checkpoint keeps: the weight average, else ``model`` itself."""
        return unwrap(model) if self.average is None else self.average.model

    def end_epoch(self, epoch: int, value: float) -> bool:
        """Advance stopper and schedule after validating ``epoch`` (``value``: its validation value of the
        stopper's metric); True when it is the best epoch so far."""
        is_best = self.stopper.update(float(value), epoch)
        self.schedule.step(float(value))
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
            "stopper": {"metric": self.stopper.metric, "best": self.stopper.best,
                        "best_epoch": self.stopper.best_epoch, "bad_epochs": self.stopper.bad_epochs},
            "history": [to_plain(record) for record in self.history],
            **({} if self.average is None else {"average": self.average.state_dict()}),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a saved state; patience and min_delta stay this run's (raising them extends a stopped run).
        ConfigError when it stopped on another metric than this run (``check_resumable_metric``)."""
        check_resumable_metric(state, self.stopper.metric)
        saved_groups = [len(opt["param_groups"]) for opt in state["optimizer"]["optimizers"]]
        groups = [len(opt.param_groups) for opt in self.optimizer.optimizers]
        require(saved_groups == groups, "weight_decay", f"the checkpoint's optimizer has {saved_groups} parameter "
                f"group(s), this run's {groups}: with weight decay the scale-invariant parameters form a group of "
                "their own; resume with the weight_decay the checkpoint's run used (0 or not), or start a new run")
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.stopper = dataclasses.replace(self.stopper, **state["stopper"])
        self.history = [dict(record) for record in state["history"]]
        self.next_epoch = int(state["next_epoch"])
        if self.average is not None and "average" in state:  # else the average starts from the current weights
            self.average.load_state_dict(state["average"])


def check_resumable_metric(state: Mapping[str, Any], metric: str) -> None:
    """A saved train state continues only under the early-stopping metric it was stopping on: its best value
    and its plateau schedule mean nothing under another. Format 1 states predate the choice: roc_auc."""
    version = state.get("format_version")
    if version not in (1, STATE_FORMAT_VERSION):
        raise ValueError(f"train state format_version {version!r}, expected 1 or {STATE_FORMAT_VERSION}")
    saved = state["stopper"].get("metric", "roc_auc")
    require(saved == metric, "early_stopping_metric", f"the checkpoint's run stopped on {saved!r}, this run "
            f"on {metric!r}; resume with early_stopping_metric: {saved}, or start a new run")


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
    share_metric: Callable[[float], float] = float,
    extras: Callable[[], dict[str, Any]] = dict,
    on_batch: Optional[Callable[[int], None]] = None,
) -> Optional[dict[str, Any]]:
    """One epoch (``state.next_epoch``) of the protocol; returns its history record, or None on a rank
    without ``validation``.

    Train this rank's ``examples`` in the epoch's seeded order; validate (``state.kept_model``: the weight
    average, its BatchNorm statistics refreshed on ``examples``) and record where ``validation`` is given
    (rank 0); ``share_metric`` makes every rank agree on rank 0's value of the early-stopping metric (a DDP
    broadcast; NaN stands in on the other ranks), so each steps the same stopper and schedule and stops at the
    same epoch; ``extras`` adds the caller's keys to the record (worker diagnostics; it runs on every rank, so it
    may be a collective); then the best epoch and the stop decision, and the record joins the history.
    """
    epoch = state.next_epoch
    batch_size = batch_per_rank(config, world_size)
    # dropout and id-dropout noise seeded per epoch and rank, as the shuffle is: a resumed run trains its next
    # epoch exactly as the uninterrupted run did (torch's RNG state is not in the checkpoint)
    seed = epoch_seed(config.seed, epoch, rank)
    torch.manual_seed(seed)
    stats = train_epoch(model, examples, state.optimizer, batch_size, device,
                        epoch_seed=seed, use_amp=config.use_amp, on_batch=on_batch,
                        embedding_l2=config.embedding_l2, average=state.average)
    record = None
    if validation is not None:
        if state.average is not None:
            state.average.refresh_statistics(examples, batch_size, device, config.use_amp)
        record = epoch_record(epoch, stats, validate(state.kept_model(model), validation, config, device))
        record["learning_rate"] = state.schedule.learning_rate  # the rate this epoch trained with
        record["weight_decay"] = float(state.optimizer.param_groups[0]["weight_decay"])  # weight_decay_for's
    state.end_epoch(epoch, share_metric(math.nan if record is None else record[config.early_stopping[0]]))
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
    initial: Optional[ConvFM] = None,
) -> tuple[ConvFM, list[dict[str, Any]]]:
    """Train on ``data.sets['train']`` with early stopping on ``early_stopping_metric``; return the model of
    its best epoch (the weight average's, with ``ema_decay``) + history. ``initial`` is the model to start from
    instead of a fresh one (a warm start: ``convfm.training.warm_start.warm_model``; it is trained in place)."""
    check_initial_weights(train_config, initial is not None)
    torch.manual_seed(train_config.seed)
    device = torch.device("cuda" if train_config.use_gpu and torch.cuda.is_available() else "cpu")
    model = (ConvFM(model_config, data.extractor.feature_map) if initial is None else initial).to(device)
    state, best_weights = TrainingState.create(model, train_config, len(data.sets["train"])), None
    for epoch in state.epochs(train_config.num_epochs):
        record = run_epoch(model, data.sets["train"], state, train_config, device, validation=data)
        if on_epoch is not None and record is not None:
            on_epoch(record)
        if state.stopper.best_epoch == epoch:
            best_weights = {k: v.detach().clone() for k, v in state.kept_model(model).state_dict().items()}
    if state.should_stop:
        log.info("early stop at epoch %d (best %d)", state.next_epoch - 1, state.stopper.best_epoch)
    if best_weights is not None:
        model.load_state_dict(best_weights)
    return model.eval(), state.history


def check_initial_weights(config: TrainConfig, given: bool) -> None:
    """A run with ``init_from`` must be handed its initial weights (``warm_model``): a trainer never starts it
    fresh silently. ``given``: whether the trainer got them."""
    require(given or config.init_from is None, "init_from", f"{config.init_from}: this trainer was given no initial "
            "weights; warm starts run through `convfm train` / train.driver.run_training or fit_in_process(initial=...)")
