"""Training negatives: for each positive, ``ratio`` catalog jobs its user never interacted with.

Three ways to draw them (``DataConfig.negative_sampling``):
- ``live``: jobs live at the positive's timestamp (``JobWindows``), so no negative was posted after its positive
  or had expired before it. Uniform sampling picks mostly jobs the user could never have seen, which teaches
  the model "old vs new" rather than preference (issue 12: popularity beat ConvFM on the live catalog).
- ``uniform``: any catalog job.
- ``popularity``: jobs in proportion to 1 + their interactions (any event) strictly before the positive's
  timestamp, so the weights never use the future.

Pairs are (user code * n_jobs + job code) int64 keys; every sampled pair is unique and never an interacted pair.
Rejection sampling in a few vectorised rounds; ``live`` then fills what is left exactly, so a live slot is
dropped only when no live unseen job exists.
"""
from __future__ import annotations

import logging
from typing import Optional, Protocol

import numpy as np

from convfm.data.liveness import ALWAYS, NEVER, JobWindows

logger = logging.getLogger(__name__)

_MAX_SAMPLING_ROUNDS = 20


class _Draw(Protocol):
    def __call__(self, rng: np.random.Generator, times: np.ndarray) -> np.ndarray:
        """One candidate catalog code per slot time (U,) -> (U,), -1 where there is none."""


