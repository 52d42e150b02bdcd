"""Load and validate the job market (jobs, users, interactions) or a generic labelled table; make examples.

Every problem with an input file raises ``DataValidationError`` naming the file, the column and the first bad
1-based data row (the header is not counted). Everything is vectorised pandas/numpy.
"""
from __future__ import annotations

import csv
import dataclasses
import logging
import re
import warnings
from pathlib import Path
from typing import Iterable, Mapping, Optional

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from convfm.config import DataConfig
from convfm.errors import ConfigError, DataValidationError
from convfm.schema import DATETIME, EVENTS, ID, INTERACTIONS, JOBS, NUMBER, USERS, TableSchema

logger = logging.getLogger(__name__)

SUFFIXES = (".csv", ".parquet")
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


# ---------------------------------------------------------------------------------------------- reading files
def resolve_path(path: str | Path) -> Path:
    """``path`` itself if it ends in .csv/.parquet, else the first of ``path``.csv, ``path``.parquet that exists."""
    path = Path(path)
    if path.suffix.lower() in SUFFIXES:
        if not path.is_file():
            raise DataValidationError(f"{path}: file not found")
        return path
    for suffix in SUFFIXES:
        candidate = path.with_name(path.name + suffix)
        if candidate.is_file():
            return candidate
    if path.is_file():
        raise DataValidationError(f"{path}: unsupported file type; expected a .csv or .parquet file")
    raise DataValidationError(f"{path}: file not found (tried {path}.csv and {path}.parquet)")


def read_frame(path: str | Path, id_columns: Iterable[str] = ()) -> pd.DataFrame:
    """Read a .csv or .parquet file (a path without suffix tries NAME.csv, then NAME.parquet).

    CSV columns are read as strings (typing is the schema's job, so nothing is lost to inference); parquet keeps
    its types. ``id_columns`` that exist become stripped strings with empty values as NaN.
    """
    frame, _ = _read(path, id_columns)
    return frame


def _read(path: str | Path, id_columns: Iterable[str] = ()) -> tuple[pd.DataFrame, Path]:
    path = resolve_path(path)
    if path.stat().st_size == 0:
        raise DataValidationError(f"{path}: file is empty (0 bytes)")
    if path.suffix.lower() == ".parquet":
        try:
            frame = pd.read_parquet(path)
        except Exception as exc:  # pyarrow raises many types for corrupt files
            raise DataValidationError(f"{path}: cannot read parquet file ({type(exc).__name__}: {exc})") from None
    else:
        frame = _read_csv(path)
    if len(frame) == 0:
        raise DataValidationError(f"{path}: no data rows (columns: {list(frame.columns)})")
    frame.columns = [str(c).strip() for c in frame.columns]
    for column in id_columns:
        if column in frame.columns:
            frame[column] = _id_strings(frame[column])
    return frame, path


