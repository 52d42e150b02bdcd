"""Load and validate the job market (jobs, users, interactions); make examples (generic labelled tables:
``convfm.data.labelled``).

Every problem with an input file raises ``DataValidationError`` naming the file, the column and the first bad
1-based data row (the header is not counted; reading and column typing live in ``convfm.data.readers``, one table
file read by its schema in ``convfm.data.schema_tables``). Everything is vectorised pandas/numpy.
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from convfm.config import EVENTS, DataConfig
from convfm.errors import ConfigError, DataValidationError
from convfm.data.date_formats import DateOrder, decide_day_first
from convfm.data.liveness import job_windows
from convfm.data.negatives import sample_negatives
from convfm.data.readers import (  # noqa: F401  (read_frame: re-exported)
    READ_SUFFIXES, binary_labels, cell_error, file_suffix, first_true, read_frame, suffixed_files, unread_note,
)
from convfm.data.schema import INTERACTIONS, JOBS, USERS
from convfm.data.schema_tables import read_jobs_file, read_schema_table, type_schema_table  # noqa: F401
from convfm.data.splitting import TRAIN_ONLY, split_examples  # noqa: F401  (split_examples: re-exported)
from convfm.store import storage
from convfm.store.event_log import interactions_frame, list_segments
from convfm.store.log_mark import segments_through

logger = logging.getLogger(__name__)
ALL = object()  # read every event log segment / live catalog delta (not what an earlier read took)



@dataclasses.dataclass(frozen=True, eq=False)
class JobMarket:
    """Validated tables with canonical columns; ``source`` maps table name -> file path (for messages).

    ``calendar``: interaction timestamps are date/times (microseconds since the epoch, comparable with the
    jobs' live windows); False for plain numbers or row order, where liveness cannot be checked."""

    jobs: pd.DataFrame
    users: Optional[pd.DataFrame]
    interactions: pd.DataFrame
    source: Mapping[str, str] = dataclasses.field(default_factory=dict)
    calendar: bool = False
    # the live catalog applied to ``jobs`` (``config.events``): its store, version and added/replaced/expired
    live_catalog: Optional[Mapping[str, Any]] = None
    # the event log read as interactions (``config.events``): its path, last segment and segment count
    event_log: Optional[Mapping[str, Any]] = None
    day_first: bool = False  # numeric dates (02/01/2025) were read day-first, in every file


# ------------------------------------------------------------------------------------------ ids
def _index_in(values: pd.Series, unique: pd.Series) -> np.ndarray:
    """Position of each value in ``unique``, -1 when absent (pyarrow: pandas loops in Python on arrow strings)."""
    found = pc.index_in(pa.array(values.array), value_set=pa.array(unique.array))
    return found.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)


