"""Load and validate the job market (jobs, users, interactions) or a generic labelled table; make examples.

Every problem with an input file raises ``DataValidationError`` naming the file, the column and the first bad
1-based data row (the header is not counted; reading and column typing live in ``convfm.data.readers``). Everything is
vectorised pandas/numpy.
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Mapping, Optional

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from convfm.config import EVENTS, DataConfig
from convfm.errors import ConfigError, DataValidationError
from convfm.data.readers import (  # noqa: F401  (read_frame, resolve_path: re-exported)
    SUFFIXES, cell_error, first_true, order_key, read_frame, read_located, resolve_path, to_datetimes, to_numbers,
)
from convfm.data.schema import DATETIME, ID, INTERACTIONS, JOBS, NUMBER, USERS, TableSchema

logger = logging.getLogger(__name__)

_LABELS = {"0": 0.0, "1": 1.0, "0.0": 0.0, "1.0": 1.0, "false": 0.0, "true": 1.0}
_MAX_SAMPLING_ROUNDS = 20


@dataclasses.dataclass(frozen=True, eq=False)
class JobMarket:
    """Validated tables with canonical columns; ``source`` maps table name -> file path (for messages)."""

    jobs: pd.DataFrame
    users: Optional[pd.DataFrame]
    interactions: pd.DataFrame
    source: Mapping[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True, eq=False)
class Splits:
    """Train/valid/test frames of examples (or table rows), each with a float32 ``label`` column."""

    train: pd.DataFrame
    valid: pd.DataFrame
    test: pd.DataFrame


# ------------------------------------------------------------------------------------------ schema tables
def _index_in(values: pd.Series, unique: pd.Series) -> np.ndarray:
    """Position of each value in ``unique``, -1 when absent (pyarrow: pandas loops in Python on arrow strings)."""
    found = pc.index_in(pa.array(values.array), value_set=pa.array(unique.array))
    return found.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)


def _load_schema_table(path: Path, schema: TableSchema, mapping: Mapping[str, str]) -> tuple[pd.DataFrame, Path]:
    """Read one table, rename to canonical columns, type them by kind; a table's own id must be unique."""
    unknown = sorted(set(mapping) - set(schema.names))
    if unknown:
        raise ConfigError(f"columns.{schema.name}: unknown canonical column(s) {unknown}; "
                          f"allowed: {list(schema.names)}")
    source = {c: str(mapping.get(c, c)) for c in schema.names}
    frame, path = read_located(path, [source[c] for c in schema.of_kind(ID)])
    for name in schema.names:  # a required column, or one the mapping names explicitly, must exist
        if source[name] not in frame.columns and (name in schema.required or name in mapping):
            mapped = f" (canonical {name!r})" if source[name] != name else ""
            raise DataValidationError(f"{path}: missing {'required ' * (name in schema.required)}column "
                                      f"{source[name]!r}{mapped}; columns in the file: {list(frame.columns)}")
    out = pd.DataFrame(index=frame.index)
    for column in (c for c in schema.columns if source[c.name] in frame.columns):
        name, actual, values = column.name, source[column.name], frame[source[column.name]]
        if column.kind == ID and values.isna().any():
            raise cell_error(path, actual, first_true(values.isna()), "empty id")
        if column.kind == ID:
            out[name] = values
        elif column.kind == NUMBER:
            out[name] = to_numbers(values, path, actual)
        elif column.kind == DATETIME:
            out[name] = (order_key if schema is INTERACTIONS else to_datetimes)(values, path, actual)
        else:
            out[name] = values.astype("str").fillna("")
    if schema is not INTERACTIONS:
        _check_unique(out[schema.names[0]], path, source[schema.names[0]])
    extras = [c for c in frame.columns if c not in set(source.values())]
    if extras:
        logger.warning("%s: ignoring extra column(s) %s (known %s columns: %s)",
                       path, extras, schema.name, list(schema.names))
        out = pd.concat([out, frame[[c for c in extras if c not in out.columns]]], axis=1)
    return out, path