def sample_negatives(positive_keys: np.ndarray, positive_times: np.ndarray, seen_keys: np.ndarray,
                     n_catalog: int, n_jobs: np.int64, ratio: int, seed: int, method: str = "uniform",
                     windows: Optional[JobWindows] = None,
                     events: Optional[tuple[np.ndarray, np.ndarray]] = None) -> tuple[np.ndarray, np.ndarray]:
    """Negative pair keys and their timestamps (each its positive's) for ``ratio`` slots per positive.

    ``seen_keys`` (sorted) are the pairs never to sample; catalog jobs are codes ``0 .. n_catalog - 1``.
    ``windows`` (aligned with the catalog) is needed by ``live``; ``events`` = (timestamps, catalog codes) of
    the interactions, by ``popularity``. Unfillable slots are dropped and counted in one warning.
    """
    if (method == "live" and windows is None) or (method == "popularity" and events is None):
        raise ValueError(f"negative sampling {method!r} needs {'windows' if method == 'live' else 'events'}")
    rng = np.random.default_rng(seed)
    slot_users = np.repeat(positive_keys // n_jobs, ratio)
    slot_times = np.repeat(positive_times, ratio)
    live = _LiveDraw(windows) if method == "live" else None
    if method == "live":
        draw: _Draw = live
    elif method == "popularity":
        draw = _popularity_draw(n_catalog, *events)
    else:
        draw = lambda rng, times: rng.integers(0, n_catalog, size=len(times))  # noqa: E731
    slot_jobs = np.full(len(slot_users), -1, dtype=np.int64)
    accepted = np.zeros(0, dtype=np.int64)  # sorted keys sampled so far; seen_keys is sorted too
    for _ in range(_MAX_SAMPLING_ROUNDS):
        todo = np.flatnonzero(slot_jobs < 0)
        if not len(todo):
            break
        candidates = draw(rng, slot_times[todo])
        cand_keys = slot_users[todo] * n_jobs + candidates
        ok = (candidates >= 0) & ~(in_sorted(cand_keys, seen_keys) | in_sorted(cand_keys, accepted))
        first = np.zeros(len(todo), dtype=bool)
        first[np.unique(cand_keys, return_index=True)[1]] = True  # one draw per new pair this round
        ok &= first
        slot_jobs[todo[ok]] = candidates[ok]
        new = np.sort(cand_keys[ok])
        accepted = np.insert(accepted, np.searchsorted(accepted, new), new)  # O(n), no re-sort
    if live is not None:
        live.fill(rng, slot_users, slot_times, slot_jobs, n_jobs, seen_keys, accepted)
    filled = slot_jobs >= 0
    if not filled.all() and method == "live":
        logger.warning("sampled %d of %d live negatives: %d slot(s) had no live job, unseen by the user, at the "
                       "positive's timestamp", int(filled.sum()), len(filled), int((~filled).sum()))
    elif not filled.all():
        logger.warning("sampled %d of %d negatives: some users have seen almost every job",
                       int(filled.sum()), len(filled))
    return slot_users[filled] * n_jobs + slot_jobs[filled], slot_times[filled]


def in_sorted(values: np.ndarray, sorted_keys: np.ndarray) -> np.ndarray:
    """Whether each of ``values`` is in the sorted array ``sorted_keys``."""
    if not len(sorted_keys):
        return np.zeros(len(values), dtype=bool)
    where = np.minimum(np.searchsorted(sorted_keys, values), len(sorted_keys) - 1)
    return sorted_keys[where] == values


def _popularity_draw(n_catalog: int, event_times: np.ndarray, event_codes: np.ndarray) -> _Draw:
    """P(job) = (1 + its events before t) / (events before t + n_catalog): index i uniform in that total picks
    the i-th earlier event's job, or catalog job i - (events before t)."""
    inside = event_codes >= 0
    order = np.argsort(event_times[inside], kind="stable")
    times, codes = event_times[inside][order], event_codes[inside][order].astype(np.int64)

    def draw(rng: np.random.Generator, at: np.ndarray) -> np.ndarray:
        before = np.searchsorted(times, at, side="left")  # strictly earlier events
        i = np.floor(rng.random(len(at)) * (before + n_catalog)).astype(np.int64)
        return np.where(i < before, _pick(codes, i), i - before)
    return draw


class _LiveDraw:
    """Uniform over the jobs that may be live at t, rejecting those that are not.

    Jobs with both ends known live at t only if posted in (t - longest lifetime, t]: one range in posting
    order. Jobs with an open end (no posted_at, or never expiring) are live at t only if posted by t: a
    second range. With one default lifetime the first range is exactly the live set."""

    def __init__(self, windows: JobWindows) -> None:
        self.start, self.end = windows.start, windows.end  # (N,) int64 microseconds
        bounded = (self.start != ALWAYS) & (self.end != NEVER)
        self.open_codes = _by_start(np.flatnonzero(~bounded), self.start)
        self.bounded_codes = _by_start(np.flatnonzero(bounded), self.start)
        self.open_start = self.start[self.open_codes]
        self.bounded_start = self.start[self.bounded_codes]
        life = self.end[self.bounded_codes] - self.bounded_start
        self.longest = int(life.max()) if len(life) else 0

    def _ranges(self, times: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per time (U,): open jobs [0, n_open), bounded jobs [lo, hi) in posting order."""
        n_open = np.searchsorted(self.open_start, times, side="right")
        lo = np.searchsorted(self.bounded_start, times - self.longest, side="right")
        hi = np.searchsorted(self.bounded_start, times, side="right")
        return n_open, lo, hi

    def _is_live(self, codes: np.ndarray, times: np.ndarray) -> np.ndarray:
        return (self.start[codes] <= times) & (times < self.end[codes])

    def __call__(self, rng: np.random.Generator, times: np.ndarray) -> np.ndarray:
        n_open, lo, hi = self._ranges(times)
        size = n_open + hi - lo
        i = np.floor(rng.random(len(times)) * size).astype(np.int64)
        codes = np.where(i < n_open, _pick(self.open_codes, i), _pick(self.bounded_codes, lo + i - n_open))
        return np.where((size > 0) & self._is_live(codes, times), codes, -1)

    def fill(self, rng: np.random.Generator, slot_users: np.ndarray, slot_times: np.ndarray,
             slot_jobs: np.ndarray, n_jobs: np.int64, seen_keys: np.ndarray, accepted: np.ndarray) -> None:
        """Fill the slots rejection left empty (in place) from their exact live, unseen, unsampled jobs."""
        todo = np.flatnonzero(slot_jobs < 0)
        if not len(todo):
            return
        n_open, lo, hi = self._ranges(slot_times[todo])
        taken: set[int] = set()
        for slot, a, b, c in zip(todo, n_open, lo, hi):
            t = slot_times[slot]
            codes = np.concatenate([self.open_codes[:a], self.bounded_codes[b:c]])
            keys = slot_users[slot] * n_jobs + codes[self._is_live(codes, t)]
            keys = keys[~(in_sorted(keys, seen_keys) | in_sorted(keys, accepted))]
            keys = np.array([k for k in keys.tolist() if k not in taken], dtype=np.int64)
            if len(keys):
                key = int(keys[rng.integers(len(keys))])
                taken.add(key)
                slot_jobs[slot] = key % n_jobs


def _pick(values: np.ndarray, index: np.ndarray) -> np.ndarray:
    """``values[index]`` (int64) with the index clipped into range (0 when ``values`` is empty); the callers
    mask the clipped picks out."""
    if not len(values):
        return np.zeros(len(index), dtype=np.int64)
    return values[np.clip(index, 0, len(values) - 1)].astype(np.int64)


def _by_start(codes: np.ndarray, start: np.ndarray) -> np.ndarray:
    return codes[np.argsort(start[codes], kind="stable")]
