"""``TuneConfig``: how a hyperparameter search runs (the ``tune:`` section of configs/tune.yaml).

Same contract as convfm/config.py: frozen, validated in ``__post_init__``, ``ConfigError`` naming the field;
``space`` is the YAML ``space:`` section (overrides of ``tune.space.DEFAULT_SPACE``), parsed and range-checked
here so a bad search space fails before Ray starts.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Mapping, Optional

from convfm.config import RANKING_AT_K, VALIDATION_METRICS, BaseConfig, ModelConfig, TrainConfig
from convfm.errors import ConfigError
from convfm.validate import check_bool, check_choice, check_int, check_number, check_text, require
from train.checks import check_sparse_gradients
from tune.space import SearchSpace

SEARCH_ALGS = ("random", "optuna", "hyperopt")
DRIVER_CPU = 0.01  # a multi-worker trial's driver (it only waits on its TorchTrainer): a sliver; {"cpu": 0} is refused


@dataclasses.dataclass(frozen=True)
class TuneConfig(BaseConfig):
    """One hyperparameter search: trials, search algorithm, ASHA, resources, where the best model goes."""

    num_samples: int = 8
    max_concurrent: int = 2
    search_alg: str = "optuna"
    # ASHA on `metric`, one Tune iteration per epoch: every trial trains at most max_t epochs (this replaces
    # train.num_epochs), none is stopped before grace_period epochs, each rung keeps 1/reduction_factor.
    max_t: int = 10
    grace_period: int = 1
    reduction_factor: float = 2.0
    metric: str = "val_roc_auc"
    mode: str = "max"
    workers_per_trial: int = 1
    cpus_per_worker: float = 1.0 - DRIVER_CPU  # worker + driver sliver = 1 CPU per 1-worker trial
    use_gpu: bool = False
    seed: int = 0
    registry: str = "models"
    name: str = "convfm"  # -> registry/name/vNNNN and registry/name/latest
    max_failures: int = 1  # Tune retries of a failed trial (it resumes from its checkpoint); replaces train.max_failures
    space: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        check_int(self.num_samples, "num_samples", 1, 10_000)
        check_int(self.max_concurrent, "max_concurrent", 1, 1024)
        check_choice(self.search_alg, "search_alg", SEARCH_ALGS)
        check_int(self.max_t, "max_t", 1, 10_000)
        check_int(self.grace_period, "grace_period", 1, self.max_t, high_from="max_t")
        check_number(self.reduction_factor, "reduction_factor", 1, 100, low_open=True)
        direction = metric_direction(self.metric)
        require(direction is not None, "metric", f"must be a validation metric each epoch reports: "
                f"{', '.join('val_' + name for name in VALIDATION_METRICS)}, or val_<hr|ndcg>@<train.ranking_k> "
                f"(kind jobs), got {self.metric!r}")
        check_choice(self.mode, "mode", ("max", "min"))
        require(self.mode == direction, "mode", f"must be {direction!r} for {self.metric} "
                f"({'lower' if direction == 'min' else 'higher'} is better), got {self.mode!r}")
        check_int(self.workers_per_trial, "workers_per_trial", 1, 1024)
        check_number(self.cpus_per_worker, "cpus_per_worker", 0, 256, low_open=True)
        check_bool(self.use_gpu, "use_gpu")
        check_int(self.seed, "seed", 0)
        check_text(self.registry, "registry", "a non-empty path or URI")
        require(isinstance(self.name, str) and re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", self.name) is not None,
                "name", f"use letters, digits, '.', '_' and '-' (a registry folder name), got {self.name!r}")
        check_int(self.max_failures, "max_failures", 0, 100)
        require(isinstance(self.space, Mapping), "space", "must map field name -> spec")
        self.search_space().validate()  # the ranges themselves, against the configs' defaults

    @property
    def trains_in_trial(self) -> bool:
        """A 1-worker trial trains in its own Tune actor (``train.loop.train_in_trial``); more workers need a
        ``TorchTrainer`` (DDP) that the trial actor drives."""
        return self.workers_per_trial == 1

    def trial_resources(self) -> dict[str, float]:
        """What Tune reserves for a trial's actor: the worker's CPUs (and GPU) plus the driver's sliver when it
        trains there, else the sliver only (Ray Train places its workers itself). Either way a trial holds
        ``workers_per_trial * cpus_per_worker + DRIVER_CPU`` CPUs, so ``trial_concurrency`` counts the same."""
        if self.trains_in_trial:
            return {"cpu": self.cpus_per_worker + DRIVER_CPU, "gpu": 1 if self.use_gpu else 0}
        return {"cpu": DRIVER_CPU, "gpu": 0}

    def search_space(self) -> SearchSpace:
        return SearchSpace.from_overrides(self.space)

    def trial_base(self, model: ModelConfig, train: TrainConfig) -> tuple[ModelConfig, TrainConfig]:
        """The configs every trial starts from: the space's fixed values applied, and epochs, workers, CPUs
        per worker and GPU from this section (so each trial's recorded TrainConfig is what it ran with).
        ConfigError (naming ``space.<field>``) when the space does not fit them."""
        at_k = re.fullmatch(r"val_[a-z]+@(\d+)", self.metric)
        require(at_k is None or int(at_k.group(1)) == train.ranking_k, "metric",
                f"each epoch reports ranking metrics at train.ranking_k={train.ranking_k}, got {self.metric!r}")
        space = self.search_space()
        space.validate(model, train)
        model, train = space.apply(model, train, space.fixed)
        train = TrainConfig.from_dict({**train.to_dict(), "num_epochs": self.max_t,
                                       "num_workers": self.workers_per_trial, "use_gpu": self.use_gpu,
                                       "cpus_per_worker": self.cpus_per_worker},
                                      source="tune")
        sparse = space.params.get("sparse_embeddings")
        check_sparse_gradients(True in (sparse.candidates() if sparse else [model.sparse_embeddings]),
                               self.use_gpu, self.workers_per_trial, field="space.sparse_embeddings",
                               workers_field="workers_per_trial")
        return model, train


def metric_direction(metric: Any) -> Optional[str]:
    """"max" or "min" for a validation metric each epoch reports (``val_roc_auc``, ``val_ndcg@10``); None for
    anything else (``val_auc``), which Ray Tune would only refuse once the first trial reports."""
    if not isinstance(metric, str) or not metric.startswith("val_"):
        return None
    name, _, k = metric[4:].partition("@")
    if k:
        return "max" if name in RANKING_AT_K and k.isdigit() and int(k) >= 1 else None
    return VALIDATION_METRICS.get(name)
