"""`convfm recommend-batch` on Ray Data: each user's top-k jobs for a dataset of users, written as Parquet.

    read_parquet(users, columns=[user_id]) (or a .csv) -> map_batches(Recommender actors, one BatchRanker each)
    -> write_parquet

Bad input fails before any work: every Parquet file's schema is read first (a file without ``user_id``, or with
user ids that are neither strings nor integers, is named), and the model is loaded once on the driver. Jobs the
service's event log (``<live store>/events``) shows a user touched before ``at`` count as seen, as in the service
(each actor reads the segments after those the model was trained on, ``BatchRanker.add_logged``). The live catalog
(``<live store>/catalog``: ``POST /jobs``, ``convfm catalog push``) is applied up to its latest version at the
run's start, pinned on the driver like the model version so every actor ranks the same catalog; rows and
``_SUCCESS.json`` record that ``catalog_version``. The output is complete or absent: ``_SUCCESS.json`` (counts,
model and catalog version, time) is written after every data file; a local output is written to a staging folder
beside ``out`` and renamed into place at the end, so a killed run leaves only a ``.NAME.staging-*`` folder.
"""
from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.dataset as pads

from convfm.data.liveness import ALWAYS, NEVER
from convfm.data.readers import is_text_type, plain_schema
from convfm.data.splitting import micros_iso
from convfm.errors import ConfigError
from convfm.jsonfile import write_json_atomic
from convfm.model.batch_ranking import BatchRanker
from convfm.store import storage
from convfm.store.event_log import events_location, list_segments
from convfm.store.live_catalog import CatalogStore
from convfm.store.registry import live_location, locate, model_identity, resolve

SUCCESS = "_SUCCESS.json"


def users_format(users: str) -> str:
    """"csv" for a path ending in .csv (e.g. a synthetic market's users.csv), else "parquet" (a file or folder)."""
    return "csv" if str(users).split("?", 1)[0].endswith(".csv") else "parquet"


def check_users(users: str) -> tuple[int, Optional[pa.Schema]]:
    """Rows of the users dataset and the schema to scan it with (``plain_schema``: None but for Parquet's view
    types); ConfigError naming the file and column if a file cannot feed the run."""
    kind = users_format(users)
    try:
        dataset = pads.dataset(users, format=kind)
        files = list(dataset.files)
    except (OSError, pa.ArrowInvalid) as exc:
        raise ConfigError(f"--users {users}: not a readable {kind} file or folder ({exc})") from None
    if not files:
        raise ConfigError(f"--users {users}: no {kind} files")
    rows, schemas = 0, []
    for file in files:
        try:
            part = pads.dataset(file, format=kind, filesystem=dataset.filesystem)
            schema = part.schema
            schemas.append(schema)
        except (OSError, pa.ArrowInvalid) as exc:
            raise ConfigError(f"{file}: not a readable {kind} file ({exc})") from None
        if "user_id" not in schema.names:
            raise ConfigError(f"{file}: column 'user_id' is missing (columns: {', '.join(schema.names) or 'none'})")
        id_type = schema.field("user_id").type
        if pa.types.is_null(id_type) and not part.count_rows():  # a CSV header alone: no users, as an empty
            continue  # Parquet file (it read "has type null")
        if not (is_text_type(id_type) or pa.types.is_integer(id_type)):
            raise ConfigError(f"{file}: column 'user_id' has type {id_type}; user ids are strings or integers")
        rows += part.count_rows()
    _check_distinct(users, dataset)
    return rows, plain_schema(schemas, ["user_id"]) if kind == "parquet" else None


def _check_distinct(users: str, dataset: pads.Dataset) -> None:
    """Each user once: a user listed twice would get their rows written twice (12 and "12" are one user)."""
    ids = pa.chunked_array([pa.compute.cast(batch.column(0), pa.string())
                            for batch in dataset.to_batches(columns=["user_id"])], type=pa.string())
    counts = pa.compute.value_counts(ids)
    repeated = pa.compute.filter(counts.field("values"), pa.compute.greater(counts.field("counts"), 1))
    if len(repeated):
        raise ConfigError(f"--users {users}: {len(repeated)} user id(s) appear more than once (e.g. "
                          f"{repeated[: 3].to_pylist()}); list each user once")


class Recommender:
    """A Ray Data actor: loads the model once, then ranks each batch of users."""

    def __init__(self, model: str, at: int, k: int, exclude_seen: bool, events: Optional[str],
                 retrieval_candidates: int = 0, live_store: Optional[str] = None, catalog_version: int = 0) -> None:
        catalog = None if live_store is None else CatalogStore(live_store)  # deltas 1..catalog_version applied
        self.ranker = BatchRanker.load(resolve(model), at, retrieval_candidates, catalog,  # the index is built here
                                       catalog_version)
        if events is not None:
            self.ranker.add_logged(events)
        self.k, self.exclude_seen = k, exclude_seen

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        ids = batch["user_id"]
        if ids.isna().any():
            raise ValueError(f"user_id: {int(ids.isna().sum())} empty value(s) in the users dataset")
        users = [str(u) for u in ids.tolist()]  # 12 and "12" are the same id, as everywhere in convfm
        return self.ranker.recommend(users, self.k, self.exclude_seen)


