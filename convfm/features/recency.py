"""Job-side time features: a job's age at t, its days to expiry, and its popularity (positives in the window
before t), as buckets (see ``convfm.features.context``). A job's side is piecewise constant in time, so ranking
recomputes it only when a bucket changes: ``RecencyEncoder.next_changes`` says when a job's age or days left can
next change, ``JobPopularity.moved`` which jobs' counts events moved.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from convfm.data.liveness import ALWAYS, MICROS_PER_DAY, NEVER
from convfm.features.base import with_room
from convfm.features.context import (AGE_EDGES_DAYS, AGE_VOCAB, EXPIRY_EDGES_DAYS, EXPIRY_VOCAB, POPULARITY_EDGES,
                                     POPULARITY_VOCAB)
from convfm.features.fields import UNK, EncodedTable, FieldSpec


FEW_ROWS = 4096  # up to this many rows, counts at one time search per row rather than count the whole window
TOUCHED_KEPT = 64  # logged-positive changes a reader can catch up on row by row (older: it reads every row)


def _buckets(days: np.ndarray, edges: Sequence[int]) -> np.ndarray:
    """Bucket position (0-based) of each day count."""
    return np.searchsorted(np.asarray(edges, dtype=np.float64), days, side="right")


class _EventIndex:
    """(row, time) events as one sorted int64 key: row * width + the time's rank among the distinct event times,
    so "events of row r before t" is one binary search."""

    def __init__(self, rows: np.ndarray, times: np.ndarray) -> None:
        self.rows, self.times = rows, times
        self._stamps = np.unique(times)
        self._width = np.int64(len(self._stamps) + 1)
        self._keys = np.sort(rows * self._width + np.searchsorted(self._stamps, times))
        order = np.argsort(times, kind="stable")
        self._by_time, self._rows_by_time = times[order], rows[order]

    def between(self, rows: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
        """Events of each of ``rows`` with start <= time < end (arrays of one shape)."""
        before = lambda t: np.searchsorted(  # noqa: E731
            self._keys, rows * self._width + np.searchsorted(self._stamps, t, side="left"), side="left")
        return before(end) - before(start)

    def between_at(self, rows: np.ndarray, start: int, end: int) -> np.ndarray:
        """``between`` for one interval: a count of the events in it per row (O(events in it + rows)), not a
        search per row."""
        low, high = np.searchsorted(self._by_time, [start, end], side="left")
        inside = self._rows_by_time[low:high]
        counts = np.bincount(inside, minlength=int(rows.max(initial=0)) + 1)
        return counts[rows]

    def rows_between(self, start: int, end: int) -> np.ndarray:
        """The rows of the events with start <= time < end (repeats kept)."""
        low, high = np.searchsorted(self._by_time, [start, end], side="left")
        return self._rows_by_time[low:high]


class JobPopularity:
    """How many positives each catalog job received in the ``window_days`` before t (strictly before: an
    example never counts its own event), from (catalog row, time) events: the training data's positives (``set``),
    then, while serving, the logged ones as they arrive (``add``). Added events go to a small second index,
    merged into the first once it holds an eighth as many, so an event costs a re-sort of the small one.
    ``changes`` counts ``set`` and ``add``, and ``touched_since`` names the rows whose counts an ``add`` changed
    since a reader's count (time moves them too: ``moved``)."""

    def __init__(self, window_days: float) -> None:
        self.window = int(round(float(window_days) * MICROS_PER_DAY))
        self.changes, self._touched = 0, []  # _touched: (changes, rows an add counted), the last TOUCHED_KEPT
        self.set(np.zeros(0, np.int64), np.zeros(0, np.int64))

    @property
    def rows(self) -> np.ndarray:
        return np.concatenate([self._base.rows, self._added.rows])

    @property
    def times(self) -> np.ndarray:
        return np.concatenate([self._base.times, self._added.times])

    def set(self, rows: np.ndarray, times: np.ndarray) -> None:
        """The events of a snapshot (training data), replacing any; ``end`` is its last event's time."""
        self._index(np.asarray(rows, np.int64).ravel(), np.asarray(times, np.int64).ravel())
        self._snapshot = self._base
        self.end = int(self._base.times.max(initial=np.iinfo(np.int64).min))
        self.changes, self._touched = self.changes + 1, []

    def reset(self) -> None:
        """Back to the snapshot: every ``add`` since is dropped (serving counts the logged positives again from
        an overlay that holds other events: ``serve.events``)."""
        self._base = self._snapshot
        self._added = _EventIndex(np.zeros(0, np.int64), np.zeros(0, np.int64))
        self.changes, self._touched = self.changes + 1, []

    def _index(self, rows: np.ndarray, times: np.ndarray) -> None:
        self._base = _EventIndex(rows, times)
        self._added = _EventIndex(np.zeros(0, np.int64), np.zeros(0, np.int64))

    def add(self, rows: np.ndarray, times: np.ndarray) -> None:
        """Logged positives, counted from now on (``end`` stays the snapshot's)."""
        new = np.asarray(rows, np.int64).ravel()
        if not len(new):
            return
        rows = np.concatenate([self._added.rows, new])
        times = np.concatenate([self._added.times, np.asarray(times, np.int64).ravel()])
        if len(rows) > max(1024, len(self._base.rows) // 8):
            self._index(np.concatenate([self._base.rows, rows]), np.concatenate([self._base.times, times]))
        else:
            self._added = _EventIndex(rows, times)
        self.changes += 1
        self._touched = (self._touched + [(self.changes, np.unique(new))])[-TOUCHED_KEPT:]

    def touched_since(self, changes: int) -> Optional[np.ndarray]:
        """The rows (sorted) whose counts ``add`` changed after a reader's ``changes``; None when that is not
        known (a snapshot set since, or too long ago): every row may have."""
        kept = [rows for change, rows in self._touched if change > changes]
        if len(kept) != self.changes - changes:
            return None
        return np.unique(np.concatenate(kept)) if kept else np.zeros(0, np.int64)

    def counts(self, rows: np.ndarray, times: np.ndarray | int) -> np.ndarray:
        """Positives of catalog ``rows`` in [t - window, t), t scalar or per row -> int64, same shape."""
        rows, times = np.asarray(rows, np.int64), np.asarray(times, np.int64)
        out = np.zeros(rows.shape, np.int64)
        for index in (self._base, self._added):
            if not len(index.rows):
                continue
            if times.ndim == 0 and len(rows) > FEW_ROWS:  # a catalog at one time (serving): count the window
                out += index.between_at(rows, int(times) - self.window, int(times))
            else:
                t = np.broadcast_to(times, rows.shape)
                out += index.between(rows, t - self.window, t)
        return out

    def moved(self, start: int, end: int) -> np.ndarray:
        """The rows (sorted) whose count may differ between times ``start`` <= ``end``: those of the events that
        entered the window ([start, end)) or left it ([start - window, end - window)) in between."""
        parts = [index.rows_between(a, b) for index in (self._base, self._added)
                 for a, b in ((start, end), (start - self.window, end - self.window))]
        return np.unique(np.concatenate(parts))

    def recent(self, end: int) -> tuple[np.ndarray, np.ndarray]:
        """(rows, times) of the events in the window before ``end`` and after it: what serving from ``end``
        on reads (the artifact keeps these, not the whole log)."""
        rows, times = self.rows, self.times
        kept = times >= end - self.window
        return rows[kept], times[kept]


class RecencyEncoder:
    """Job age (and days to expiry, and popularity) at t, per catalog row, as rows of a small table of bucket
    combinations.

    ``posted``/``expires`` (N,) int64 microseconds aligned with the job catalog (``ALWAYS``: no posted_at,
    ``NEVER``: no expiry); ``expiry`` says whether the field ``job_expires_in`` exists; ``popularity`` (None:
    no ``job_popularity`` field) counts each job's recent positives. Rows ``hold`` names are read at its time at
    the latest, whatever time is asked (a replayed log's own jobs, while the live catalog's follow the clock).
    """

    def __init__(self, posted: np.ndarray, expires: np.ndarray, expiry: bool,
                 popularity: Optional[JobPopularity] = None) -> None:
        self.posted, self.expires = np.asarray(posted, np.int64), np.asarray(expires, np.int64)
        self.expiry, self.popularity = expiry, popularity
        self.n_age, self.n_exp = len(AGE_VOCAB) - 1, (len(EXPIRY_VOCAB) - 1 if expiry else 1)  # values from UNK
        self.n_pop = len(POPULARITY_VOCAB) - 1 if popularity is not None else 1
        self.table = self._combinations()
        self.held, self.hold_time, self._holds = np.zeros(len(self.posted), dtype=bool), NEVER, 0
        self._room = (self.posted, self.expires, self.held)  # posted/expires/held are views of these (see put)

    def put(self, rows: np.ndarray, posted: np.ndarray, expires: np.ndarray) -> None:
        """Set the windows of catalog ``rows`` (n,), no longer held; rows past the end extend the catalog
        (buffers double)."""
        n = max(len(self.posted), int(np.max(rows, initial=-1)) + 1)
        room = tuple(with_room(buffer, n) for buffer in self._room)
        room[0][rows], room[1][rows], room[2][rows] = posted, expires, False
        self._room, (self.posted, self.expires, self.held) = room, (buffer[:n] for buffer in room)

    def hold(self, rows: np.ndarray, time: int) -> None:
        """Read catalog ``rows`` (n,) at ``time`` at the latest, every other row at the time asked; ``NEVER``
        releases every row. ``changes`` counts it: a ranker reads the buckets again."""
        self.held[:] = False
        if time != NEVER:
            self.held[rows] = True
        self.hold_time, self._holds = int(time), self._holds + 1

    def _read_times(self, job_rows: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, Optional[np.ndarray]]:
        """(the time each of ``job_rows`` is read at, for ``t``; the rows held before t, or None when none is)."""
        held = self.held[job_rows] & (t > self.hold_time) if self.hold_time != NEVER else None
        if held is None or not held.any():
            return t, None
        return np.where(held, self.hold_time, t), held

    def fields(self) -> list[FieldSpec]:
        specs = [FieldSpec("job_age", "categorical", "job", "age", len(AGE_VOCAB))]
        if self.expiry:
            specs.append(FieldSpec("job_expires_in", "categorical", "job", "expires_in", len(EXPIRY_VOCAB)))
        if self.popularity is not None:
            specs.append(FieldSpec("job_popularity", "categorical", "job", "popularity", len(POPULARITY_VOCAB)))
        return specs

    def _combinations(self) -> EncodedTable:
        """Every bucket combination: row r = ((age index - 1) * n_exp + (expiry index - 1)) * n_pop
        + (popularity index - 1)."""
        index = np.arange(self.n_age * self.n_exp * self.n_pop)
        columns = [UNK + index // (self.n_exp * self.n_pop)]
        if self.expiry:
            columns.append(UNK + index // self.n_pop % self.n_exp)
        if self.popularity is not None:
            columns.append(UNK + index % self.n_pop)
        rows = len(index)
        return EncodedTable(np.stack(columns, axis=1).astype(np.int64), np.zeros((rows, 0, 0), np.int64),
                            np.zeros((rows, 0), np.float32))

    def rows(self, job_rows: np.ndarray, times: np.ndarray | int) -> np.ndarray:
        """Recency-table row of catalog rows ``job_rows`` at ``times`` (scalar or per job) -> same shape."""
        job_rows = np.asarray(job_rows, dtype=np.int64)
        asked = np.asarray(times, dtype=np.int64)
        t, held = self._read_times(job_rows, asked)
        posted, expires = self.posted[job_rows], self.expires[job_rows]
        age_days = np.maximum(t - posted, 0) / MICROS_PER_DAY  # a job shown before its posting counts as new
        age = np.where(posted == ALWAYS, UNK, UNK + 1 + _buckets(age_days, AGE_EDGES_DAYS))
        index = (age - UNK) * self.n_exp
        if self.expiry:
            left = (expires - t) / MICROS_PER_DAY
            bucket = np.where(left <= 0, 0, 1 + _buckets(np.maximum(left, 0), EXPIRY_EDGES_DAYS))
            index = index + np.where(expires == NEVER, 0, 1 + bucket)
        if self.popularity is not None:
            if held is not None and asked.ndim == 0:  # two counts over the whole catalog, not a search per row
                count = np.where(held, self.popularity.counts(job_rows, self.hold_time),
                                 self.popularity.counts(job_rows, asked))
            else:
                count = self.popularity.counts(job_rows, t)
            index = index * self.n_pop + 1 + np.searchsorted(POPULARITY_EDGES, count, side="right")
        return index.astype(np.int64)

    @property
    def changes(self) -> tuple[int, int]:
        """(holds, changes to the jobs' popularity: ``JobPopularity.changes``): what a reader must catch up on
        beyond time itself (``touched_since``)."""
        return self._holds, 0 if self.popularity is None else self.popularity.changes

    def touched_since(self, changes: tuple[int, int]) -> Optional[np.ndarray]:
        """The rows whose buckets may have changed since a reader's ``changes`` at the same time (the rows of
        logged positives); None: every row may have (a hold, a new snapshot)."""
        if changes[0] != self._holds:
            return None
        return np.zeros(0, np.int64) if self.popularity is None else self.popularity.touched_since(changes[1])

    def next_changes(self, job_rows: np.ndarray, t: int) -> np.ndarray:
        """Per row of ``job_rows`` (n,), the first time after ``t`` at which its age or days-left bucket may differ
        from the one at t -> (n,) int64, ``NEVER`` where none can: its age reaching the next day edge, its days
        left falling below the next edge (31, 15, 7, 3, 1) or to 0. Popularity moves with the events instead
        (``JobPopularity.moved``); a row held before t moves no more."""
        job_rows, t = np.asarray(job_rows, dtype=np.int64), int(t)
        out = np.full(len(job_rows), NEVER, dtype=np.int64)
        posted = self.posted[job_rows]
        dated = posted != ALWAYS
        edges = np.asarray(AGE_EDGES_DAYS, dtype=np.int64) * MICROS_PER_DAY
        edge = np.searchsorted(edges, np.maximum(t - posted[dated], 0), side="right")  # the next edge of each age
        out[dated] = np.where(edge < len(edges), posted[dated] + edges[np.minimum(edge, len(edges) - 1)], NEVER)
        if self.expiry:
            expires = self.expires[job_rows]
            open_ = (expires != NEVER) & (expires > t)
            edges = np.asarray(EXPIRY_EDGES_DAYS, dtype=np.int64) * MICROS_PER_DAY
            left = np.searchsorted(edges, expires[open_] - t, side="right")  # edges at or below the time left
            below = np.where(left > 0, expires[open_] - edges[np.maximum(left - 1, 0)] + 1, expires[open_])
            out[open_] = np.minimum(out[open_], below)
        held = self._read_times(job_rows, np.asarray(t))[1]
        if held is not None:
            out[held] = NEVER
        return out