def _check_unique(ids: pd.Series, path: Path, column: str) -> None:
    duplicated = ids.duplicated()
    if duplicated.any():
        later = first_true(duplicated)
        earlier = first_true(ids.to_numpy() == ids.iloc[later])
        raise DataValidationError(f"{path}: column {column!r}: duplicate id {ids.iloc[later]!r} in rows "
                                  f"{earlier + 1} and {later + 1}")


# ------------------------------------------------------------------------------------------ the job market
def load_job_market(config: DataConfig) -> JobMarket:
    """Read and validate ``config.path``/{jobs, users (optional), interactions} with ``config.columns`` applied.

    No event column: every row is ``config.default_event``; no timestamp column: row order is time order.
    Interactions naming jobs (or users) absent from their table are kept, with a warning.
    """
    root = Path(config.path)
    if not root.is_dir():
        raise DataValidationError(f"{root}: data directory not found")
    tables: dict[str, pd.DataFrame] = {}
    source: dict[str, str] = {}
    files = ((JOBS, config.jobs_file), (USERS, config.users_file), (INTERACTIONS, config.interactions_file))
    for schema, name in files:
        candidates = [root / name, *(root / f"{name}{suffix}" for suffix in SUFFIXES)]
        if schema is USERS and not any(p.is_file() for p in candidates):
            logger.info("%s: no users file; users are known only by their interactions", root / name)
            continue
        frame, path = _load_schema_table(root / name, schema, config.columns.get(schema.name, {}))
        tables[schema.name], source[schema.name] = frame, str(path)
    interactions = tables["interactions"]
    _set_events(interactions, source["interactions"], config)
    if "timestamp" not in interactions.columns:
        interactions["timestamp"] = np.arange(len(interactions), dtype=np.int64)
    for name, key in (("jobs", "job_id"), ("users", "user_id")):
        unknown = _index_in(interactions[key], tables[name][key]) < 0 if name in tables else None
        if unknown is not None and unknown.any():
            logger.warning("%s: %d interaction(s) name %s(s) absent from %s (e.g. %s); their features will be "
                           "unknown", source["interactions"], int(unknown.sum()), key, source[name],
                           pd.unique(interactions[key][unknown])[:3].tolist())
    return JobMarket(jobs=tables["jobs"], users=tables.get("users"), interactions=interactions, source=source)


def _set_events(interactions: pd.DataFrame, path: str, config: DataConfig) -> None:
    if "event" not in interactions.columns:
        interactions["event"] = pd.Series(config.default_event, index=interactions.index, dtype="str")
        return
    events = interactions["event"].str.strip().str.lower()
    bad = ~events.isin(EVENTS)
    if bad.any():
        i = first_true(bad)
        value, stripped = interactions["event"].iloc[i], events.iloc[i]
        what = "empty event" if pd.isna(stripped) or stripped == "" else f"unknown event {value!r}"
        column = config.columns.get("interactions", {}).get("event", "event")
        raise cell_error(Path(path), column, i, f"{what}; allowed: {list(EVENTS)}")
    interactions["event"] = events


# -------------------------------------------------------------------------------------------- examples
def build_examples(market: JobMarket, config: DataConfig, rng_seed: Optional[int] = None) -> pd.DataFrame:
    """One row per (user, job): columns user_id, job_id, label (float32), timestamp (int64 order key).

    A pair is positive if it has any positive event, else negative if it has any negative event; other events
    are dropped. The timestamp is that of the pair's latest event of the deciding kind. With
    ``negative_ratio`` > 0, each positive adds that many catalog jobs the user never interacted with, as
    negatives at the positive's timestamp (seeded by ``rng_seed``, default ``config.seed``).
    """
    inter = market.interactions
    user_codes, user_names = pd.factorize(inter["user_id"])
    catalog = pd.Index(market.jobs["job_id"])
    job_codes = _index_in(inter["job_id"], market.jobs["job_id"])
    job_names = catalog
    outside = job_codes < 0
    if outside.any():
        extra_codes, extra_names = pd.factorize(inter["job_id"][outside])
        job_codes[outside] = len(catalog) + extra_codes
        job_names = catalog.append(pd.Index(extra_names))
    n_jobs = np.int64(len(job_names))
    keys = user_codes.astype(np.int64) * n_jobs + job_codes

    positive = inter["event"].isin(config.positive_events).to_numpy()
    kept = positive | inter["event"].isin(config.negative_events).to_numpy()
    k, cls, ts = keys[kept], positive[kept].astype(np.int8), inter["timestamp"].to_numpy(np.int64)[kept]
    order = np.lexsort((ts, cls, k))  # by pair, negatives before positives, then time: the last row decides
    last = order[np.r_[k[order][1:] != k[order][:-1], True]] if len(order) else order
    pair_keys, labels, times = k[last], cls[last].astype(np.float32), ts[last]

    if config.negative_ratio > 0 and labels.any():
        seed = config.seed if rng_seed is None else rng_seed
        extra_keys, extra_times = _sample_negatives(pair_keys[labels == 1], times[labels == 1], np.sort(keys),
                                                    len(catalog), n_jobs, config.negative_ratio, seed)
        pair_keys = np.concatenate([pair_keys, extra_keys])
        times = np.concatenate([times, extra_times])
        labels = np.concatenate([labels, np.zeros(len(extra_keys), np.float32)])

    users, jobs = pair_keys // n_jobs, pair_keys % n_jobs
    order = np.lexsort((jobs, users, times))
    return pd.DataFrame({
        "user_id": pd.Series(user_names.take(users[order]), dtype="str"),
        "job_id": pd.Series(job_names.take(jobs[order]), dtype="str"),
        "label": labels[order],
        "timestamp": times[order],
    })


