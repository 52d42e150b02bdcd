"""Distributed preparation of job-market data on Ray Data (the pieces: ``convfm.data.market_parts``).

Ray Data reads the interaction log; each batch is typed and its users hashed into buckets; one task per bucket
(``groupby().map_groups``) makes its examples, splits and histories, materialized across the cluster's object
stores (not the driver). The driver reads the catalogs (jobs, users), merges small per-batch summaries (the
training users, per-job counts, split sizes, each user's latest positives), fits the extractor, and hands the
trainer lazy datasets that encode rows as the workers stream them. "global_time" split by fractions finds its
starts over the examples' times by histogram passes (``DatasetTimes``), exactly as in memory.

The driver thus holds what the model artifact holds (catalogs, vocabularies, each user's last
``history_length`` positives), never the log or the examples.
"""
from __future__ import annotations

import copy
import io
import logging
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np
import pandas as pd
import ray
import pyarrow as pa
import pyarrow.parquet as pq
import ray.data

from convfm.config import DataConfig
from convfm.data.date_formats import DateOrder, date_order, numeric_dates
from convfm.data.readers import pandas_csv_options
from convfm.data.liveness import job_windows
from convfm.data.loading import load_job_market, require_extra_columns
from convfm.features.extra_fields import check_warm_start_columns
from convfm.data.market_parts import (
    BUCKET, EXAMPLE_COLUMNS, HISTORY, HISTORY_COUNT, PART, bucket_count, bucket_examples, check_interaction_schemas,
    check_market_config, file_columns, fit_summary, history_rows, interaction_files, latest_positives, locate_error,
    log_columns, merge_latest, split_parts, typed_interactions,
)
from convfm.data.splitting import TRAIN_ONLY, SortedTimes, global_starts, iso_micros, split_periods
from convfm.errors import ConfigError, DataValidationError
from convfm.evaluation.metrics import PopularityBaseline
from convfm.features.context import UserHistory
from convfm.features.jobs import JobFeatureExtractor
from convfm.store.serving_data import SERVING_NAME, display_jobs, payload_of
from train.prepare_distributed import BATCH_ROWS, PATH, DistributedData, ordered_datasets, read_files

log = logging.getLogger(__name__)
HISTOGRAM_BINS = 4096
COMPACT_EVERY = 32  # batch summaries merged into one after this many
EXACT_BELOW = 1 << 16  # a histogram bin holding at most this many times is read whole


def check_market(config: DataConfig) -> tuple[list[Path], list[str]]:
    """Everything checkable before Ray starts: the config, the log's files and their columns. Returns the files
    and the canonical columns they hold."""
    check_market_config(config)
    files = interaction_files(config)
    return files, check_interaction_schemas(files, config)


def _typed(batch: pd.DataFrame, config: DataConfig, buckets: int, dayfirst: bool) -> pd.DataFrame:
    """A batch typed file by file (a batch can span files), an error naming its file's own row; numeric dates
    are read as the whole market's (``dayfirst``), never as one batch alone would prove."""
    if not len(batch):
        return typed_interactions(batch.drop(columns=[PATH]), Path(config.path), config, buckets, dayfirst)
    parts = []
    for name, rows in batch.groupby(PATH, sort=False):
        try:
            parts.append(typed_interactions(rows.drop(columns=[PATH]), Path(str(name)), config, buckets, dayfirst))
        except DataValidationError as error:
            raise locate_error(Path(str(name)), config, error, dayfirst) from None
    return pd.concat(parts, ignore_index=True)


