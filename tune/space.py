"""The hyperparameter search space, in one place, keyed by ModelConfig / TrainConfig field names.

``DEFAULT_SPACE`` covers the seed document's table plus the regularization knobs (weight decay, the embedding L2
penalty, id dropout, the weight average) and the early-stopping metric. Trials are still compared on
``TuneConfig.metric`` (validation AUC by default) whatever metric each one stops on: trials that stop on different
metrics need one scale to be ranked on, and AUC is the one the project's quality targets use; set
``metric: val_log_loss`` and ``mode: min`` to compare calibration instead. A YAML ``space:`` section overrides any
entry with a small spec language (ranges are inclusive):

    learning_rate: {type: loguniform, low: 1.0e-4, high: 1.0e-2}
    dropout_rate:  {type: uniform, low: 0.0, high: 0.5}
    embedding_dim: {type: choice, values: [16, 32, 64]}      # or {type: randint | lograndint, low:, high:}
    hidden_dims:   [64, 32]                                  # a plain value fixes the field for every trial

Every spec is checked before Ray starts: an unknown field or type, ``low > high``, or any value the spec can
produce that the config dataclass refuses (tried by constructing ModelConfig / TrainConfig with it) raises a
``ConfigError`` that names ``space.<field>``. Nothing here imports Ray until ``param_space()`` is called.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Mapping, Optional

from convfm.config import ModelConfig, TrainConfig
from convfm.errors import ConfigError
from convfm.validate import check_number, require

KINDS = ("choice", "uniform", "loguniform", "randint", "lograndint", "fixed")
MODEL_FIELDS = tuple(f.name for f in dataclasses.fields(ModelConfig))
TRAIN_FIELDS = tuple(f.name for f in dataclasses.fields(TrainConfig))
# TrainConfig fields set for every trial outside the space: searching them would fight the scheduler, or
# (resources, placement) would change what a trial holds behind the concurrency cap's back.
TUNE_OWNED = {"num_epochs": "tune.max_t", "num_workers": "tune.workers_per_trial", "use_gpu": "tune.use_gpu",
              "cpus_per_worker": "tune.cpus_per_worker", "placement_strategy": "train.placement_strategy"}
SEARCHABLE = tuple(sorted(set(MODEL_FIELDS + TRAIN_FIELDS) - set(TUNE_OWNED)))
_MAX_ENUMERATED = 4096  # integer ranges up to this size are validated value by value (odd kernel sizes...)


@dataclasses.dataclass(frozen=True)
class ParamSpec:
    """One field's distribution. ``values`` for choice/fixed, ``low``/``high`` (inclusive) otherwise."""

    kind: str
    values: tuple[Any, ...] = ()
    low: Optional[float] = None
    high: Optional[float] = None

    def to_dict(self) -> Any:
        if self.kind == "fixed":
            return self.values[0]
        if self.kind == "choice":
            return {"type": "choice", "values": list(self.values)}
        return {"type": self.kind, "low": self.low, "high": self.high}

    def candidates(self) -> list[Any]:
        """Values to validate: every choice, every integer of a small range, else the two bounds."""
        if self.kind in ("choice", "fixed"):
            return list(self.values)
        if self.kind in ("randint", "lograndint"):
            if self.high - self.low < _MAX_ENUMERATED:
                return list(range(int(self.low), int(self.high) + 1))
            return [int(self.low), int(self.high)]
        # samples are floats: float bounds make an integer field refuse a uniform range here, not in a trial
        return [float(self.low), float(self.high)]

    def domain(self) -> Any:
        """The Ray Tune domain. Choices of lists (hidden_dims) travel as JSON strings: searchers such as
        Optuna only take scalar categories; ``SearchSpace.decode`` turns them back."""
        from ray import tune as ray_tune

        if self.kind == "choice":
            return ray_tune.choice([_category(v) for v in self.values])
        if self.kind == "uniform":
            return ray_tune.uniform(self.low, self.high)
        if self.kind == "loguniform":
            return ray_tune.loguniform(self.low, self.high)
        if self.kind == "randint":
            return ray_tune.randint(int(self.low), int(self.high) + 1)  # Tune's upper bound is exclusive
        if self.kind == "lograndint":
            return ray_tune.lograndint(int(self.low), int(self.high) + 1)
        raise ValueError(f"a {self.kind} spec has no Tune domain")


