"""The job market prepared one bucket of users at a time (Ray-free; ``train.prepare_market`` runs these pieces on
Ray Data): an example, its split ("time") and its history read one user's rows only, so a bucket of users holds
all it needs and no process ever holds the whole log.

Layout: ``config.path`` holds the jobs (and optional users) file as the in-memory path reads them, and the
interactions as one ``.parquet``/``.csv`` file or a folder of part files named like the file
(``interactions/``). The driver keeps the catalogs (jobs, users): their size is the catalog's, not the log's.

Per bucket (``bucket_examples``): the interactions become examples as ``build_examples`` makes them, negatives
drawn from a generator seeded by (seed, bucket) (the bucket count follows the log's size alone,
``bucket_count``, so a run on any cluster draws the same ones); each example gets its history (the user's last
``history_length`` positives strictly before its time, as job ids, and how many there were) and, where it can be
known from the bucket, its split. Encoding is then row by row into compact columns
(``JobFeatureExtractor.streamed_columns``: catalog rows and the history's job rows, which each worker turns back
into the in-memory path's tables), and fitting needs only per-batch summaries (``fit_summary``) and each user's
latest positives (``latest_positives``), merged on the driver.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from convfm.config import DataConfig
from convfm.data.loading import JobMarket, build_examples, set_events
from convfm.data.date_columns import epoch_dates, is_calendar, order_key
from convfm.data.date_formats import date_order
from convfm.data.readers import (
    GZIP_SUFFIXES, cell_error, file_suffix, first_true, header_names, id_strings, is_text, part_files, read_located,
    resolve_columns, resolve_path,
)
from convfm.data.splitting import TRAIN_ONLY, per_user_parts, with_train_only
from convfm.errors import ConfigError, DataValidationError
from convfm.features.context import UserHistory

# Users are hashed into buckets, each prepared in one task: at least MIN_BUCKETS, doubled until a bucket holds
# about BUCKET_INTERACTIONS at most (a task's memory). CSV_BYTES_PER_ROW estimates a CSV log's rows from its size.
MIN_BUCKETS, BUCKET_INTERACTIONS, CSV_BYTES_PER_ROW = 64, 1_000_000, 40
BUCKET, PART = "bucket", "part"  # PART: 0 train, 1 valid, 2 test, -1 not yet known (global_time by fractions)
HISTORY, HISTORY_COUNT = "history", "history_count"  # recent positive job ids (most recent first), their count
EXAMPLE_COLUMNS = ("user_id", "job_id", "label", "timestamp")
_READ = ("user_id", "job_id", "event", "label", "timestamp")  # canonical columns read from the log


def check_market_config(config: DataConfig) -> None:
    """What the distributed path cannot prepare, refused before any work with the setting to change."""
    if config.kind != "jobs":
        raise ConfigError(f"kind: the job-market path prepares kind 'jobs', got {config.kind!r}")
    refusals = {
        "split": (config.split == "random", "split 'random' draws one permutation over all pairs; use 'time' "
                                            "(per user) or 'global_time'"),
        "popularity_days": (config.popularity_days is not None, "job popularity counts every user's positives per "
                                                                "job; prepare in memory or set it to null"),
        "events": (config.events is not None, "add the event log's events as part files of the interactions "
                                              "folder instead"),
        "negative_sampling": (config.negative_sampling == "popularity", "popularity sampling weighs every "
                                                                        "user's events; use 'live' or 'uniform'"),
    }
    for field, (refused, why) in refusals.items():
        if refused:
            raise ConfigError(f"{field}: distributed preparation of job-market data: {why}", field=field)


def interaction_files(config: DataConfig) -> list[Path]:
    """The interactions' files in read order: a folder of part files (name order) or the one file."""
    folder = Path(config.path) / config.interactions_file
    return part_files(folder) if folder.is_dir() else [resolve_path(folder)]


def log_rows(path: Path) -> int:
    """A log file's rows: from the Parquet footer, or estimated from a CSV's size (a gzip file's uncompressed
    size: its compressed one gave 4-10 times too few rows)."""
    if path.suffix.lower() == ".parquet":
        try:
            return int(pq.ParquetFile(path).metadata.num_rows)
        except (OSError, pa.ArrowInvalid) as exc:
            raise DataValidationError(f"{path}: cannot read parquet metadata ({exc})") from None
    size = path.stat().st_size
    if file_suffix(path) in GZIP_SUFFIXES:
        with path.open("rb") as handle:
            handle.seek(max(size - 4, 0))
            size = gzip_size(int.from_bytes(handle.read(4), "little"), size)
    return size // CSV_BYTES_PER_ROW


