"""Frozen, validated configuration dataclasses.

Every config validates itself in ``__post_init__`` with the checks of ``convfm.validate`` (``ConfigError``
naming the field and the allowed range) and is read from YAML by ``convfm.yamlfile``. Configs travel to Ray
workers as plain dicts (``to_dict``) and are rebuilt with ``from_dict``, which rejects unknown keys.
"""
from __future__ import annotations

import dataclasses
import datetime
from pathlib import Path
from typing import Any, Mapping, Optional, Type, TypeVar

from convfm.errors import ConfigError
from convfm.jsonfile import read_json, to_plain, write_json_atomic
from convfm.validate import (check_bool, check_choice, check_int, check_int_list, check_list, check_number,
                             require)
from convfm.yamlfile import ConfigFile

T = TypeVar("T", bound="BaseConfig")

EVENTS = ("view", "click", "save", "apply", "dismiss")
SPLITS = ("time", "global_time", "random")
NEGATIVE_SAMPLING = ("live", "uniform", "popularity")


@dataclasses.dataclass(frozen=True)
class BaseConfig:
    """Shared dict/JSON round trip for every stage's config."""

    def to_dict(self) -> dict[str, Any]:
        return to_plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls: Type[T], values: Mapping[str, Any], source: str = "") -> T:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        where = f"{source}: " if source else ""
        if unknown:
            raise ConfigError(
                f"{where}unknown key(s) {unknown} for {cls.__name__}; allowed: {sorted(known)}", field=unknown[0]
            )
        kwargs = {}
        for f in dataclasses.fields(cls):
            if f.name in values:
                value = values[f.name]
                if isinstance(value, list):
                    value = tuple(value)
                kwargs[f.name] = value
        try:
            return cls(**kwargs)
        except ConfigError as exc:
            raise ConfigError(f"{where}{exc}", field=exc.field) from None
        except TypeError as exc:
            raise ConfigError(f"{where}{cls.__name__}: {exc}") from None

    def changed_from(self, other: "BaseConfig") -> list[str]:
        """The fields whose values differ from ``other``'s (a config of the same class)."""
        theirs = other.to_dict()
        return [name for name, value in self.to_dict().items() if theirs.get(name) != value]

    def save_json(self, path: str | Path) -> None:
        write_json_atomic(path, self.to_dict())

    @classmethod
    def load_json(cls: Type[T], path: str | Path) -> T:
        return cls.from_dict(read_json(path, f"{cls.__name__} file"), source=str(path))


@dataclasses.dataclass(frozen=True)
class ModelConfig(BaseConfig):
    """ConvFM hyperparameters (the seed document's table, except the smaller MLP)."""

    embedding_dim: int = 64
    conv_filters: int = 64
    conv_kernel_size: int = 3
    dropout_rate: float = 0.2
    # The seed's (128, 64, 32) scored the same within seed noise on the synthetic market (README "Model quality")
    # at 3x the multiply-adds per (user, job) pair that ranking the catalog pays (docs/SERVING.md).
    hidden_dims: tuple[int, ...] = (64, 32)
    sparse_embeddings: bool = False
    # Training only: each user id, job id and history job id reads the unknown id's row with this probability,
    # so the model learns to score the ids it has never seen (most users and jobs of a later period); 0.8 rather
    # than 0.5: lower validation and test log loss on the default synthetic market (two seeds; README quality)
    id_dropout: float = 0.8
    # A learned logit term on the overlap of the user's and the job's skill lists (Jaccard, log1p(shared count)):
    # a pair feature the per-side embeddings miss (README "Model quality"). Models saved before it have none.
    skill_match: bool = True
    # Learned logit terms on what the user's recent jobs share with the job: the share of their skills, companies
    # and locations the job has (and log1p of the count), with history fields. Models saved before it have none.
    history_match: bool = True
    # Learned logit terms on whether the job is in the user's location and at their experience level (fields of
    # one vocabulary on both sides): equality that low-rank embedding products learn only for frequent values.
    # Models saved before it have none.
    profile_match: bool = True

    def __post_init__(self) -> None:
        check_bool(self.skill_match, "skill_match")
        check_bool(self.history_match, "history_match")
        check_bool(self.profile_match, "profile_match")
        check_int(self.embedding_dim, "embedding_dim", 1, 1024)
        check_int(self.conv_filters, "conv_filters", 1, 1024)
        check_int(self.conv_kernel_size, "conv_kernel_size", 1, 15, odd=True)
        check_number(self.dropout_rate, "dropout_rate", 0, 1, high_open=True)
        object.__setattr__(self, "hidden_dims", check_int_list(self.hidden_dims, "hidden_dims", 1, 8192))
        check_bool(self.sparse_embeddings, "sparse_embeddings")
        check_number(self.id_dropout, "id_dropout", 0, 1, high_open=True)