def _category(value: Any) -> Any:
    return json.dumps(value) if isinstance(value, (list, tuple)) else value


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


DEFAULT_SPACE: dict[str, ParamSpec] = {
    "embedding_dim": ParamSpec("choice", (16, 32, 64, 128)),
    "conv_filters": ParamSpec("choice", (16, 32, 64, 128)),
    "conv_kernel_size": ParamSpec("choice", (1, 3, 5)),
    "dropout_rate": ParamSpec("uniform", low=0.0, high=0.5),
    # how often training reads an id as unseen: 0.8 (the default) measured better log loss than 0.5 and 0.9 on
    # the time-split markets, where most test users and jobs are new; data with few new ids may want less
    "id_dropout": ParamSpec("choice", (0.0, 0.25, 0.5, 0.8)),
    # (64, 32), the default, ranked as well as the seed's (128, 64, 32) on the synthetic markets at a third of
    # the multiply-adds per (user, job) pair that serving pays; the wider heads stay for richer data
    "hidden_dims": ParamSpec("choice", ((128, 64, 32), (256, 128, 64), (64, 32))),
    "learning_rate": ParamSpec("loguniform", low=1e-4, high=1e-2),
    "batch_size": ParamSpec("choice", (256, 512, 1024, 2048, 4096)),
    # AdamW's decay per step is learning_rate * weight_decay (scaled down past weight_decay_examples): 5, the
    # default, was best on the synthetic market, 1-2 on the 204k-row app log (benchmarks/overfitting.py)
    "weight_decay": ParamSpec("choice", (0.0, 1.0, 5.0, 10.0)),
    # log scale plus none (a log-uniform range cannot reach 0); on the synthetic markets 1e-3 changed nothing
    # and 1e-2 already cost AUC, so larger values are left out
    "embedding_l2": ParamSpec("choice", (0.0, 1e-5, 1e-4, 1e-3, 1e-2)),
    "early_stopping_metric": ParamSpec("choice", ("log_loss", "roc_auc")),
    # the weight average that is validated and kept: 0.99 (the default) raised the synthetic market's test AUC
    # over the raw weights (README "Model quality"); its best value depends on the steps per epoch
    "ema_decay": ParamSpec("choice", (0.0, 0.9, 0.99, 0.995)),
    "sparse_embeddings": ParamSpec("choice", (False, True)),  # SparseAdam on sparse gradients vs dense Adam
}


def parse_spec(name: str, raw: Any) -> ParamSpec:
    """A YAML value -> ParamSpec; ConfigError naming ``space.<name>`` on anything malformed."""
    where = f"space.{name}"
    hint = f" (set by {TUNE_OWNED[name]})" if name in TUNE_OWNED else ""
    require(name in SEARCHABLE, where, f"unknown parameter {name!r}{hint}; searchable fields: {list(SEARCHABLE)}")
    if not isinstance(raw, Mapping):
        return ParamSpec("fixed", (_freeze(raw),))
    kind = raw.get("type")
    allowed = [k for k in KINDS if k != "fixed"]
    require(kind in allowed, where, f"unknown type {kind!r}; use one of {allowed} or a plain value to fix it")
    allowed_keys = {"type", "values"} if kind == "choice" else {"type", "low", "high"}
    extra = sorted(set(raw) - allowed_keys)
    require(not extra, where, f"unknown key(s) {extra} for type {kind}; allowed: {sorted(allowed_keys)}")
    if kind == "choice":
        values = raw.get("values")
        require(isinstance(values, (list, tuple)) and bool(values), where, "choice needs a non-empty list `values`")
        return ParamSpec("choice", tuple(_freeze(v) for v in values))
    low, high = raw.get("low"), raw.get("high")
    for key, bound in (("low", low), ("high", high)):
        check_number(bound, f"{where}.{key}")
    require(low <= high, where, f"low ({low}) > high ({high})")
    require(kind not in ("loguniform", "lograndint") or low > 0, f"{where}.low", f"{kind} needs low > 0, got {low}")
    require(kind not in ("randint", "lograndint") or (float(low).is_integer() and float(high).is_integer()), where,
            f"{kind} needs integer bounds, got low={low}, high={high}")
    if kind in ("randint", "lograndint"):
        low, high = int(low), int(high)
    return ParamSpec(kind, low=low, high=high)