def recommend_batch(model: str, users: str, out: str, k: int, exclude_seen: bool = True,
                    at: Optional[int] = None, workers: Optional[int] = None, batch_size: int = 512,
                    version: Optional[str] = None, address: Optional[str] = None,
                    retrieval_candidates: int = 0) -> dict[str, Any]:
    """Check the inputs, then start or join Ray (``train.cluster.init_ray``) and run; returns the
    ``_SUCCESS.json`` document. ``retrieval_candidates`` K > 0: each user's K retrieval candidates are ranked
    exactly instead of the whole catalog (``BatchRanker``)."""
    import ray

    import batch as batch_package
    from train.cluster import init_ray

    n_users, scan_schema = check_users(users)
    if storage.exists(out):
        raise ConfigError(f"--out {out}: already exists; choose a new folder (outputs are never overwritten)")
    located = locate(model, version)  # pinned: actors started later load this version, not a newer latest
    live_store = live_location(located)
    catalog = CatalogStore(live_store)
    catalog_version = catalog.latest()  # pinned too: deltas written during the run wait for the next one
    # a broken model or delta fails here, in one line (the index: in actors)
    probe = BatchRanker.load(resolve(located), at, catalog=catalog, catalog_version=catalog_version)
    at = probe.at
    if not probe.live.any():
        raise ConfigError(f"--at {micros_iso(at)}: no job of {located}'s catalog is live then (posted by then and not "
                          f"expired{_catalog_dates(probe)}); pass an --at when its jobs were live")
    events = events_location(live_store)  # what the service logged counts as seen, as it does there
    events = str(events) if exclude_seen and list_segments(events) else None
    logged = probe.add_logged(events) if events is not None else 0
    del probe
    init_ray(address, quiet=True, packages=[batch_package])
    if workers is None:
        workers = max(1, int(ray.cluster_resources().get("CPU", 1)) - 1)
    target = out if storage.is_uri(out) else str(_staging(Path(out)))
    started = time.perf_counter()
    if users_format(users) == "csv":
        source = ray.data.read_csv(users, convert_options=pacsv.ConvertOptions(
            include_columns=["user_id"], column_types={"user_id": pa.string()}))
    else:
        source = ray.data.read_parquet(users, columns=["user_id"], schema=scan_schema)
    source.map_batches(
        Recommender, fn_constructor_kwargs={"model": str(located), "at": at, "k": k, "exclude_seen": exclude_seen,
                               "events": events, "retrieval_candidates": retrieval_candidates,
                               "live_store": str(live_store), "catalog_version": catalog_version},
        batch_size=batch_size, batch_format="pandas", compute=ray.data.ActorPoolStrategy(size=workers), num_cpus=1,
    ).write_parquet(target)
    seconds = time.perf_counter() - started
    rows = users_with_rows = 0
    if storage.exists(target):  # Ray Data writes no file (and no folder) when no user got a row
        written = pads.dataset(target, format="parquet")
        rows = written.count_rows()
        users_with_rows = len(pa.compute.unique(written.to_table(columns=["user_id"])["user_id"]))
    elif not storage.is_uri(target):
        Path(target).mkdir()
    summary = {"users": n_users, "users_with_rows": users_with_rows, "rows": rows, "k": k,
               "exclude_seen": exclude_seen, "at": micros_iso(at), "at_micros": at,
               "retrieval_candidates": retrieval_candidates,
               "event_log": events, "logged_pairs_seen": logged,
               "model": str(located), "model_version": model_identity(resolve(located))[1],
               "catalog_version": catalog_version,
               "workers": workers, "seconds": round(seconds, 3),
               "users_per_s_per_worker": round(n_users / max(seconds, 1e-9) / workers, 2)}
    write_json_atomic(storage.join(target, SUCCESS), summary)
    if not storage.is_uri(out):
        Path(target).rename(out)
    return summary


def _catalog_dates(ranker: BatchRanker) -> str:
    """"; the first posted at ..., the last expiring at ..." when the model knows its jobs' windows."""
    recency = ranker.ranker.recency
    if recency is None:
        return ""
    posted, expires = recency.posted[1:], recency.expires[1:]
    posted, expires = posted[posted != ALWAYS], expires[expires != NEVER]
    parts = ([f"the first posted at {micros_iso(posted.min())}"] if len(posted) else []) + \
        ([f"the last expiring at {micros_iso(expires.max())}"] if len(expires) else [])
    return "".join(f"; {part}" if i == 0 else f", {part}" for i, part in enumerate(parts))


def _staging(out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    return out.parent / f".{out.name}.staging-{uuid.uuid4().hex[:8]}"


def parse_time(text: Optional[str]) -> Optional[int]:
    """``--at`` (ISO-8601 date or time, UTC when no zone is given) -> int64 microseconds; None: now."""
    if text is None:
        return None
    try:
        stamp = pd.Timestamp(text)
    except (ValueError, TypeError):
        raise ConfigError(f"--at {text!r}: not a date or time (e.g. 2026-12-01 or 2026-12-01T08:00)") from None
    stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
    return int(np.int64(stamp.value // 1000))