# ------------------------------------------------------------------------------------------ the job market
def load_job_market(config: DataConfig, interactions: bool = True, log_dates: Iterable[DateOrder] = (),
                    read_before: Optional[Mapping[str, Any]] = None) -> JobMarket:
    """Read and validate ``config.path``/{jobs, users (optional), interactions} with ``config.columns`` applied.
    ``read_before``: what a resumed run's first start read beside ``config.events`` (its run.json's
    ``event_log`` and ``live_catalog``, each present or not): the log is read up to that segment and the live
    catalog up to that version, so the run goes on with the data it started with.
    ``interactions`` False reads the catalogs only (distributed preparation reads the log on the cluster): the
    market's interactions are then empty and its calendar is taken as given. Numeric dates (02/01/2025) are read
    one way in every file (``JobMarket.day_first``), decided on all of them and ``log_dates`` (what the
    cluster found in the log's).

    No event column: every row is ``config.default_event``; no timestamp column: row order is time order (and
    the market has no calendar). ``config.events`` (an event log) adds its events after the file's rows.
    Interactions naming jobs (or users) absent from their table are kept, with a warning; when not one names a
    job of the jobs table, the ids are written two ways and loading stops. When not one names a user of the users
    table, loading stops only if some ids are the same written another way (``_id_keys``); else a users file of
    new sign-ups' profiles is read, with a warning that every user feature is unknown.
    """
    root = Path(config.path)
    if not root.is_dir():
        raise DataValidationError(f"{root}: a file, not a data directory (the folder holding jobs, users and "
                                  "interactions)" if root.is_file() else f"{root}: data directory not found")
    tables: dict[str, pd.DataFrame] = {}
    source: dict[str, str] = {}
    calendar, read = False, []
    files = ((JOBS, config.jobs_file), (USERS, config.users_file), (INTERACTIONS, config.interactions_file))
    for schema, name in files[:None if interactions else 2]:
        candidates = [root / name, *suffixed_files(root / name)]
        if schema is USERS and not any(p.is_file() for p in candidates) and config.extra_columns.get("users"):
            raise DataValidationError(f"{root / name}: no users file, but extra_columns.users lists "
                                      f"{list(config.extra_columns['users'])}")
        if schema is USERS and not any(p.is_file() for p in candidates):
            logger.info("%s: no users file; users are known only by their interactions", root / name)
            continue
        if schema is INTERACTIONS and config.events and not any(p.exists() for p in candidates):
            continue  # the event log alone
        if not any(p.exists() for p in candidates) and unread_note(root / name):  # interactions.jsonl, .xlsx
            raise DataValidationError(f"{root / name}: file not found (tried .csv, .tsv and .parquet, and .csv.gz, "
                                      f".tsv.gz){unread_note(root / name)}")
        if not any(p.exists() for p in candidates):
            others = sorted(p.name[:-len(file_suffix(p))] for p in root.iterdir() if file_suffix(p) in READ_SUFFIXES)
            raise DataValidationError(f"{root / name}: file not found (tried .csv, .tsv and .parquet); "
                                      f"data.{schema.name}_file names another file of {root} (there: {others})")
        read.append(read_schema_table(root / name, schema, config.columns.get(schema.name, {}),
                                      config.extra_columns.get(schema.name, {})))
    dayfirst = decide_day_first([*(o for table in read for o in table.date_orders()), *log_dates])  # one for all
    for table in read:
        frame, path, dated = type_schema_table(table, config.extra_columns.get(table.schema.name, {}),
                                                dayfirst=dayfirst)
        tables[table.schema.name], source[table.schema.name] = frame, str(path)
        calendar = dated if table.schema is INTERACTIONS else calendar
    if not interactions:
        empty = pd.DataFrame({c: pd.Series([], dtype=t) for c, t in
                              (("user_id", object), ("job_id", object), ("event", object), ("timestamp", np.int64))})
        return JobMarket(jobs=tables["jobs"], users=tables.get("users"), interactions=empty, source=source,
                         calendar=True, day_first=dayfirst)
    timed = "interactions" in tables and "timestamp" in tables["interactions"].columns
    if "interactions" in tables:
        set_events(tables["interactions"], source["interactions"], config)
        if not timed:
            tables["interactions"]["timestamp"] = np.arange(len(tables["interactions"]), dtype=np.int64)
    live = read_log = None
    if config.events:
        pinned = read_before or {}
        tables["interactions"], calendar, read_log = _with_event_log(tables.get("interactions"), calendar, source,
                                                                     config, pinned.get("event_log", ALL))
        tables["jobs"], live = _with_live_jobs(tables["jobs"], source, config, pinned.get("live_catalog", ALL))
    interactions = tables["interactions"]
    if not calendar:
        logger.warning("%s: no date/time timestamps (%s): time is the row order or the numbers given, so job "
                       "liveness and expiry, the jobs' age and global_time dates are not available; give ISO "
                       "date/times or epoch seconds", source["interactions"],
                       "plain numbers" if timed else "no timestamp column")
    for name, key in (("jobs", "job_id"), ("users", "user_id")):
        unknown = _index_in(interactions[key], tables[name][key]) < 0 if name in tables else None
        none_known = unknown is not None and len(unknown) > 0 and unknown.all()
        # a users file may profile new sign-ups only (none in the log yet): refused only when the ids are the same
        # ones written another way; an event log's new users may all be absent from the users file
        pair = (interactions[key].iloc[0], tables[name][key].iloc[0]) if key == "job_id" else (
            _same_ids_written_apart(interactions[key], tables[name][key]) if none_known and not config.events
            else None)
        if none_known and pair is not None:
            raise DataValidationError(
                f"{source['interactions']}: column {key!r}: no interaction names a {key} of {source[name]} (e.g. "
                f"{pair[0]!r} there, {pair[1]!r} in {source[name]}); the ids must be written the same way in both "
                "files (leading zeros, prefixes)")
        if none_known and key == "user_id":
            logger.warning("%s: not one user of the log has a profile in %s (e.g. %r there, %r in %s), so every "
                           "user feature is unknown; fine if that file profiles only users with no interactions "
                           "yet", source["interactions"], source[name], interactions[key].iloc[0],
                           tables[name][key].iloc[0], source[name])
        elif unknown is not None and unknown.any():
            logger.warning("%s: %d interaction(s) name %s(s) absent from %s (e.g. %s); their features will be "
                           "unknown", source["interactions"], int(unknown.sum()), key, source[name],
                           pd.unique(interactions[key][unknown])[:3].tolist())
    return JobMarket(jobs=tables["jobs"], users=tables.get("users"), interactions=interactions, source=source,
                     calendar=calendar, live_catalog=live, event_log=read_log, day_first=dayfirst)