def gzip_size(isize: int, compressed: int) -> int:
    """A gzip file's uncompressed size from its trailer's ISIZE (the size mod 2**32): the first such size not
    below the ``compressed`` one (text does not compress to more than it was)."""
    while isize < compressed:
        isize += 1 << 32
    return isize


def bucket_count(files: Iterable[Path]) -> int:
    """How many user buckets the log's size calls for (a power of two times ``MIN_BUCKETS``)."""
    rows, buckets = sum(log_rows(p) for p in files), MIN_BUCKETS
    while rows > buckets * BUCKET_INTERACTIONS:
        buckets *= 2
    return buckets


def log_columns(config: DataConfig, columns: Optional[Iterable[str]] = None, path: Path = Path(".")
                ) -> dict[str, str]:
    """canonical -> the column name in the interactions files (``config.columns``); given a file's ``columns``,
    the one they hold apart from case (``readers.resolve_columns``), as the in-memory loader reads them."""
    mapping = config.columns.get("interactions", {})
    names = {c: str(mapping.get(c, c)) for c in _READ}
    return names if columns is None else resolve_columns(path, columns, names)


def check_interaction_schemas(files: Iterable[Path], config: DataConfig) -> list[str]:
    """Every file has the id and timestamp columns (an event column in all files or none), from Parquet footers
    and CSV headers, before any work starts; DataValidationError naming the file and the column. Returns the
    canonical columns the files hold."""
    mapping = config.columns.get("interactions", {})
    unknown = sorted(set(mapping) - set(_READ))
    if unknown:
        raise ConfigError(f"columns.interactions: unknown canonical column(s) {unknown}; allowed: {list(_READ)}")
    present, first = None, None
    required = ("user_id", "job_id", "timestamp", *(("event",) if "event" in mapping else ()))
    for path in files:
        columns = file_columns(path)
        names = log_columns(config, columns, path)
        missing = [names[c] for c in required if names[c] not in columns]
        if missing:
            why = " (distributed preparation orders events by it)" if names["timestamp"] in missing else ""
            raise DataValidationError(f"{path}: missing column(s) {missing}{why}; columns in the file: {columns}")
        has = [c for c in _READ if names[c] in columns]
        if present is not None and has != present:
            differ = sorted(names[c] for c in set(has) ^ set(present))
            raise DataValidationError(f"{path}: column(s) {differ} are in some interactions files and not in "
                                      "others")
        spelt = sorted({names[c] for c in has} - set(first[1] if first else [names[c] for c in has]))
        if spelt:  # Ray Data reads one list of columns from every file
            raise DataValidationError(f"{path}: column(s) {spelt} are spelt {first[1]} in {first[0]}; write the "
                                      "header one way in every interactions file")
        present, first = has, first or (path, [names[c] for c in has])
        if path.suffix.lower() == ".parquet":
            _check_scalar_types(path, names, has)
    return list(present or [])


def file_columns(path: Path) -> list[str]:
    """A log file's column names: a text file's header, a Parquet file's schema."""
    if is_text(path):
        return header_names(path)
    try:
        return list(pq.read_schema(path).names)
    except (OSError, pa.ArrowInvalid) as exc:
        raise DataValidationError(f"{path}: cannot read parquet schema ({exc})") from None


def _check_scalar_types(path: Path, names: dict[str, str], canonical: list[str]) -> None:
    schema = pq.read_schema(path)
    for column in canonical:
        kind = schema.field(names[column]).type
        if pa.types.is_nested(kind) or pa.types.is_binary(kind) or pa.types.is_large_binary(kind) or \
                pa.types.is_binary_view(kind):
            raise DataValidationError(f"{path}: column {names[column]!r} has type {kind}; expected one scalar "
                                      "value per row")


