"""When a job can be shown: its live window ``posted_at <= t < expires_at``.

Times are int64 microseconds since the Unix epoch, the order key that ``convfm.data.date_columns.order_key`` gives
date/time timestamps. A job without ``expires_at`` lives ``default_lifetime_days`` after ``posted_at`` (or
forever when that is None); a job without ``posted_at`` has been live since always. Training negatives, the
live-catalog evaluation and the served catalog all ask this one question through ``JobWindows``.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np
import pandas as pd

ALWAYS = np.iinfo(np.int64).min  # start of a job with no posted_at
NEVER = np.iinfo(np.int64).max  # end of a job that never expires
MICROS_PER_DAY = 86_400 * 1_000_000


def to_micros(values: pd.Series) -> np.ndarray:
    """Datetimes (NaT allowed) -> int64 microseconds since the epoch; NaT stays marked as ``ALWAYS``."""
    stamps = pd.to_datetime(values)
    micros = stamps.to_numpy().astype("datetime64[us]").astype(np.int64)
    return np.where(stamps.isna().to_numpy(), ALWAYS, micros)


@dataclasses.dataclass(frozen=True, eq=False)
class JobWindows:
    """Live windows of ``job_ids`` (N,): ``start`` (N,) and ``end`` (N,) int64 microseconds, end exclusive."""

    job_ids: np.ndarray
    start: np.ndarray
    end: np.ndarray

    def __post_init__(self) -> None:
        if not len(self.job_ids) == len(self.start) == len(self.end):
            raise ValueError(f"job_ids/start/end lengths differ: {len(self.job_ids)}/{len(self.start)}/"
                             f"{len(self.end)}")

    def live(self, times: np.ndarray, codes: Optional[np.ndarray] = None) -> np.ndarray:
        """Whether job ``codes`` (U, W) (positions in ``job_ids``; default every job) is live at ``times`` (U,)
        -> (U, W) bool (U, N without codes)."""
        t = np.asarray(times, dtype=np.int64)[:, None]
        if codes is None:
            return (self.start[None, :] <= t) & (t < self.end[None, :])
        codes = np.asarray(codes)
        return (self.start[codes] <= t) & (t < self.end[codes])

    def live_count(self, times: np.ndarray) -> np.ndarray:
        """How many jobs are live at each of ``times`` (U,) -> (U,) int64, in O((U + N) log N)."""
        t = np.asarray(times, dtype=np.int64)
        started = np.searchsorted(np.sort(self.start), t, side="right")
        ended = np.searchsorted(np.sort(self.end), t, side="right")
        return (started - ended).astype(np.int64)

    def age_days(self, times: np.ndarray, codes: np.ndarray) -> np.ndarray:
        """Days since posting of jobs ``codes`` (U, W) at ``times`` (U,); NaN for jobs without posted_at."""
        start = self.start[np.asarray(codes)]
        age = (np.asarray(times, dtype=np.int64)[:, None] - start) / MICROS_PER_DAY
        return np.where(start == ALWAYS, np.nan, age)


def lifetime_ends(start: np.ndarray, lifetime_days: Optional[float]) -> np.ndarray:
    """Ends (n,) of jobs posted at ``start`` (n,) that give no expiry: ``lifetime_days`` later; ``NEVER`` when
    that is None, or for a job without posted_at."""
    start = np.asarray(start, dtype=np.int64)
    if lifetime_days is None:
        return np.full(len(start), NEVER, np.int64)
    lifetime = np.int64(round(lifetime_days * MICROS_PER_DAY))
    return np.where(start == ALWAYS, NEVER, start + lifetime)


def job_windows(jobs: pd.DataFrame, default_lifetime_days: Optional[float]) -> JobWindows:
    """The windows of a validated jobs table (``job_id``, optional ``posted_at`` and ``expires_at``)."""
    n = len(jobs)
    start = to_micros(jobs["posted_at"]) if "posted_at" in jobs else np.full(n, ALWAYS, np.int64)
    end = lifetime_ends(start, default_lifetime_days)
    if "expires_at" in jobs:
        given = to_micros(jobs["expires_at"])
        end = np.where(given == ALWAYS, end, given)  # NaT: the default lifetime
    return JobWindows(jobs["job_id"].to_numpy(), start.astype(np.int64), end.astype(np.int64))