def _id_keys(ids: pd.Series) -> pd.Series:
    """Ids as they read written another way: case-folded, spaces, '_' and '-' dropped, each run of digits read as
    a number (``U-000121`` and ``u121`` alike)."""
    text = ids.astype("str").str.casefold().str.replace(r"[\s_-]+", "", regex=True)
    return text.str.replace(r"(?<!\d)0+(?=\d)", "", regex=True)


def _same_ids_written_apart(ids: pd.Series, known: pd.Series) -> Optional[tuple[str, str]]:
    """An id of ``ids`` and one of ``known`` that are equal apart from how they are written (``_id_keys``), or
    None: ids that are not the same ones written two ways."""
    ids, known = pd.Series(pd.unique(ids), dtype="str"), pd.Series(pd.unique(known), dtype="str")
    keys, known_keys = _id_keys(ids), _id_keys(known)
    hit = keys.isin(known_keys).to_numpy()
    if not hit.any():
        return None
    i = first_true(hit)
    return ids.iloc[i], known.iloc[first_true((known_keys == keys.iloc[i]).to_numpy())]


def require_extra_columns(market: JobMarket, columns: Mapping[str, Mapping[str, str]], whose: str) -> None:
    """DataValidationError unless the market's tables have ``columns`` (an extractor's ``extra_columns``):
    without them a fitted model would read every value as missing."""
    for table, declared in columns.items():
        frame = getattr(market, table)
        missing = [c for c in declared if frame is None or c not in frame.columns]
        if missing:
            raise DataValidationError(f"{market.source.get(table, f'the {table} table')}: missing column(s) "
                                      f"{missing}, which {whose} reads (its extra_columns.{table})")


def _with_live_jobs(jobs: pd.DataFrame, source: dict[str, str], config: DataConfig,
                    before: Any = None) -> tuple[pd.DataFrame, Optional[dict[str, Any]]]:
    """The jobs table with the live catalog beside the event log (``<live store>/catalog/``, what the service's
    ``POST /jobs`` wrote) applied, so events on jobs posted live train with those jobs' fields; and what was
    applied (store, version, added, replaced, expired), None when the store holds no delta. ``before``: what an
    earlier read applied (its record, None for nothing): the deltas up to its version alone; ``ALL``: every one."""
    from convfm.store.live_catalog import CatalogStore, jobs_after  # it reads loaded tables: imports this module

    store = CatalogStore(storage.parent(config.events))
    deltas = store.read(upto=None if before is ALL else (before or {}).get("version", 0))
    if not deltas:
        return jobs, None
    jobs, counts = jobs_after(jobs, deltas, config.job_lifetime_days)
    source["jobs"] = f"{source['jobs']} + {store.root}"
    return jobs, {"store": str(store.root), "version": deltas[-1].version, **counts}


def _with_event_log(interactions: Optional[pd.DataFrame], calendar: bool, source: dict[str, str],
                    config: DataConfig, before: Any = None) -> tuple[pd.DataFrame, bool, Optional[dict[str, Any]]]:
    """The interactions with the event log's events after them, and what was read of the log (its last segment
    and segment count: ``JobMarket.event_log``); the log's times are date/times, so the file's must be too
    (numbers or row order could not be put in one order with them). ``before``: what an earlier read took (its
    record): the segments up to its last one alone; ``ALL``: every one."""
    names = list_segments(config.events) if storage.exists(config.events) else None
    if names and before is not ALL and before is not None:
        last = before["last_segment"]
        covered = segments_through(names, last)
        if covered is None:
            raise DataValidationError(f"{config.events}: the run first read this log up to segment {last}, which "
                                      f"it no longer holds: the resumed run cannot read the same events (start a "
                                      f"new run)")
        names = names[:covered]
    events = interactions_frame(config.events, names)
    read = {"log": str(config.events), "last_segment": names[-1], "segments": len(names)} if names else None
    if interactions is None:
        source["interactions"] = str(config.events)
        return events, True, read
    if not calendar:
        raise DataValidationError(f"{source['interactions']}: timestamps are numbers or row order; reading the "
                                  f"event log {config.events} beside it needs date/times")
    source["interactions"] = f"{source['interactions']} + {config.events}"
    return pd.concat([interactions, events], ignore_index=True), True, read