def _read_csv(path: Path) -> pd.DataFrame:
    try:
        frame = pd.read_csv(path, dtype=str, encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise DataValidationError(_utf8_error(path)) from None
    except pd.errors.EmptyDataError:
        raise DataValidationError(f"{path}: file is empty (no header, no rows)") from None
    except pd.errors.ParserError as exc:
        raise DataValidationError(f"{path}: malformed CSV: {_parser_detail(exc)}") from None
    _check_tail(path, frame.shape[1])
    return frame


def _utf8_error(path: Path) -> str:
    data = path.read_bytes()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        return (f"{path}: not valid UTF-8: byte 0x{data[exc.start]:02x} at byte offset {exc.start} "
                f"(line {line}); save the file as UTF-8")
    return f"{path}: not valid UTF-8; save the file as UTF-8"


def _parser_detail(exc: Exception) -> str:
    message = str(exc).strip()
    eof = re.search(r"EOF inside string starting at row (\d+)", message)
    if eof:  # pandas counts that row from 0 with the header as row 0
        return f"quoted field opened on line {int(eof.group(1)) + 1} never closes; the file looks truncated"
    fields = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", message)
    if fields:
        expected, line, saw = fields.groups()
        return f"line {line} has {saw} fields but the header has {expected}"
    return message


def _check_tail(path: Path, n_columns: int) -> None:
    """A last line without newline and with too few fields is a cut-off file (pandas would pad it with NaN)."""
    with path.open("rb") as handle:
        handle.seek(max(0, path.stat().st_size - 65536))
        tail = handle.read()
    if tail.endswith(b"\n") or n_columns <= 1:
        return
    last = tail.rsplit(b"\n", 1)[-1]
    if b'"' in last or not last.strip():
        return
    n_fields = len(next(csv.reader([last.decode("utf-8", "replace")])))
    if n_fields < n_columns:
        line = path.read_bytes().count(b"\n") + 1
        raise DataValidationError(f"{path}: malformed CSV: line {line} has {n_fields} of {n_columns} fields and "
                                  f"no final newline; the file looks truncated")


def _id_strings(series: pd.Series) -> pd.Series:
    if series.dtype.kind == "f":  # an integer id column with gaps comes back from parquet as float
        whole = series.dropna()
        if (whole == np.floor(whole)).all():
            series = series.astype("Int64")
    out = series.astype("str").str.strip()
    return out.mask(out == "")


def _first(mask: pd.Series | np.ndarray) -> int:
    return int(np.flatnonzero(np.asarray(mask))[0])


def _bad(path: Path, column: str, row: int, message: str) -> DataValidationError:
    return DataValidationError(f"{path}: column {column!r}, row {row + 1}: {message}")


# ------------------------------------------------------------------------------------------ typed columns
def _numbers(series: pd.Series, path: Path, column: str, allow_missing: bool = True) -> pd.Series:
    values = pd.to_numeric(series, errors="coerce").astype("float64")
    bad = values.isna() & series.notna()
    if bad.any():
        i = _first(bad)
        raise _bad(path, column, i, f"{series.iloc[i]!r} is not a number")
    if not allow_missing and values.isna().any():
        raise _bad(path, column, _first(values.isna()), "missing value in a numeric column")
    return values


def _looks_numeric(series: pd.Series) -> bool:
    """Whether most of the first 1000 non-empty values are numbers (to_numeric is slow on failing strings)."""
    head = series.dropna().iloc[:1000]
    return len(head) > 0 and pd.to_numeric(head, errors="coerce").notna().mean() >= 0.5


def _datetimes(series: pd.Series, path: Path, column: str) -> pd.Series:
    if series.dtype.kind not in "mM" and _looks_numeric(series):  # epoch seconds
        return pd.to_datetime(_numbers(series, path, column), unit="s")
    with warnings.catch_warnings():  # "could not infer format": fine, rows are then parsed one by one
        warnings.simplefilter("ignore", UserWarning)
        parsed = pd.to_datetime(series, errors="coerce", utc=True)
        if (parsed.isna() & series.notna()).any():  # the inferred format did not fit every row
            parsed = pd.to_datetime(series, errors="coerce", utc=True, format="mixed")
    bad = parsed.isna() & series.notna()
    if bad.any():
        i = _first(bad)
        raise _bad(path, column, i, f"cannot parse {series.iloc[i]!r} as a date/time")
    return parsed.dt.tz_convert(None)


def _order_key(series: pd.Series, path: Path, column: str) -> np.ndarray:
    """int64 order key: whole numbers as given, fractional numbers x 1e6, dates as microseconds since epoch."""
    if series.isna().any():
        raise _bad(path, column, _first(series.isna()), "empty timestamp")
    if series.dtype.kind in "iu":
        return series.to_numpy(np.int64)
    if series.dtype.kind not in "mM" and _looks_numeric(series):
        values = _numbers(series, path, column).to_numpy()
        whole = np.all(values == np.floor(values))
        return (values if whole else np.round(values * 1e6)).astype(np.int64)
    return _datetimes(series, path, column).to_numpy().astype("datetime64[us]").astype(np.int64)


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
    frame, path = _read(path, [source[c] for c in schema.of_kind(ID)])
    for name in schema.names:  # a required column, or one the mapping names explicitly, must exist
        if source[name] not in frame.columns and (name in schema.required or name in mapping):
            mapped = f" (canonical {name!r})" if source[name] != name else ""
            raise DataValidationError(f"{path}: missing {'required ' * (name in schema.required)}column "
                                      f"{source[name]!r}{mapped}; columns in the file: {list(frame.columns)}")
    out = pd.DataFrame(index=frame.index)
    for column in (c for c in schema.columns if source[c.name] in frame.columns):
        name, actual, values = column.name, source[column.name], frame[source[column.name]]
        if column.kind == ID and values.isna().any():
            raise _bad(path, actual, _first(values.isna()), "empty id")
        if column.kind == ID:
            out[name] = values
        elif column.kind == NUMBER:
            out[name] = _numbers(values, path, actual)
        elif column.kind == DATETIME:
            out[name] = (_order_key if schema is INTERACTIONS else _datetimes)(values, path, actual)
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
        later = _first(duplicated)
        earlier = _first(ids.to_numpy() == ids.iloc[later])
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
        i = _first(bad)
        value, stripped = interactions["event"].iloc[i], events.iloc[i]
        what = "empty event" if pd.isna(stripped) or stripped == "" else f"unknown event {value!r}"
        column = config.columns.get("interactions", {}).get("event", "event")
        raise _bad(Path(path), column, i, f"{what}; allowed: {list(EVENTS)}")
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
    frame, path = _read(path)
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
        out[column] = _numbers(frame[column], path, column, allow_missing=False)
    raw = frame[config.label]
    labels = raw.astype("str").str.strip().str.lower().map(_LABELS)
    if labels.isna().any():
        i = _first(labels.isna())
        what = "missing label" if pd.isna(raw.iloc[i]) else f"label {raw.iloc[i]!r} is not binary"
        raise _bad(path, config.label, i, f"{what}; expected 0/1 or true/false")
    out["label"] = labels.astype(np.float32)
    return out.reset_index(drop=True)
