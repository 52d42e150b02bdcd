"""Time-dependent features: what a user applied to before t, and how old a job is at t.

Both are read *at* a time, so one example (a user and a job at t) sees only the past:
- history (user side): the user's last ``history_length`` positive jobs strictly before t, most recent first,
  encoded by gathering those jobs' rows of the fitted job catalog (ids, companies, locations, skills, text)
  into multi-valued fields that share the job vocabularies, plus the user's activity (positives before t);
- recency (job side): the job's age at t (and, when the jobs table has ``expires_at``, its days left) in
  log-spaced day buckets, and optionally its popularity: the positives it received in the ``window`` days
  before t (``JobPopularity``), in log-spaced count buckets (``convfm.features.recency``).

A history depends only on (user, how many positives before t), so an ``ExampleSet`` holds one encoded row per
distinct state, not per example; recency rows are the few bucket combinations. Buckets make a job's side
piecewise constant in time: ranking recomputes a job's side only when its bucket changes
(``convfm.model.ranking``), so the fast path stays exact without redoing the catalog per request.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from convfm.data.date_columns import order_key
from convfm.features.base import FEW_IDS
from convfm.features.fields import EXTRA_VOCAB, PAD, EncodedTable, FieldSpec, Vocabulary, field_columns

HISTORY_FIELDS = ("history_jobs", "history_companies", "history_locations", "history_skills", "history_text",
                  "activity")
RECENCY_FIELDS = ("job_age", "job_expires_in", "job_popularity")
# history field -> the job field whose catalog values it gathers (multi-valued history fields)
HISTORY_SOURCES = {"history_jobs": "job_id", "history_companies": "company", "history_locations": "job_location",
                   "history_skills": "job_skills", "history_text": "text"}
# ... and, after those, history_<slug> per extra job column of a category or list (job_<slug>, EXTRA_VOCAB)
HISTORY_PREFIX = "history_"
AGE_EDGES_DAYS = (1, 2, 4, 8, 15, 31, 61, 121)  # bucket i holds ages in [edge[i-1], edge[i]) days
EXPIRY_EDGES_DAYS = (1, 3, 7, 15, 31)
POPULARITY_EDGES = tuple(2**i for i in range(10))  # bucket i holds counts in [edge[i-1], edge[i]): 0, 1, 2-3, ... 512+
ACTIVITY_SCALE = float(np.log1p(100.0))  # log1p(positives before t) / this: ~1 for a hundred


def history_field_of(job_field: str) -> str:
    """The history field that gathers extra job field ``job_field`` over a user's recent jobs: job_x -> history_x."""
    return HISTORY_PREFIX + job_field.removeprefix("job_")


def is_history_field(name: str) -> bool:
    """Whether ``name`` is a history field (built-in or of an extra column): read at an example's time."""
    return name in HISTORY_FIELDS or name.startswith(HISTORY_PREFIX)


def bucket_labels(edges: Sequence[int]) -> list[str]:
    """Day-bucket names: "<1d", "1-2d", ..., "121d+"."""
    inner = [f"{a}-{b}d" for a, b in zip(edges[:-1], edges[1:])]
    return [f"<{edges[0]}d", *inner, f"{edges[-1]}d+"]


AGE_VOCAB = Vocabulary(bucket_labels(AGE_EDGES_DAYS))
EXPIRY_VOCAB = Vocabulary(["expired", *bucket_labels(EXPIRY_EDGES_DAYS)])
POPULARITY_VOCAB = Vocabulary(["0", *[f"{a}-{b - 1}" if b - a > 1 else f"{a}" for a, b in
                                      zip(POPULARITY_EDGES[:-1], POPULARITY_EDGES[1:])], f"{POPULARITY_EDGES[-1]}+"])


def example_times(df: pd.DataFrame, what: str) -> Optional[np.ndarray]:
    """The ``timestamp`` column as int64 order keys (dates: microseconds since the epoch); None without it."""
    if "timestamp" not in df.columns:
        return None
    return order_key(df["timestamp"], Path(what), "timestamp")