def _log_dates(files: list[Path], column: str) -> list[DateOrder]:
    """What the log's numeric timestamps (02/01/2025) prove of day-first or month-first, per file, from one pass
    over its timestamp column (none when every file is Parquet with typed timestamps: dates, date/times or
    numbers, or no file's first 2,000 timestamps hold a numeric date): with the catalogs' dates, the market is
    read one way, as in memory. Typed batch by batch, a file
    whose days are all up to 12 was read month-first. Text is any other type: pandas 3 and Polars write
    ``large_string``, a categorical ``dictionary<string>``, not only ``string``."""
    if all(p.suffix.lower() == ".parquet" and _typed_time(pq.read_schema(p).field(column).type) for p in files):
        return []
    if not any(numeric_dates(_head(path, column)).any() for path in files):  # ISO text: no second read of the log
        return []  # (a numeric date further on meets the batches' own check, typed_interactions)
    proofs = read_files(files, [column]).map_batches(
        _date_proofs, batch_format="pandas", batch_size=BATCH_ROWS, fn_kwargs={"column": column}).to_pandas()
    orders = []
    for where, rows in proofs.groupby("where", sort=False):
        day, month = (next((v for v in rows[k] if v), None) for k in ("day", "month"))
        orders.append(DateOrder(str(where), bool(rows["numeric"].any()), *((None, v) if v else None
                                                                           for v in (day, month))))
    return orders


def _head(path: Path, column: str, rows: int = 2000) -> pd.Series:
    """The first ``rows`` values of a log file's timestamp ``column``, as text."""
    if path.suffix.lower() == ".parquet":
        first = next(pq.ParquetFile(path).iter_batches(batch_size=rows, columns=[column]), None)
        return pd.Series([], dtype=object) if first is None else first.column(0).to_pandas().astype(object)
    return pd.read_csv(path, usecols=[column], nrows=rows, **pandas_csv_options(path))[column]


def _typed_time(kind: pa.DataType) -> bool:
    """A Parquet timestamp column whose values are no text: nothing in it is a numeric date (02/01/2025)."""
    return any(test(kind) for test in (pa.types.is_timestamp, pa.types.is_date, pa.types.is_integer,
                                       pa.types.is_floating))


def _date_proofs(batch: pd.DataFrame, column: str) -> pd.DataFrame:
    out = []
    for name, rows in batch.groupby(PATH, sort=False):
        order = date_order(rows[column].astype(object).where(rows[column].notna(), None), Path(str(name)), column,
                           rows=False)
        out.append({"where": order.where, "numeric": order.numeric, "day": (order.day_first or (0, ""))[1],
                    "month": (order.month_first or (0, ""))[1]})
    return pd.DataFrame(out, columns=["where", "numeric", "day", "month"])


def _windows_of(jobs: pd.DataFrame) -> pd.DataFrame:
    """What making examples reads of the catalog (ids and live windows): each bucket's task receives it."""
    return jobs[[c for c in ("job_id", "posted_at", "expires_at") if c in jobs.columns]]


def _split_times(examples: ray.data.Dataset, config: DataConfig) -> ray.data.Dataset:
    """The timestamps the split is made on: every example's but ``train_negative_ratio``'s extra negatives."""
    if config.train_negative_ratio is None:
        return examples.select_columns(["timestamp"])
    return examples.map_batches(lambda batch: batch.loc[~batch[TRAIN_ONLY].astype(bool), ["timestamp"]],
                                batch_format="pandas", batch_size=BATCH_ROWS)


def _set_parts(batch: pd.DataFrame, config: DataConfig, starts: tuple[int, int]) -> pd.DataFrame:
    return batch.assign(**{PART: split_parts(batch, config, starts)})


def _summaries(batch: pd.DataFrame, history_length: int) -> pd.DataFrame:
    parts = fit_summary(batch)
    if history_length:
        parts["latest"] = latest_positives(batch, history_length)
    return pd.DataFrame({name: [frame.to_json(orient="split")] for name, frame in parts.items()})


def _encode(batch: pd.DataFrame, extractor: JobFeatureExtractor, part: int, with_frame: bool) -> dict[str, Any]:
    rows = batch[batch[PART] == part].reset_index(drop=True)
    length = extractor.history_length
    recent = (np.stack(rows[HISTORY].to_numpy()) if length and len(rows) else  # none of this split: no lists
              np.full((len(rows), length), "", dtype=object))
    out = extractor.streamed_columns(rows[list(EXAMPLE_COLUMNS)], recent, rows[HISTORY_COUNT].to_numpy())
    out["label"] = rows["label"].to_numpy(np.float32)
    if with_frame:
        out.update(user_id=rows["user_id"].to_numpy(object), job_id=rows["job_id"].to_numpy(object),
                   timestamp=rows["timestamp"].to_numpy(np.int64))
    return out


