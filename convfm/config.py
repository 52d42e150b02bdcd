"""Frozen, validated configuration dataclasses and the one YAML loader that builds them.

Every config validates itself in ``__post_init__`` and raises ``ConfigError`` naming the field and the
allowed range. Configs travel to Ray workers as plain dicts (``to_dict``) and are rebuilt with ``from_dict``,
which rejects unknown keys.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Mapping, Type, TypeVar

import yaml

from convfm.errors import ConfigError

T = TypeVar("T", bound="BaseConfig")

EVENTS = ("view", "click", "save", "apply", "dismiss")


def _check(ok: bool, field: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{field}: {message}", field=field.split(".")[0])


@dataclasses.dataclass(frozen=True)
class BaseConfig:
    """Shared dict/JSON round trip for every stage's config."""

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))

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

    def save_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def load_json(cls: Type[T], path: str | Path) -> T:
        try:
            values = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"{path}: file not found") from None
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}: not valid JSON ({exc})") from None
        return cls.from_dict(values, source=str(path))


@dataclasses.dataclass(frozen=True)
class ModelConfig(BaseConfig):
    """ConvFM hyperparameters (the seed document's table)."""

    embedding_dim: int = 64
    conv_filters: int = 64
    conv_kernel_size: int = 3
    dropout_rate: float = 0.2
    hidden_dims: tuple[int, ...] = (128, 64, 32)
    sparse_embeddings: bool = False

    def __post_init__(self) -> None:
        _check(isinstance(self.embedding_dim, int) and 1 <= self.embedding_dim <= 1024,
               "embedding_dim", f"must be an integer in [1, 1024], got {self.embedding_dim!r}")
        _check(isinstance(self.conv_filters, int) and 1 <= self.conv_filters <= 1024,
               "conv_filters", f"must be an integer in [1, 1024], got {self.conv_filters!r}")
        _check(isinstance(self.conv_kernel_size, int) and 1 <= self.conv_kernel_size <= 15
               and self.conv_kernel_size % 2 == 1,
               "conv_kernel_size", f"must be an odd integer in [1, 15], got {self.conv_kernel_size!r}")
        _check(isinstance(self.dropout_rate, (int, float)) and 0.0 <= self.dropout_rate < 1.0,
               "dropout_rate", f"must be in [0, 1), got {self.dropout_rate!r}")
        dims = tuple(self.hidden_dims)
        _check(len(dims) >= 1 and all(isinstance(d, int) and 1 <= d <= 8192 for d in dims),
               "hidden_dims", f"must be a non-empty list of integers in [1, 8192], got {self.hidden_dims!r}")
        object.__setattr__(self, "hidden_dims", dims)
        _check(isinstance(self.sparse_embeddings, bool),
               "sparse_embeddings", f"must be true or false, got {self.sparse_embeddings!r}")


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
    # canonical name -> name in the user's file, per table: {"jobs": {"job_id": "id"}}
    columns: Mapping[str, Mapping[str, str]] = dataclasses.field(default_factory=dict)
    positive_events: tuple[str, ...] = ("apply", "save")
    negative_events: tuple[str, ...] = ("view", "click", "dismiss")
    default_event: str = "apply"
    negative_ratio: int = 0
    split: str = "time"
    valid_fraction: float = 0.1
    test_fraction: float = 0.1
    seed: int = 0
    # kind "table" only
    label: str = "label"
    categorical: tuple[str, ...] = ()
    multi_valued: tuple[str, ...] = ()
    numeric: tuple[str, ...] = ()
    separator: str = ";"

    def __post_init__(self) -> None:
        _check(self.kind in ("jobs", "table"), "kind", f"must be 'jobs' or 'table', got {self.kind!r}")
        _check(self.split in ("time", "random"), "split", f"must be 'time' or 'random', got {self.split!r}")
        for name in ("positive_events", "negative_events"):
            events = tuple(getattr(self, name))
            object.__setattr__(self, name, events)
            bad = [e for e in events if e not in EVENTS]
            _check(not bad, name, f"unknown event(s) {bad}; allowed: {list(EVENTS)}")
        _check(bool(self.positive_events), "positive_events", "must name at least one event")
        overlap = set(self.positive_events) & set(self.negative_events)
        _check(not overlap, "negative_events", f"{sorted(overlap)} also listed as positive")
        _check(self.default_event in EVENTS, "default_event",
               f"must be one of {list(EVENTS)}, got {self.default_event!r}")
        _check(isinstance(self.negative_ratio, int) and 0 <= self.negative_ratio <= 100,
               "negative_ratio", f"must be an integer in [0, 100], got {self.negative_ratio!r}")
        for name in ("valid_fraction", "test_fraction"):
            value = getattr(self, name)
            _check(isinstance(value, (int, float)) and 0.0 <= value < 0.5, name,
                   f"must be in [0, 0.5), got {value!r}")
        for name in ("categorical", "multi_valued", "numeric"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if self.kind == "table":
            fields = self.categorical + self.multi_valued + self.numeric
            _check(bool(fields), "categorical",
                   "a table needs at least one field in categorical, multi_valued or numeric")
            dupes = sorted({f for f in fields if fields.count(f) > 1})
            _check(not dupes, "categorical", f"field(s) {dupes} listed more than once")
            _check(self.label not in fields, "label", f"{self.label!r} is also listed as a field")
        _check(isinstance(self.columns, Mapping), "columns", "must map table name -> {canonical: actual}")
        for table, mapping in self.columns.items():
            _check(table in ("jobs", "users", "interactions"), "columns",
                   f"unknown table {table!r}; allowed: jobs, users, interactions")
            _check(isinstance(mapping, Mapping), f"columns.{table}", "must map canonical -> actual name")


def as_config(value: Any, cls: Type[T], section: str) -> T:
    """``value`` as a ``cls``: an instance as is, None as the defaults, a mapping validated by ``from_dict``."""
    if isinstance(value, cls):
        return value
    if value is None:
        return cls()
    if isinstance(value, Mapping):
        return cls.from_dict(value, source=section)
    raise ConfigError(f"{section}: expected a {cls.__name__} or a mapping, got {type(value).__name__}")


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML file whose top level is a mapping; ConfigError names the file (and line) otherwise."""
    path = Path(path)
    try:
        document = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, not a config file") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not valid UTF-8 (byte offset {exc.start})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {_yaml_problem(exc)}") from None
    if not isinstance(document, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(document).__name__}")
    return document


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """One line (PyYAML's own message spans several): the problem and where."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else problem


def yaml_key_lines(path: str | Path, section: str | None = None) -> dict[str, int]:
    """1-based line of each key of the file's top-level mapping, or of its ``section`` mapping ({} if unknown)."""
    try:
        node = yaml.compose(Path(path).read_text(), Loader=yaml.SafeLoader)
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return {}
    if section is not None and isinstance(node, yaml.MappingNode):
        node = next((value for key, value in node.value if getattr(key, "value", None) == section), None)
    if not isinstance(node, yaml.MappingNode):
        return {}
    return {str(key.value): key.start_mark.line + 1 for key, _ in node.value if isinstance(key, yaml.ScalarNode)}


def config_from_yaml(cls: Type[T], values: Mapping[str, Any], path: str | Path, section: str | None = None) -> T:
    """``cls.from_dict(values)`` for values read from ``path`` (its ``section``): errors name the file, the
    section and the line of the offending key, e.g. ``train.yaml [train] line 7: learning_rate: ...``."""
    where = f"{path}" + (f" [{section}]" if section else "")
    try:
        return cls.from_dict(values, source=where)
    except ConfigError as exc:
        line = yaml_key_lines(path, section).get(exc.field) if exc.field else None
        if line is None:
            raise
        message = str(exc)
        message = f"{where} line {line}{message[len(where):]}" if message.startswith(where) else message
        raise ConfigError(message, field=exc.field) from None


def load_yaml_config(path: str | Path, section: str, cls: Type[T]) -> T:
    """Read ``section`` of a YAML file into ``cls``; a missing section means all defaults."""
    values = read_yaml(path).get(section) or {}
    if not isinstance(values, dict):
        line = yaml_key_lines(path).get(section)
        raise ConfigError(f"{path}{f' line {line}' if line else ''}: section {section!r} must be a mapping",
                          field=section)
    return config_from_yaml(cls, values, path, section)


# Ray placement group strategies: PACK fills nodes in turn, SPREAD prefers one worker per node, STRICT_*
# require it (STRICT_SPREAD fails to schedule when there are fewer nodes than workers).
PLACEMENT_STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")


@dataclasses.dataclass(frozen=True)
class TrainConfig(BaseConfig):
    """Optimisation, early stopping, evaluation protocol and scaling of one training run."""

    learning_rate: float = 4e-3  # with batch 1024; measured in benchmarks/batch_size.py (README)
    weight_decay: float = 0.0
    batch_size: int = 1024
    num_epochs: int = 50
    patience: int = 10
    min_delta: float = 0.0  # a validation AUC gain below this does not reset early stopping's patience
    lr_schedule: str = "none"
    seed: int = 0
    num_workers: int = 1
    cpus_per_worker: float = 1.0  # Ray Train sets a worker's torch threads to its CPUs
    placement_strategy: str = "PACK"  # Ray placement group strategy for the worker group
    use_gpu: bool = False
    use_amp: bool = True
    eval_negatives: int = 99
    ranking_k: int = 10
    keep_checkpoints: int = 2
    max_failures: int = 1

    def __post_init__(self) -> None:
        _check(isinstance(self.learning_rate, (int, float)) and 0.0 < self.learning_rate <= 1.0,
               "learning_rate", f"must be in (0, 1], got {self.learning_rate!r}")
        _check(isinstance(self.weight_decay, (int, float)) and 0.0 <= self.weight_decay <= 1.0,
               "weight_decay", f"must be in [0, 1], got {self.weight_decay!r}")
        _check(isinstance(self.batch_size, int) and 1 <= self.batch_size <= 1_048_576,
               "batch_size", f"must be an integer in [1, 1048576], got {self.batch_size!r}")
        _check(isinstance(self.num_epochs, int) and 1 <= self.num_epochs <= 10_000,
               "num_epochs", f"must be an integer in [1, 10000], got {self.num_epochs!r}")
        _check(isinstance(self.patience, int) and 1 <= self.patience <= 10_000,
               "patience", f"must be an integer in [1, 10000], got {self.patience!r}")
        _check(isinstance(self.min_delta, (int, float)) and 0.0 <= self.min_delta <= 1.0,
               "min_delta", f"must be in [0, 1], got {self.min_delta!r}")
        _check(self.lr_schedule in ("none", "cosine", "plateau"), "lr_schedule",
               f"must be 'none', 'cosine' or 'plateau', got {self.lr_schedule!r}")
        _check(isinstance(self.seed, int), "seed", f"must be an integer, got {self.seed!r}")
        _check(isinstance(self.num_workers, int) and 1 <= self.num_workers <= 1024,
               "num_workers", f"must be an integer in [1, 1024], got {self.num_workers!r}")
        _check(isinstance(self.cpus_per_worker, (int, float)) and not isinstance(self.cpus_per_worker, bool)
               and 0.0 < self.cpus_per_worker <= 1024.0, "cpus_per_worker",
               f"must be a number in (0, 1024], got {self.cpus_per_worker!r}")
        _check(self.placement_strategy in PLACEMENT_STRATEGIES, "placement_strategy",
               f"must be one of {', '.join(PLACEMENT_STRATEGIES)}, got {self.placement_strategy!r}")
        _check(isinstance(self.use_gpu, bool), "use_gpu", f"must be true or false, got {self.use_gpu!r}")
        _check(isinstance(self.use_amp, bool), "use_amp", f"must be true or false, got {self.use_amp!r}")
        _check(isinstance(self.eval_negatives, int) and 1 <= self.eval_negatives <= 100_000,
               "eval_negatives", f"must be an integer in [1, 100000], got {self.eval_negatives!r}")
        _check(isinstance(self.ranking_k, int) and 1 <= self.ranking_k <= 1000,
               "ranking_k", f"must be an integer in [1, 1000], got {self.ranking_k!r}")
        _check(isinstance(self.keep_checkpoints, int) and 1 <= self.keep_checkpoints <= 100,
               "keep_checkpoints", f"must be an integer in [1, 100], got {self.keep_checkpoints!r}")
        _check(isinstance(self.max_failures, int) and 0 <= self.max_failures <= 100,
               "max_failures", f"must be an integer in [0, 100], got {self.max_failures!r}")