def _sample_negatives(positive_keys: np.ndarray, positive_times: np.ndarray, seen_keys: np.ndarray,
                      n_catalog: int, n_jobs: np.int64, ratio: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``ratio`` unseen catalog jobs per positive, unique per user; slots still unfilled after a few rounds of
    rejection sampling (users who saw almost the whole catalog) are dropped with a warning."""
    rng = np.random.default_rng(seed)
    slot_users = np.repeat(positive_keys // n_jobs, ratio)
    slot_times = np.repeat(positive_times, ratio)
    slot_jobs = np.full(len(slot_users), -1, dtype=np.int64)
    accepted = np.zeros(0, dtype=np.int64)  # sorted keys sampled so far; seen_keys is sorted too
    for _ in range(_MAX_SAMPLING_ROUNDS):
        todo = np.flatnonzero(slot_jobs < 0)
        if not len(todo):
            break
        candidates = rng.integers(0, n_catalog, size=len(todo))
        cand_keys = slot_users[todo] * n_jobs + candidates
        ok = ~(_in_sorted(cand_keys, seen_keys) | _in_sorted(cand_keys, accepted))
        first = np.zeros(len(todo), dtype=bool)
        first[np.unique(cand_keys, return_index=True)[1]] = True  # one draw per new pair this round
        ok &= first
        slot_jobs[todo[ok]] = candidates[ok]
        new = np.sort(cand_keys[ok])
        accepted = np.insert(accepted, np.searchsorted(accepted, new), new)  # O(n), no re-sort
    filled = slot_jobs >= 0
    if not filled.all():
        logger.warning("sampled %d of %d negatives: some users have seen almost every job",
                       int(filled.sum()), len(filled))
    return slot_users[filled] * n_jobs + slot_jobs[filled], slot_times[filled]


def _in_sorted(values: np.ndarray, sorted_keys: np.ndarray) -> np.ndarray:
    if not len(sorted_keys):
        return np.zeros(len(values), dtype=bool)
    where = np.minimum(np.searchsorted(sorted_keys, values), len(sorted_keys) - 1)
    return sorted_keys[where] == values


def _split_counts(sizes: np.ndarray, fraction: float, room: np.ndarray) -> np.ndarray:
    if fraction <= 0:
        return np.zeros_like(sizes)
    counts = np.maximum(1, np.floor(sizes * fraction + 0.5).astype(np.int64))
    return np.minimum(counts, room)


def _random_parts(n: int, valid_fraction: float, test_fraction: float, seed: int) -> np.ndarray:
    """0 train / 1 valid / 2 test per row, seeded; exact counts round(n * fraction)."""
    perm = np.random.default_rng(seed).permutation(n)
    n_test, n_valid = int(round(n * test_fraction)), int(round(n * valid_fraction))
    parts = np.zeros(n, dtype=np.int8)
    parts[perm[:n_test]] = 2
    parts[perm[n_test:n_test + n_valid]] = 1
    return parts


def split_examples(examples: pd.DataFrame, config: DataConfig) -> Splits:
    """Split examples by ``config.split``; no (user, job) pair lands in two splits.

    "time": per user in timestamp order, the last ``test_fraction`` of the rows go to test and the
    ``valid_fraction`` before them to valid (at least one row each, at least one left in train); users with
    fewer than 3 rows stay in train. "random": a seeded split of the pairs.
    """
    user_codes, _ = pd.factorize(examples["user_id"])
    job_codes, job_names = pd.factorize(examples["job_id"])
    keys = user_codes.astype(np.int64) * max(len(job_names), 1) + job_codes
    duplicated = pd.Series(keys).duplicated(keep="last").to_numpy()
    if duplicated.any():  # only hand-made examples can repeat a pair; keep the last row of each
        logger.warning("split_examples: dropping %d repeated (user_id, job_id) row(s)", int(duplicated.sum()))
        examples, user_codes = examples[~duplicated], user_codes[~duplicated]
    n = len(examples)
    if config.split == "random":
        parts = _random_parts(n, config.valid_fraction, config.test_fraction, config.seed)
    else:
        times = examples["timestamp"].to_numpy(np.int64)
        order = np.lexsort((np.arange(n), times, user_codes))
        sizes = np.bincount(user_codes, minlength=1) if n else np.zeros(0, np.int64)
        starts = np.cumsum(sizes) - sizes
        rank = np.empty(n, dtype=np.int64)
        rank[order] = np.arange(n) - starts[user_codes[order]]
        n_test = np.where(sizes >= 3, _split_counts(sizes, config.test_fraction, sizes - 1), 0)
        n_valid = np.where(sizes >= 3, _split_counts(sizes, config.valid_fraction, sizes - 1 - n_test), 0)
        size, test, valid = sizes[user_codes], n_test[user_codes], n_valid[user_codes]
        parts = np.where(rank >= size - test, 2, np.where(rank >= size - test - valid, 1, 0))
    return Splits(*(examples[parts == k].reset_index(drop=True) for k in range(3)))


# ------------------------------------------------------------------------------------------ generic tables
def load_table(config: DataConfig) -> Splits:
    """Load a labelled table: ``config.path`` is one file (split at random with the fractions) or a directory
    holding train/valid/test files. Returns the field columns plus a float32 ``label`` column."""
    path = Path(config.path)
    if path.is_dir():
        return Splits(*(_read_labelled(path / name, config) for name in ("train", "valid", "test")))
    frame = _read_labelled(path, config)
    parts = _random_parts(len(frame), config.valid_fraction, config.test_fraction, config.seed)
    return Splits(*(frame[parts == k].reset_index(drop=True) for k in range(3)))


def _read_labelled(path: Path, config: DataConfig) -> pd.DataFrame:
    frame, path = read_located(path)
    if config.label not in frame.columns:
        raise DataValidationError(f"{path}: missing label column {config.label!r}; "
                                  f"columns in the file: {list(frame.columns)}")
    fields = config.categorical + config.multi_valued + config.numeric
    missing = [c for c in fields if c not in frame.columns]
    if missing:
        raise DataValidationError(f"{path}: missing field column(s) {missing}; "
                                  f"columns in the file: {list(frame.columns)}")
    extras = [c for c in frame.columns if c not in fields and c != config.label]
    if extras:
        logger.warning("%s: ignoring column(s) %s that are neither label nor a listed field", path, extras)
    out = pd.DataFrame(index=frame.index)
    for column in config.categorical + config.multi_valued:
        out[column] = frame[column].astype("str").fillna("")
    for column in config.numeric:
        out[column] = to_numbers(frame[column], path, column, allow_missing=False)
    raw = frame[config.label]
    labels = raw.astype("str").str.strip().str.lower().map(_LABELS)
    if labels.isna().any():
        i = first_true(labels.isna())
        what = "missing label" if pd.isna(raw.iloc[i]) else f"label {raw.iloc[i]!r} is not binary"
        raise cell_error(path, config.label, i, f"{what}; expected 0/1 or true/false")
    out["label"] = labels.astype(np.float32)
    return out.reset_index(drop=True)