def typed_interactions(batch: pd.DataFrame, path: Path, config: DataConfig, buckets: int = MIN_BUCKETS,
                       dayfirst: Optional[bool] = None) -> pd.DataFrame:
    """Rows of the log file ``path`` with canonical, typed columns (user_id, job_id, event, timestamp as
    microseconds) and their users' ``BUCKET``; DataValidationError naming the file, the column and the row
    (counted in ``batch``: ``locate_error`` re-reads the whole file for its own row numbers). Numeric dates are
    read ``dayfirst``: the market's reading (``JobMarket.day_first``); None: as this batch alone proves."""
    names = log_columns(config, batch.columns, path)
    batch = batch.apply(_plain)
    out = pd.DataFrame(index=batch.index)
    for column in ("user_id", "job_id"):
        ids = id_strings(batch[names[column]])
        if ids.isna().any():
            raise cell_error(path, names[column], first_true(ids.isna()), "empty id")
        out[column] = ids.astype(object)
    for column in ("event", "label"):
        if names[column] in batch.columns:
            out[column] = batch[names[column]]
    set_events(out, str(path), config)
    times = epoch_dates(batch[names["timestamp"]], path, names["timestamp"])
    if len(times) and not is_calendar(times):
        raise DataValidationError(f"{path}: column {names['timestamp']!r}: distributed preparation needs date/time "
                                  f"timestamps (got numbers, e.g. {times.iloc[0]!r}): job liveness and the splits "
                                  "are read on a calendar")
    if dayfirst is not None:  # the market's reading, decided on what it saw: a batch proving the other way fails
        proof = date_order(times, path, names["timestamp"], rows=False)
        against = proof.month_first if dayfirst else proof.day_first
        if against:
            read, other = ("day", "month") if dayfirst else ("month", "day")
            raise DataValidationError(f"{path}: column {names['timestamp']!r}: {against[1]!r} is {other}-first, while "
                                      f"the market's numeric dates were read {read}-first; write the dates one way "
                                      "(ISO: 2025-01-13)")
    out["timestamp"] = order_key(times, path, names["timestamp"], dayfirst)
    out[BUCKET] = user_buckets(out["user_id"].to_numpy(), buckets)
    return out.reset_index(drop=True)


def locate_error(path: Path, config: DataConfig, error: DataValidationError, dayfirst: Optional[bool] = None
                 ) -> DataValidationError:
    """A batch's error with the row counted in its whole file: the file typed at once (in memory; a part file of
    a log), or ``error`` itself when the file alone types cleanly."""
    try:
        typed_interactions(read_located(path)[0], path, config, dayfirst=dayfirst)
    except DataValidationError as exact:
        return exact
    return error


def _plain(values: pd.Series) -> pd.Series:
    """Ray Data hands columns back arrow-backed: as the in-memory reader's numpy dtypes (text as objects,
    missing as None) the typing reads them alike."""
    if isinstance(values.dtype, pd.ArrowDtype) or isinstance(values.dtype, pd.StringDtype):
        kind = getattr(values.dtype, "kind", "O")
        if kind in "mMiufb" and not values.isna().any():
            return pd.Series(values.to_numpy(), index=values.index)
        return values.astype(object).where(values.notna(), None)
    return values


def user_buckets(user_ids: np.ndarray, buckets: int = MIN_BUCKETS) -> np.ndarray:
    """Each user's bucket: a fixed hash of the id (the same in every process and run)."""
    hashed = pd.util.hash_array(np.asarray(user_ids, dtype=object).astype(str))
    return (hashed % np.uint64(buckets)).astype(np.int64)


def bucket_examples(interactions: pd.DataFrame, jobs: pd.DataFrame, config: DataConfig,
                    starts: Optional[tuple[int, int]] = None) -> pd.DataFrame:
    """One bucket's interactions (``typed_interactions`` rows, all of its users' events) -> its examples
    (``EXAMPLE_COLUMNS``) with ``PART``, ``HISTORY`` and ``HISTORY_COUNT``. ``starts`` (T1, T2): where
    "global_time" splits, when known before the examples exist (dates in the config); else PART is -1."""
    bucket = int(interactions[BUCKET].iloc[0]) if len(interactions) else 0
    events = interactions.sort_values(["user_id", "timestamp", "job_id", "event"], kind="stable")
    market = JobMarket(jobs=jobs, users=None, interactions=events.reset_index(drop=True), calendar=True)
    examples = build_examples(market, config, rng_seed=config.seed * 1_000_003 + bucket)
    parts = split_parts(examples, config, starts)
    return with_history(examples.assign(**{PART: parts}), config.history_length)