class DatasetTimes:
    """``TimeOrder`` of the examples' times on the cluster: counts and histograms by passes over the dataset."""

    def __init__(self, times: ray.data.Dataset) -> None:
        self.times = times
        stats = times.map_batches(_extent, batch_format="numpy").to_pandas()
        self.n = int(stats["n"].sum())
        self.low, self.high = (int(stats["low"].min()), int(stats["high"].max())) if self.n else (0, 0)
        self._few = None  # all the times, sorted, when there are few enough to read at once
        if self.n <= EXACT_BELOW:
            self._few = SortedTimes(self.times.to_pandas()["timestamp"].to_numpy(np.int64))
        self._below: dict[int, int] = {}

    def below(self, t: int) -> int:
        if self._few is not None:
            return self._few.below(t)
        if t not in self._below:
            self._below[t] = int(self.times.map_batches(_below, batch_format="numpy", fn_kwargs={"t": t})
                                 .to_pandas()["n"].sum())
        return self._below[t]

    def at(self, j: int) -> int:
        """Narrow [low, high] to the histogram bin holding the j-th time until a bin is small enough to read."""
        if self._few is not None:
            return self._few.at(j)
        low, high, before = self.low, self.high, 0  # before: times below ``low``
        while True:
            edges = _edges(low, high)
            counts = self.times.map_batches(_histogram, batch_format="numpy", fn_kwargs={"edges": edges})
            total = np.sum(np.stack(counts.to_pandas()["counts"].to_numpy()), axis=0)
            cumulative = before + np.cumsum(total)
            b = int(np.searchsorted(cumulative, j, side="right"))
            bin_low, bin_high = int(edges[b]), int(edges[b + 1]) - 1
            inside = int(total[b])
            before = int(cumulative[b] - inside)
            if bin_low == bin_high:  # one time, however many examples hold it
                return bin_low
            if inside <= EXACT_BELOW:
                values = self.times.map_batches(_inside, batch_format="numpy",
                                                fn_kwargs={"low": bin_low, "high": bin_high}).to_pandas()
                return int(np.sort(values["timestamp"].to_numpy(np.int64))[j - before])
            low, high = bin_low, bin_high