def now_micros() -> int:
    """The current time as the order key of calendar timestamps (microseconds since the epoch)."""
    return int(pd.Timestamp.now(tz="UTC").value // 1000)


class UserHistory:
    """Each user's positive jobs in time order: what "history at t" reads.

    ``users`` (U,) sorted distinct ids; the jobs of user u are ``jobs[offsets[u]:offsets[u + 1]]`` at ``times``
    (int64 order keys), ascending in time (ties in input order). ``earlier`` (U,) counts positives before the
    kept ones (``latest`` drops them), so activity after them stays the true count.
    """

    def __init__(self, user_ids: np.ndarray, job_ids: np.ndarray, times: np.ndarray,
                 earlier: Optional[dict[str, int]] = None) -> None:
        user_ids, job_ids = np.asarray(user_ids, dtype=object).astype(str), np.asarray(job_ids, dtype=object).astype(str)
        times = np.asarray(times, dtype=np.int64)
        order = np.lexsort((times, user_ids))
        self.jobs, self.times = job_ids[order], times[order]
        sorted_users = user_ids[order]
        self.users, starts = np.unique(sorted_users, return_index=True)
        self.offsets = np.append(starts, len(order)).astype(np.int64)
        self._index = pd.Index(self.users)
        self.earlier = np.array([(earlier or {}).get(u, 0) for u in self.users], dtype=np.int64)
        # (user, time) as one int64 key, ascending: user * width + the time's rank among the distinct event times
        # (an event is before t exactly when its rank is below the count of distinct times before t)
        self._stamps = np.unique(self.times)
        self._width = np.int64(len(self._stamps) + 1)
        user_of = np.repeat(np.arange(len(self.users), dtype=np.int64), np.diff(self.offsets))
        self._keys = user_of * self._width + np.searchsorted(self._stamps, self.times)

    @classmethod
    def from_frame(cls, positives: pd.DataFrame) -> "UserHistory":
        """From (user_id, job_id, timestamp) rows, each a positive."""
        return cls(positives["user_id"].to_numpy(), positives["job_id"].to_numpy(),
                   positives["timestamp"].to_numpy(np.int64))

    @classmethod
    def empty(cls) -> "UserHistory":
        return cls(np.zeros(0, dtype=object), np.zeros(0, dtype=object), np.zeros(0, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.jobs)

    def _positions(self, user_ids: np.ndarray) -> np.ndarray:
        """Each id's position in ``users``, -1 when unknown."""
        ids = np.asarray(user_ids, dtype=object).astype(str)
        if not len(self.users):
            return np.full(len(ids), -1, dtype=np.int64)
        if len(ids) > FEW_IDS:
            return self._index.get_indexer(ids)
        position = np.minimum(np.searchsorted(self.users, ids), len(self.users) - 1)  # users are sorted
        return np.where(self.users[position] == ids, position, -1).astype(np.int64)

    def states(self, user_ids: np.ndarray, times: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(start, count, total) per query (n,): the user's kept positives strictly before t are
        ``jobs[start:start + count]``, ``total`` all of them (with ``earlier``); unknown users -> zeros."""
        position = self._positions(user_ids)
        known = position >= 0
        start = np.where(known, self.offsets[np.maximum(position, 0)], 0)
        count = np.zeros(len(position), dtype=np.int64)
        if known.any():
            before = np.searchsorted(self._stamps, np.asarray(times, np.int64)[known], side="left")
            query = position[known].astype(np.int64) * self._width + before
            count[known] = np.searchsorted(self._keys, query, side="left") - start[known]
        earlier = self.earlier[np.maximum(position, 0)] if len(self.users) else 0
        total = count + np.where(count > 0, earlier, 0)
        return start.astype(np.int64), count, total

    def recent(self, start: np.ndarray, count: np.ndarray, length: int) -> np.ndarray:
        """(n, length) job ids: the last ``length`` of each state's jobs, most recent first ("" padding)."""
        step = np.arange(length, dtype=np.int64)
        index = start[:, None] + count[:, None] - 1 - step[None, :]  # (n, length)
        valid = step[None, :] < count[:, None]
        out = np.full(index.shape, "", dtype=object)
        out[valid] = self.jobs[index[valid]]
        return out

    def latest(self, length: int) -> "UserHistory":
        """Only each user's last ``length`` positives (what serving after the data's end needs)."""
        user_of = np.repeat(np.arange(len(self.users)), np.diff(self.offsets))
        keep = np.arange(len(self.jobs)) >= self.offsets[user_of + 1] - length
        dropped = self.earlier + np.maximum(np.diff(self.offsets) - length, 0)
        return UserHistory(self.users[user_of[keep]], self.jobs[keep], self.times[keep],
                           dict(zip(self.users.tolist(), dropped.tolist())))

    def arrays(self, prefix: str) -> dict[str, np.ndarray]:
        user_of = np.repeat(np.arange(len(self.users)), np.diff(self.offsets))
        return {f"{prefix}.users": self.users[user_of].astype(str), f"{prefix}.jobs": self.jobs.astype(str),
                f"{prefix}.times": self.times, f"{prefix}.earlier": self.earlier}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], prefix: str) -> "UserHistory":
        users = np.unique(arrays[f"{prefix}.users"])
        earlier = dict(zip(users.tolist(), arrays[f"{prefix}.earlier"].tolist()))
        return cls(arrays[f"{prefix}.users"], arrays[f"{prefix}.jobs"], arrays[f"{prefix}.times"], earlier)


class HistoryEncoder:
    """A user's recent positive jobs -> the history fields, gathered from the encoded job catalog.

    ``job_fields`` are the job side's static fields (FeatureMap order); ``encode`` gathers from their encoded
    catalog. Unknown history jobs (catalog row 0) keep the unknown job id (a past event the catalog lacks is
    still activity) and padding elsewhere.
    """

    def __init__(self, length: int, job_fields: Sequence[FieldSpec]) -> None:
        self.length = length
        self.specs = {f.name: f for f in job_fields}
        self.sources = field_columns(job_fields)  # job field -> (kind, column) in the encoded catalog
        self.extra = {history_field_of(f.name): f.name for f in job_fields
                      if f.vocab.startswith(EXTRA_VOCAB) and f.kind != "dense"}  # history field -> job field

    def source(self, name: str) -> str:
        """The job field history field ``name`` gathers."""
        return self.extra.get(name) or HISTORY_SOURCES[name]

    def fields(self) -> list[FieldSpec]:
        """The built-in history fields the job fields allow, the activity count, then one per extra job column of
        a category or list (the values of the user's recent jobs, most frequent first)."""
        out = []
        for name in HISTORY_FIELDS:
            source = HISTORY_SOURCES.get(name)
            if name == "activity":
                out.append(FieldSpec(name, "dense", "user", width=2))
            elif source in self.specs:
                spec = self.specs[source]
                if spec.kind == "dense":
                    out.append(FieldSpec(name, "dense", "user", width=spec.width))
                else:
                    out.append(FieldSpec(name, "multi", "user", spec.vocab, spec.size, max_len=self.length))
        for name, source in self.extra.items():
            spec = self.specs[source]
            out.append(FieldSpec(name, "multi", "user", spec.vocab, spec.size, max_len=self.length))
        return out

    def encode(self, catalog: EncodedTable, rows: np.ndarray, counts: np.ndarray) -> EncodedTable:
        """History rows from catalog rows ``rows`` (R, length) of each state's recent jobs (-1: no job) and its
        positives before t ``counts`` (R,) -> EncodedTable of ``fields()`` (multi lists of ``length``)."""
        present = rows >= 0
        safe = np.where(present, rows, 0)
        multi, dense = [], []
        for spec in self.fields():
            if spec.name == "activity":
                dense.append(np.stack([np.log1p(counts) / ACTIVITY_SCALE, counts == 0], axis=1))
                continue
            kind, column = self.sources[self.source(spec.name)]
            if kind == "categorical":
                multi.append(np.where(present, catalog.cat[safe, column], PAD))  # (R, length)
            elif kind == "multi":
                multi.append(_frequent(catalog.multi[safe, column] * present[:, :, None], self.length))
            else:  # the mean of the recent jobs' vectors
                vectors = catalog.dense[:, column][safe] * present[:, :, None]  # (R, length, width)
                dense.append(vectors.sum(1) / np.maximum(present.sum(1, keepdims=True), 1))
        n = len(rows)
        return EncodedTable(
            np.zeros((n, 0), np.int64),
            np.stack(multi, axis=1).astype(np.int64) if multi else np.zeros((n, 0, 0), np.int64),
            np.concatenate(dense, axis=1).astype(np.float32) if dense else np.zeros((n, 0), np.float32),
        )


def _frequent(values: np.ndarray, length: int) -> np.ndarray:
    """values (R, J, S) ids (PAD = none), jobs most recent first -> (R, length): each row's most frequent
    non-padding ids, ties broken by first appearance (so the most recent jobs' values win)."""
    flat = values.reshape(len(values), int(np.prod(values.shape[1:])))  # -1 is ambiguous with no rows
    out = np.zeros((len(values), length), dtype=np.int64)
    for r, row in enumerate(flat):
        row = row[row != PAD]
        if not len(row):
            continue
        ids, first, counts = np.unique(row, return_index=True, return_counts=True)
        order = np.lexsort((first, -counts))[:length]
        out[r, : len(order)] = ids[order]
    return out


def history_states(history: UserHistory, user_ids: np.ndarray, times: Optional[np.ndarray]
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Distinct history states of queries (n,): (state of each query (n,), start, count, total (S,)).
    ``times`` None means after every known event (serving's snapshot)."""
    if times is None:
        times = np.full(len(user_ids), np.iinfo(np.int64).max, dtype=np.int64)
    start, count, total = history.states(user_ids, times)
    key = np.where(count > 0, start + count, 0)  # distinct per (user, count) as users' spans do not overlap
    unique, first, state = np.unique(key, return_index=True, return_inverse=True)
    return state.astype(np.int64), start[first], count[first], total[first]