@dataclasses.dataclass(frozen=True)
class DataConfig(BaseConfig):
    """Where the data is and how examples, labels and splits are made.

    kind "jobs": ``path`` is a directory with jobs/users/interactions files (.csv or .parquet).
    kind "table": ``path`` is one labelled file, or a directory with train/valid/test files; ``label`` and the
    field lists describe its columns.
    """

    kind: str = "jobs"
    path: str = "data"
    jobs_file: str = "jobs"
    users_file: str = "users"
    interactions_file: str = "interactions"
    # a feedback event log (a live store's events/ folder, path or URI; convfm.store.event_log) read as more
    # interactions, after those of interactions_file (which may then be absent)
    events: Optional[str] = None
    # canonical name -> name in the user's file, per table: {"jobs": {"job_id": "id"}}
    columns: Mapping[str, Mapping[str, str]] = dataclasses.field(default_factory=dict)
    # kind "jobs": a job board's own columns beyond the canonical ones, as fields: {jobs: {industry: category,
    # tags: list}, users: {discipline: category}} (convfm.features.extra_fields)
    extra_columns: Mapping[str, Mapping[str, str]] = dataclasses.field(default_factory=dict)
    positive_events: tuple[str, ...] = ("apply", "save")
    negative_events: tuple[str, ...] = ("view", "click", "dismiss")
    default_event: str = "apply"
    # sampled negatives per positive (how: negative_sampling): ranking the live catalog needs them, and a log
    # of positives only (views, applies) has no other negatives
    negative_ratio: int = 2
    # sampled negatives per positive in the training split alone (null: negative_ratio; at least negative_ratio):
    # the extra ones are a second draw kept only beside training examples, so validation and test, and every
    # metric read on them, stay those of negative_ratio
    train_negative_ratio: Optional[int] = None
    # how training negatives are drawn (convfm.data.negatives): jobs live at the positive's time, any catalog
    # job, or jobs in proportion to their interactions before the positive's time
    negative_sampling: str = "live"
    # days a job stays live after posted_at when it has no expires_at (None: until expires_at, else forever)
    job_lifetime_days: Optional[float] = 30.0
    # kind "jobs": features read at each example's time (convfm.features.context): the user's last
    # history_length positive jobs before it (0: no history fields) and the job's age (with a job calendar)
    history_length: int = 20
    recency: bool = True
    # ... and the job's popularity: its positives in the popularity_days before it, in count buckets (needs
    # recency; null: no popularity field)
    popularity_days: Optional[float] = None
    split: str = "time"
    valid_fraction: float = 0.1
    test_fraction: float = 0.1
    # split "global_time": ISO dates that start the valid and test periods (default: the time quantiles that
    # leave valid_fraction / test_fraction of the examples after them)
    valid_start: Optional[str] = None
    test_start: Optional[str] = None
    seed: int = 0
    # kind "table" only
    label: str = "label"
    categorical: tuple[str, ...] = ()
    multi_valued: tuple[str, ...] = ()
    numeric: tuple[str, ...] = ()
    separator: str = ";"

    def __post_init__(self) -> None:
        check_choice(self.kind, "kind", ("jobs", "table"))
        require(self.events is None or (isinstance(self.events, str) and bool(self.events.strip())
                                        and self.kind == "jobs"), "events",
                f"must be an event log path or URI (kind jobs only), or null, got {self.events!r}")
        check_choice(self.split, "split", SPLITS)
        check_choice(self.negative_sampling, "negative_sampling", NEGATIVE_SAMPLING)
        for name in ("valid_start", "test_start"):
            object.__setattr__(self, name, _iso_date(getattr(self, name), name))
            require(getattr(self, name) is None or self.split == "global_time", name,
                    f"only used with split: global_time, got split {self.split!r}")
        if self.valid_start is not None and self.test_start is not None:
            require(self.test_start > self.valid_start, "test_start",
                    f"must be after valid_start {self.valid_start}, got {self.test_start}")
        for name in ("positive_events", "negative_events"):
            events = check_list(getattr(self, name), name, "events")
            object.__setattr__(self, name, events)
            bad = [e for e in events if e not in EVENTS]
            require(not bad, name, f"unknown event(s) {bad}; allowed: {list(EVENTS)}")
        require(bool(self.positive_events), "positive_events", "must name at least one event")
        overlap = set(self.positive_events) & set(self.negative_events)
        require(not overlap, "negative_events", f"{sorted(overlap)} also listed as positive")
        check_choice(self.default_event, "default_event", EVENTS)
        check_int(self.negative_ratio, "negative_ratio", 0, 100)
        if self.train_negative_ratio is not None:
            check_int(self.train_negative_ratio, "train_negative_ratio", self.negative_ratio, 100,
                      low_from="negative_ratio")
            require(self.kind == "jobs", "train_negative_ratio", "only for kind jobs (a table brings its negatives)")
        check_int(self.history_length, "history_length", 0, 200)
        check_bool(self.recency, "recency")
        if self.popularity_days is not None:
            check_number(self.popularity_days, "popularity_days", 0, 365, low_open=True)
            require(self.recency, "popularity_days", "needs recency: true (both read the job's calendar)")
        if self.job_lifetime_days is not None:
            check_number(self.job_lifetime_days, "job_lifetime_days", 0, 3650, low_open=True)
        for name in ("valid_fraction", "test_fraction"):
            check_number(getattr(self, name), name, 0, 0.5, high_open=True)
        check_int(self.seed, "seed", 0)  # numpy's generators refuse a negative seed (after Ray started)
        for name in ("categorical", "multi_valued", "numeric"):
            object.__setattr__(self, name, check_list(getattr(self, name), name, "column names"))
        if self.kind == "table":
            fields = self.categorical + self.multi_valued + self.numeric
            require(bool(fields), "categorical",
                    "a table needs at least one field in categorical, multi_valued or numeric")
            dupes = sorted({f for f in fields if fields.count(f) > 1})
            require(not dupes, "categorical", f"field(s) {dupes} listed more than once")
            require(self.label not in fields, "label", f"{self.label!r} is also listed as a field")
        require(isinstance(self.columns, Mapping), "columns", "must map table name -> {canonical: actual}")
        for table, mapping in self.columns.items():
            require(table in ("jobs", "users", "interactions"), f"columns.{table}",
                    f"unknown table {table!r}; allowed: jobs, users, interactions")
            require(isinstance(mapping, Mapping), f"columns.{table}", "must map canonical -> actual name")
        from convfm.features.extra_fields import check_extra_columns  # pandas: only once a data config is made

        object.__setattr__(self, "extra_columns", check_extra_columns(self.extra_columns, self.columns))
        require(not self.extra_columns or self.kind == "jobs", "extra_columns",
                "only for kind jobs (a table lists its fields in categorical, multi_valued, numeric)")