def _edges(low: int, high: int) -> np.ndarray:
    """Bin edges over [low, high] (integers, each bin [edges[i], edges[i + 1]))."""
    width = max(1, -(-(high - low + 1) // HISTOGRAM_BINS))
    return low + width * np.arange(-(-(high - low + 1) // width) + 1, dtype=np.int64)


def _extent(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    t = batch["timestamp"]
    return {"n": np.array([len(t)]), "low": np.array([t.min() if len(t) else np.iinfo(np.int64).max]),
            "high": np.array([t.max() if len(t) else np.iinfo(np.int64).min])}


def _below(batch: dict[str, np.ndarray], t: int) -> dict[str, np.ndarray]:
    return {"n": np.array([int((batch["timestamp"] < t).sum())])}


def _histogram(batch: dict[str, np.ndarray], edges: np.ndarray) -> dict[str, np.ndarray]:
    t = batch["timestamp"]
    t = t[(t >= edges[0]) & (t < edges[-1])]
    counts = np.bincount(np.searchsorted(edges, t, side="right") - 1, minlength=len(edges) - 1)
    return {"counts": counts[None, :]}


def _inside(batch: dict[str, np.ndarray], low: int, high: int) -> dict[str, np.ndarray]:
    t = batch["timestamp"]
    return {"timestamp": t[(t >= low) & (t <= high)]}


def _check_extractor(config: DataConfig, options: Optional[Mapping[str, Any]], base: Optional[JobFeatureExtractor],
                     extractor: Optional[JobFeatureExtractor]) -> None:
    """The extractor settings ``prepare_data`` refuses, and those the rows' history columns cannot serve."""
    options = dict(options or {})
    if base is not None and options:
        raise ConfigError(f"warm start: the published extractor has its own options; got extractor options "
                          f"{sorted(options)}")
    for given in (base, extractor):
        if given is not None and given.kind != "jobs":
            raise ConfigError(f"the extractor is of kind {given.kind!r}; this data is of kind 'jobs'")
    settings = {**options, **(base.get_config() if base is not None else {}),
                **(extractor.get_config() if extractor is not None else {})}
    if settings.get("popularity_days") is not None:
        raise ConfigError("popularity_days: distributed preparation of job-market data cannot count job "
                          "popularity; prepare in memory", field="popularity_days")
    if base is not None:
        check_warm_start_columns(config.extra_columns, base.extra_columns)
    length = settings.get("history_length", config.history_length)
    if length != config.history_length:
        raise ConfigError(f"history_length: the extractor keeps {length} positives, the data config "
                          f"{config.history_length}; they must agree", field="history_length")


def _date_starts(config: DataConfig) -> Optional[tuple[int, int]]:
    if config.split == "global_time" and config.valid_start and config.test_start:
        return iso_micros(config.valid_start), iso_micros(config.test_start)
    return None


def prepare_market_distributed(config: DataConfig, extractor_options: Optional[Mapping[str, Any]] = None,
                               base: Optional[JobFeatureExtractor] = None,
                               extractor: Optional[JobFeatureExtractor] = None) -> DistributedData:
    """Check the log's files (before any work), make the examples on the cluster, fit on the training split
    (unless ``extractor``, a resumed run's, is given) and return the lazy datasets the workers stream, with the
    popularity baseline validation compares against and ``serving.json``'s document. Ray must be running."""
    files, present = check_market(config)
    buckets = bucket_count(files)
    _check_extractor(config, extractor_options, base, extractor)
    names = log_columns(config, file_columns(files[0]), files[0])
    market = load_job_market(config, interactions=False, log_dates=_log_dates(files, names["timestamp"]))
    fitted = extractor if extractor is not None else base
    if fitted is not None:
        require_extra_columns(market, fitted.extra_columns, "the model")
    windows = job_windows(market.jobs, config.job_lifetime_days)
    starts = _date_starts(config)
    with ordered_datasets():
        typed = read_files(files, [names[c] for c in present]).map_batches(
            _typed, batch_format="pandas", batch_size=BATCH_ROWS,
            fn_kwargs={"config": config, "buckets": buckets, "dayfirst": market.day_first})
        examples = typed.groupby(BUCKET).map_groups(
            bucket_examples, batch_format="pandas",
            fn_kwargs={"jobs": _windows_of(market.jobs), "config": config, "starts": starts},
        ).materialize()
        if config.split == "global_time" and starts is None:
            starts = global_starts(DatasetTimes(_split_times(examples, config).materialize()), config)
            examples = examples.map_batches(_set_parts, batch_format="pandas",
                                            fn_kwargs={"config": config, "starts": starts}).materialize()
        summary = _merged_summaries(examples, config.history_length)
        parts = summary["parts"]
        rows = {p: int(parts.loc[parts[PART] == p, "rows"].sum()) for p in (0, 1, 2)}
        if not rows[0]:
            raise ConfigError(f"{config.path}: the training split has no examples")
        if extractor is None:
            options = {"history_length": config.history_length, "recency": config.recency,
                       "popularity_days": None, "extra_columns": config.extra_columns, **dict(extractor_options or {})}
            options = options if base is None else base.get_config()
            extractor = JobFeatureExtractor(**options).fit(market.jobs, _training_ids(summary), market.users,
                                                           windows, base)
        encoder = copy.copy(extractor)  # what encoding tasks receive: rows bring their own history
        encoder.history = UserHistory.empty()
        if "latest" in summary:
            extractor.history = summary["latest"]
        train = examples.map_batches(_encode, batch_format="pandas", batch_size=BATCH_ROWS,
                                     fn_kwargs={"extractor": encoder, "part": 0, "with_frame": False})
        valid = examples.map_batches(_encode, batch_format="pandas", batch_size=BATCH_ROWS,
                                     fn_kwargs={"extractor": encoder, "part": 1, "with_frame": True})
    popularity = _popularity(summary)
    valid_labels = {float(r["label"]): int(r["rows"]) for _, r in parts[parts[PART] == 1].iterrows()}
    seen = (extractor.history.arrays("h") if "latest" in summary else {"h.users": [], "h.jobs": []})
    serving = payload_of(display_jobs(market.jobs),
                         pd.DataFrame({"user_id": seen["h.users"], "job_id": seen["h.jobs"]}).drop_duplicates(),
                         popularity)
    log.info("prepared on the cluster: %d / %d / %d examples (train / valid / test), %d training users in %d "
             "buckets, split starts %s", rows[0], rows[1], rows[2], len(summary["users"]), buckets, starts)
    periods = split_periods(starts, [rows[p] for p in (0, 1, 2)]) if config.split == "global_time" else None
    return DistributedData(config, extractor, {"train": train, "valid": valid}, rows[0], valid_labels,
                           popularity=popularity, extra_json={SERVING_NAME: serving}, split_periods=periods)


def _merged_summaries(examples: ray.data.Dataset, history_length: int) -> dict[str, Any]:
    """The per-batch summaries merged as they arrive (compacted every ``COMPACT_EVERY`` batches, so the driver
    holds about one merged summary): users by first training time, per-job and per-part sums, latest positives."""
    batches = examples.map_batches(_summaries, batch_format="pandas", batch_size=BATCH_ROWS,
                                   fn_kwargs={"history_length": history_length})
    pending: dict[str, list[pd.DataFrame]] = {}
    for row in batches.iter_rows():
        for name, text in row.items():
            parts = pending.setdefault(name, [])
            parts.append(pd.read_json(io.StringIO(text), orient="split", dtype=False))
            if len(parts) >= COMPACT_EVERY:
                pending[name] = [_compact(name, parts, history_length)]
    frames = {name: _compact(name, parts, history_length) for name, parts in pending.items()}
    out: dict[str, Any] = {
        "users": frames["users"].sort_values(["timestamp", "user_id"], kind="stable")["user_id"].tolist(),
        "jobs": frames["jobs"], "parts": frames["parts"],
    }
    if history_length:
        out["latest"] = merge_latest([frames["latest"]], history_length)
    return out


def _compact(name: str, parts: list[pd.DataFrame], history_length: int) -> pd.DataFrame:
    """Summaries of one kind (``fit_summary``'s, or "latest") merged into one."""
    frame = pd.concat(parts, ignore_index=True)
    if name == "users":
        frame = frame.astype({"user_id": str, "timestamp": np.int64})
        return frame.groupby("user_id", sort=False)["timestamp"].min().reset_index()
    if name == "jobs":
        frame = frame.astype({"job_id": str, "positives": np.int64, "examples": np.int64})
        return frame.groupby("job_id", sort=False).sum().reset_index()
    if name == "parts":
        return frame.astype({PART: np.int64, "label": float, "rows": np.int64, "extra": np.int64}).groupby(
            [PART, "label"]).sum().reset_index()
    frame = frame.astype({"user_id": str, "job_id": str, "timestamp": np.int64, "earlier": np.int64})
    return history_rows(merge_latest([frame], history_length))


def _training_ids(summary: Mapping[str, Any]) -> pd.DataFrame:
    """The ids with a training example, as the frame ``JobFeatureExtractor.fit`` reads them (the two id lists
    padded to one length by repeating their first value: fitting reads which ids occur, in first-seen order)."""
    users, jobs = summary["users"], summary["jobs"]["job_id"].tolist()
    n = max(len(users), len(jobs))
    return pd.DataFrame({"user_id": users + users[:1] * (n - len(users)), "job_id": jobs + jobs[:1] * (n - len(jobs))})


def _popularity(summary: Mapping[str, Any]) -> PopularityBaseline:
    jobs, parts = summary["jobs"], summary["parts"]
    train = parts[parts[PART] == 0]
    shown = train["rows"] - train["extra"]  # train_negative_ratio's extra negatives do not count
    prior = float((train["label"] > 0).astype(float) @ train["rows"]) / float(shown.sum())
    return PopularityBaseline.from_counts(prior, jobs["job_id"].to_numpy(object), jobs["positives"].to_numpy(),
                                          jobs["examples"].to_numpy())