def set_events(interactions: pd.DataFrame, path: str, config: DataConfig) -> None:
    """The ``event`` column (in place) lower-cased and checked; without one, from a binary ``label`` column (1: the
    first of ``positive_events``, 0: the first of ``negative_events``: a click log's impressions), else
    ``default_event``."""
    if "event" not in interactions.columns and "label" in interactions.columns:
        if not config.negative_events:
            raise ConfigError("negative_events: a label column's 0 rows need a negative event; none is listed",
                              field="negative_events")
        column = config.columns.get("interactions", {}).get("label", "label")
        labels = binary_labels(interactions["label"], Path(path), column)
        interactions["event"] = np.where(labels > 0, config.positive_events[0], config.negative_events[0])
        interactions.drop(columns="label", inplace=True)
        return
    if "event" not in interactions.columns:
        interactions["event"] = pd.Series(config.default_event, index=interactions.index, dtype="str")
        return
    if "label" in interactions.columns:  # the event decides; a label beside it was dropped without a word
        logger.warning("%s: both an event and a label column: the event column decides each row, the label is "
                       "ignored (drop one of the two columns)", path)
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
    negatives at the positive's timestamp, drawn by ``config.negative_sampling`` (``convfm.data.negatives``;
    seeded by ``rng_seed``, default ``config.seed``). ``live`` needs a calendar: without one it samples
    uniformly, with a warning. With ``train_negative_ratio`` set, a boolean ``TRAIN_ONLY`` column marks the
    second draw's negatives, which ``split_examples`` keeps beside training examples only.
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

    train_ratio = config.train_negative_ratio
    extra_ratio = 0 if train_ratio is None else train_ratio - config.negative_ratio
    train_only = np.zeros(len(pair_keys), bool)
    if (config.negative_ratio > 0 or extra_ratio > 0) and labels.any():
        seed = config.seed if rng_seed is None else rng_seed
        method, windows = config.negative_sampling, None
        if method == "live" and not market.calendar:
            logger.warning("negative_sampling 'live' needs date/time interaction timestamps (these are numbers "
                           "or row order, so job liveness is unknown): sampling negatives uniformly")
            method = "uniform"
        if method == "live":
            windows = job_windows(market.jobs, config.job_lifetime_days)
        events = (inter["timestamp"].to_numpy(np.int64), np.where(job_codes < len(catalog), job_codes, -1))
        positive_keys, positive_times = pair_keys[labels == 1], times[labels == 1]
        excluded = np.sort(keys)
        # the first draw is negative_ratio's alone (the same with or without train_negative_ratio); the extra
        # draw has its own stream and never repeats a pair of the first
        for ratio, stream, only in ((config.negative_ratio, seed, False), (extra_ratio, [seed, 1], True)):
            if ratio == 0:
                continue
            new_keys, new_times = sample_negatives(
                positive_keys, positive_times, excluded, len(catalog), n_jobs, ratio, stream, method=method,
                windows=windows, events=events)
            excluded = np.sort(np.concatenate([excluded, new_keys]))
            pair_keys = np.concatenate([pair_keys, new_keys])
            times = np.concatenate([times, new_times])
            labels = np.concatenate([labels, np.zeros(len(new_keys), np.float32)])
            train_only = np.concatenate([train_only, np.full(len(new_keys), only)])

    users, jobs = pair_keys // n_jobs, pair_keys % n_jobs
    order = np.lexsort((jobs, users, times))
    examples = pd.DataFrame({
        "user_id": pd.Series(user_names.take(users[order]), dtype="str"),
        "job_id": pd.Series(job_names.take(jobs[order]), dtype="str"),
        "label": labels[order],
        "timestamp": times[order],
    })
    return examples.assign(**{TRAIN_ONLY: train_only[order]}) if train_ratio is not None else examples


def interacted_pairs(market: JobMarket, config: DataConfig) -> pd.DataFrame:
    """(user_id, job_id) of every pair with a positive or negative event, unique: the jobs a user has seen, which
    ranking never offers them again. Sampled negatives are not among them: those jobs were never shown."""
    inter = market.interactions
    kept = inter["event"].isin(config.positive_events + config.negative_events).to_numpy()
    pairs = pd.DataFrame({"user_id": inter["user_id"].to_numpy()[kept].astype(str),
                          "job_id": inter["job_id"].to_numpy()[kept].astype(str)})
    return pairs.drop_duplicates(ignore_index=True)