def _iso_date(value: Any, field: str) -> Optional[str]:
    """An ISO date/time (string, or the date YAML reads from an unquoted one) as its canonical ISO string, so
    configs stay JSON and compare in time order; None stays None."""
    if value is None:
        return None
    when = value
    if isinstance(value, str):
        try:
            when = datetime.datetime.fromisoformat(value.strip())
        except ValueError:
            require(False, field, f"must be an ISO date such as 2024-03-01 or 2024-03-01T12:00:00, got {value!r}")
    require(isinstance(when, datetime.date), field, f"must be an ISO date such as 2024-03-01, got {value!r}")
    if not isinstance(when, datetime.datetime):
        when = datetime.datetime.combine(when, datetime.time())
    require(when.tzinfo is None, field, f"must be a date/time without a time zone (UTC), got {value!r}")
    require(datetime.datetime(1970, 1, 1) <= when <= datetime.datetime(2100, 1, 1), field,
            f"must be between 1970-01-01 and 2100-01-01, got {value!r}")
    return when.isoformat()


def as_config(value: Any, cls: Type[T], section: str) -> T:
    """``value`` as a ``cls``: an instance as is, None as the defaults, a mapping validated by ``from_dict``."""
    if isinstance(value, cls):
        return value
    if value is None:
        return cls()
    if isinstance(value, Mapping):
        return cls.from_dict(value, source=section)
    raise ConfigError(f"{section}: expected a {cls.__name__} or a mapping, got {type(value).__name__}")