def _freeze(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


@dataclasses.dataclass(frozen=True)
class SearchSpace:
    """``DEFAULT_SPACE`` with a YAML section's overrides applied."""

    params: Mapping[str, ParamSpec]

    @classmethod
    def from_overrides(cls, overrides: Optional[Mapping[str, Any]] = None) -> "SearchSpace":
        require(overrides is None or isinstance(overrides, Mapping), "space",
                f"must map field name -> spec, got {type(overrides).__name__}")
        params = dict(DEFAULT_SPACE)
        for name, raw in (overrides or {}).items():
            params[str(name)] = parse_spec(str(name), raw)
        return cls(params)

    @property
    def searched(self) -> dict[str, ParamSpec]:
        return {name: spec for name, spec in self.params.items() if spec.kind != "fixed"}

    @property
    def fixed(self) -> dict[str, Any]:
        return {name: spec.values[0] for name, spec in self.params.items() if spec.kind == "fixed"}

    def to_dict(self) -> dict[str, Any]:
        return {name: spec.to_dict() for name, spec in self.params.items()}

    def validate(self, model: Optional[ModelConfig] = None, train: Optional[TrainConfig] = None) -> None:
        """Build the configs with every candidate value of every spec (on top of ``model``/``train``), so
        a value the trials would refuse fails now, naming the field, instead of inside a trial."""
        model, train = model or ModelConfig(), train or TrainConfig()
        for name, spec in self.params.items():
            base = model if name in MODEL_FIELDS else train
            for value in spec.candidates():
                try:
                    type(base).from_dict({**base.to_dict(), name: _plain(value)})
                except ConfigError as exc:
                    described = "value" if spec.kind == "fixed" else f"{spec.kind} value"
                    raise ConfigError(f"space.{name}: {described} {_plain(value)!r} is not valid: {exc}",
                                      field=f"space.{name}") from None

    def param_space(self) -> dict[str, Any]:
        """Ray Tune domains of the searched fields (fixed fields go into the base configs instead)."""
        return {name: spec.domain() for name, spec in sorted(self.searched.items())}

    def decode(self, sampled: Mapping[str, Any]) -> dict[str, Any]:
        """A trial's sampled config -> field values (JSON-string categories back to lists), plus the fixed
        fields. Keys that are not searched fields are ignored (Tune adds none, but be lenient)."""
        values: dict[str, Any] = {name: _plain(v) for name, v in self.fixed.items()}
        for name, spec in self.searched.items():
            if name not in sampled:
                raise ConfigError(f"space.{name}: the trial's config has no value for it (config: {dict(sampled)})")
            value = sampled[name]
            if spec.kind == "choice" and isinstance(value, str) and any(
                    isinstance(v, tuple) for v in spec.values):
                value = json.loads(value)
            values[name] = _plain(value)
        return values

    def configs(self, model: ModelConfig, train: TrainConfig,
                sampled: Mapping[str, Any]) -> tuple[ModelConfig, TrainConfig]:
        """The trial's ModelConfig / TrainConfig: base configs + decoded sample, validated."""
        return self.apply(model, train, self.decode(sampled))

    @staticmethod
    def apply(model: ModelConfig, train: TrainConfig,
              values: Mapping[str, Any]) -> tuple[ModelConfig, TrainConfig]:
        model_values = {k: _plain(v) for k, v in values.items() if k in MODEL_FIELDS}
        train_values = {k: _plain(v) for k, v in values.items() if k in TRAIN_FIELDS}
        return (ModelConfig.from_dict({**model.to_dict(), **model_values}, source="space (model fields)"),
                TrainConfig.from_dict({**train.to_dict(), **train_values}, source="space (train fields)"))


def format_params(values: Mapping[str, Any]) -> str:
    """Short one-line description of a trial's sampled values (plot legends, logs)."""
    short = {"embedding_dim": "emb", "conv_filters": "filt", "conv_kernel_size": "k", "dropout_rate": "drop",
             "hidden_dims": "mlp", "learning_rate": "lr", "batch_size": "bs", "weight_decay": "wd",
             "sparse_embeddings": "sparse", "embedding_l2": "emb_l2", "early_stopping_metric": "stop_on",
             "ema_decay": "ema"}
    parts = []
    for name, value in sorted(values.items()):
        if isinstance(value, float):
            value = f"{value:.3g}"
        elif isinstance(value, (list, tuple)):
            value = "-".join(str(v) for v in value)
        parts.append(f"{short.get(name, name)}={value}")
    return " ".join(parts)