def split_parts(examples: pd.DataFrame, config: DataConfig, starts: Optional[tuple[int, int]]) -> np.ndarray:
    """0/1/2 per example: per user ("time", as ``split_examples``), at ``starts`` ("global_time"), or -1 when
    "global_time" has no starts yet. ``TRAIN_ONLY`` rows take no part in the split and are 0 or -1 (dropped),
    as ``split_examples`` decides."""
    if TRAIN_ONLY in examples:
        train_only = examples[TRAIN_ONLY].to_numpy(bool)
        if config.split == "time":  # a bucket holds all of its users' rows
            base = split_parts(examples[~train_only].drop(columns=TRAIN_ONLY), config, starts)
            codes, _ = pd.factorize(examples["user_id"])
            return with_train_only(base, codes, examples["timestamp"].to_numpy(np.int64), train_only)
        parts = split_parts(examples.drop(columns=TRAIN_ONLY), config, starts)  # by time: as their positive's
        return np.where(train_only & (parts != 0), np.int8(-1), parts).astype(np.int8)
    if config.split == "time":
        codes, _ = pd.factorize(examples["user_id"])
        return per_user_parts(examples["timestamp"].to_numpy(np.int64), codes, config).astype(np.int8)
    if starts is None:
        return np.full(len(examples), -1, np.int8)
    return np.searchsorted(np.asarray(starts), examples["timestamp"].to_numpy(np.int64), side="right").astype(np.int8)


def with_history(examples: pd.DataFrame, length: int) -> pd.DataFrame:
    """``examples`` plus each one's history from its users' positives in the frame (all of theirs)."""
    positives = examples.loc[examples["label"] > 0, ["user_id", "job_id", "timestamp"]]
    history = UserHistory.from_frame(positives)
    start, count, total = history.states(examples["user_id"].to_numpy(), examples["timestamp"].to_numpy(np.int64))
    recent = history.recent(start, count, length)
    # lists of str (Arrow list<string>): fixed-width text arrays would be typed by each bucket's longest id
    return examples.assign(**{HISTORY: recent.tolist(), HISTORY_COUNT: total.astype(np.int64)})


def fit_summary(examples: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """What fitting needs from a batch of examples, small and mergeable: per training user its first example's
    time ("users"), per job its training positives and examples ("jobs"), and rows and positives per part
    ("parts"). ``TRAIN_ONLY`` rows count as rows (and as "extra" ones), never as a job's examples: the
    popularity baseline is that of ``negative_ratio``'s examples, as in memory."""
    in_train = examples[PART] == 0
    train = examples[in_train]
    users = train.groupby("user_id", sort=False)["timestamp"].min().reset_index()
    positive = (train["label"] > 0).astype(np.int64)
    extra = examples[TRAIN_ONLY].astype(np.int64) if TRAIN_ONLY in examples else pd.Series(0, examples.index)
    jobs = pd.DataFrame({"job_id": train["job_id"], "positives": positive, "examples": 1 - extra[in_train]}
                        ).groupby("job_id", sort=False).sum().reset_index()
    parts = pd.DataFrame({PART: examples[PART], "label": examples["label"].astype(float), "rows": 1,
                          "extra": extra}).groupby([PART, "label"]).sum().reset_index()
    return {"users": users, "jobs": jobs, "parts": parts}


def latest_positives(examples: pd.DataFrame, length: int) -> pd.DataFrame:
    """A batch's positives cut to each user's last ``length`` (``history_rows``). Batches merge with
    ``merge_latest``."""
    positives = examples.loc[examples["label"] > 0, ["user_id", "job_id", "timestamp"]]
    return history_rows(UserHistory.from_frame(positives).latest(length))


def history_rows(history: UserHistory) -> pd.DataFrame:
    """(user_id, job_id, timestamp) rows of ``history`` with ``earlier``: the user's positives before the kept
    ones, on the user's first row (0 on the others), so that rows of several histories add up."""
    arrays = history.arrays("h")
    earlier = np.zeros(len(history), np.int64)
    kept = np.diff(history.offsets) > 0
    earlier[history.offsets[:-1][kept]] = arrays["h.earlier"][kept]
    return pd.DataFrame({"user_id": arrays["h.users"], "job_id": arrays["h.jobs"], "timestamp": arrays["h.times"],
                         "earlier": earlier})


def merge_latest(parts: Iterable[pd.DataFrame], length: int) -> UserHistory:
    """Each user's last ``length`` positives over all batches (``latest_positives``), with the true count."""
    rows = pd.concat(list(parts), ignore_index=True)
    earlier = rows.groupby("user_id")["earlier"].sum()
    merged = UserHistory(rows["user_id"].to_numpy(), rows["job_id"].to_numpy(), rows["timestamp"].to_numpy(np.int64),
                         earlier.to_dict())
    return merged.latest(length)