def load_yaml_config(path: str | Path, section: str, cls: Type[T]) -> T:
    """Read ``section`` of a YAML file into ``cls``; a missing section means all defaults."""
    return ConfigFile(path).load(cls, section)


# Ray placement group strategies: PACK fills nodes in turn, SPREAD prefers one worker per node, STRICT_*
# require it (STRICT_SPREAD fails to schedule when there are fewer nodes than workers).
PLACEMENT_STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")
EVAL_PROTOCOLS = ("live", "sampled")  # ranking protocols of convfm.evaluation.report
# validation metric early stopping follows -> its direction; a run's history records it as val_<metric>
EARLY_STOPPING_METRICS = {"roc_auc": "max", "log_loss": "min"}
# what every epoch reports of the model on the validation split (convfm.training.in_process.epoch_record), as
# val_<name>, that a search may rank trials on -> its direction; kind jobs adds the ranking metrics val_mrr and
# val_<name>@<ranking_k> of RANKING_AT_K
VALIDATION_METRICS = {"loss": "min", "log_loss": "min", "roc_auc": "max", "accuracy": "max", "precision": "max",
                      "recall": "max", "f1": "max", "mrr": "max"}
RANKING_AT_K = ("hr", "ndcg")


@dataclasses.dataclass(frozen=True)
class TrainConfig(BaseConfig):
    """Optimisation, early stopping, evaluation protocol and scaling of one training run."""

    learning_rate: float = 4e-3  # with batch 1024; measured in benchmarks/batch_size.py (README)
    # AdamW decay of every dense parameter but the scale-invariant ones (build_optimizer), and early stopping
    # on log loss with patience 5: with the former defaults (0, roc_auc, 10) the kept model's validation log
    # loss was 2-2.5x its best on the synthetic markets; benchmarks/overfitting.py (README)
    weight_decay: float = 5.0
    # weight_decay holds for a training set of up to this many examples; a larger one of N gets weight_decay * this
    # / N, so the decay per epoch stays the same while each epoch brings more data (a prior weighs less against
    # more evidence). 5 on the 204k-row app log cost ROC-AUC 0.930 against 0.955 at 1 (benchmarks/overfitting.py,
    # README "Overfitting"); None: weight_decay at any size
    weight_decay_examples: Optional[int] = 60_000
    # L2 on the embedding rows and first-order weights each batch reads (convfm.model.embedding), per example
    embedding_l2: float = 0.0
    # validation, early stopping and the kept model use an exponential moving average of the weights with this
    # decay per optimizer step (0: the raw weights); convfm.training.averaging, README "Model quality"
    ema_decay: float = 0.99
    batch_size: int = 1024
    num_epochs: int = 50
    patience: int = 5
    early_stopping_metric: str = "log_loss"  # the validation metric of early stopping and the kept model
    min_delta: float = 0.0  # a gain in early_stopping_metric below this does not reset patience
    lr_schedule: str = "none"
    seed: int = 0
    num_workers: int = 1
    cpus_per_worker: float = 1.0  # Ray Train sets a worker's torch threads to its CPUs
    placement_strategy: str = "PACK"  # Ray placement group strategy for the worker group
    use_gpu: bool = False
    use_amp: bool = True
    eval_protocol: str = "live"  # ranking protocol of validation and `convfm evaluate`: live or sampled
    eval_negatives: int = 99  # sampled protocol: unseen jobs per held-out positive
    eval_max_events: int = 1000  # live protocol, per-epoch validation: positives ranked (a seeded sample)
    ranking_k: int = 10
    keep_checkpoints: int = 2
    max_failures: int = 1
    # warm start (convfm.training.warm_start): a published model to start from, a registry entry (its latest),
    # one of its versions or a model directory; a run records the version it resolved to
    init_from: Optional[str] = None

    def __post_init__(self) -> None:
        check_number(self.learning_rate, "learning_rate", 0, 1, low_open=True)
        check_number(self.weight_decay, "weight_decay", 0, 100)
        require(self.learning_rate * self.weight_decay < 1, "weight_decay", f"times learning_rate must stay below 1 "
                f"(AdamW scales the weights by 1 - learning_rate * weight_decay each step), got {self.weight_decay!r} "
                f"with learning_rate {self.learning_rate!r}")
        if self.weight_decay_examples is not None:
            check_int(self.weight_decay_examples, "weight_decay_examples", 1, 10**12)
        check_number(self.embedding_l2, "embedding_l2", 0, 1)
        check_number(self.ema_decay, "ema_decay", 0, 1, high_open=True)
        check_int(self.batch_size, "batch_size", 1, 1_048_576)
        check_int(self.num_epochs, "num_epochs", 1, 10_000)
        check_int(self.patience, "patience", 1, 10_000)
        check_choice(self.early_stopping_metric, "early_stopping_metric", tuple(EARLY_STOPPING_METRICS))
        check_number(self.min_delta, "min_delta", 0, 1)
        check_choice(self.lr_schedule, "lr_schedule", ("none", "cosine", "plateau"))
        check_int(self.seed, "seed", 0)
        check_int(self.num_workers, "num_workers", 1, 1024)
        check_number(self.cpus_per_worker, "cpus_per_worker", 0, 1024, low_open=True)
        check_choice(self.placement_strategy, "placement_strategy", PLACEMENT_STRATEGIES)
        check_bool(self.use_gpu, "use_gpu")
        check_bool(self.use_amp, "use_amp")
        check_choice(self.eval_protocol, "eval_protocol", EVAL_PROTOCOLS)
        check_int(self.eval_negatives, "eval_negatives", 1, 100_000)
        check_int(self.eval_max_events, "eval_max_events", 1, 10_000_000)
        check_int(self.ranking_k, "ranking_k", 1, 1000)
        check_int(self.keep_checkpoints, "keep_checkpoints", 1, 100)
        check_int(self.max_failures, "max_failures", 0, 100)
        require(self.init_from is None or (isinstance(self.init_from, str) and bool(self.init_from.strip())),
                "init_from", f"must be a model path or URI, got {self.init_from!r}")

    def weight_decay_for(self, train_examples: int) -> float:
        """The AdamW decay a run over ``train_examples`` training examples applies (``weight_decay_examples``)."""
        if self.weight_decay_examples is None or train_examples <= self.weight_decay_examples:
            return self.weight_decay
        return self.weight_decay * self.weight_decay_examples / train_examples

    @property
    def early_stopping(self) -> tuple[str, str]:
        """(history key, "max" or "min") of ``early_stopping_metric``: what the stopper, the kept checkpoints
        and the exported best model all follow."""
        return f"val_{self.early_stopping_metric}", EARLY_STOPPING_METRICS[self.early_stopping_metric]
