"""The serving model's own jobs in time: when each expires by its training data, which of them the live catalog
has replaced, and the time they are read at (``ModelJobs.time``): now, or a replayed log's end.

A daily-trained model's jobs close while it serves, at their data's ``expires_at`` (else ``job_lifetime_days``
after ``posted_at``), and leave ``/recommend``. A model whose jobs have all closed by now (an old log replayed,
the 2024 synthetic demo market) is read at the end of its training data instead: its catalog as it stood then,
ages and closings alike. Read at now, each of its jobs was 121+ days old and closed alike (docs/SERVING.md,
"Live catalog"). A job the live catalog replaced takes its expiry from there, and once it has replaced every
one the clock is now again. Only the model's own jobs are held at the data's end (``hold``): the live catalog's
follow the clock (their ages, expiry and logged positives in real time), while the held jobs' popularity stays
as the log left it.
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np

from convfm.data.liveness import ALWAYS, NEVER


class ModelJobs:
    """Expiry and clock of the first ``n_jobs`` catalog rows (the model's own), from its ``recency`` encoder
    (None: no job calendar, nothing expires), the training positives' ``history_times`` and the end of its
    popularity snapshot (``popularity_end``; None without the feature)."""

    def __init__(self, recency: Optional[Any], history_times: np.ndarray, n_jobs: int,
                 popularity_end: Optional[int] = None) -> None:
        self.recency = recency
        self.expires = None if recency is None else recency.expires[:n_jobs].copy()
        self.data_end = data_end(history_times, None if recency is None else recency.posted, popularity_end)
        self.replaced = np.zeros(n_jobs, dtype=bool)  # rows the live catalog replaced: its expiry alone holds
        self._last = self._last_expiry()

    def replace(self, rows: np.ndarray) -> None:
        """The live catalog replaced these catalog ``rows`` (those past the model's own are ignored). They are no
        longer held: ``RecencyEncoder.put``, which wrote them, released them (``hold`` re-holds only when its time
        changes)."""
        rows = np.asarray(rows, dtype=np.int64)
        self.replaced[rows[rows < len(self.replaced)]] = True
        self._last = self._last_expiry()

    def _last_expiry(self) -> Optional[int]:
        """The latest expiry among the model's jobs the live catalog has not replaced; None when none is left (or
        no calendar). Kept, so that the clock costs nothing per request on a million-job catalog."""
        own = None if self.expires is None else self.expires[1:][~self.replaced[1:]]
        return None if own is None or not len(own) else int(own.max())

    def time(self, now: int) -> int:
        """When the model's jobs are read (their ages, and which have closed): ``now`` while one of them not
        replaced by the live catalog is open by its training data, or when the live catalog replaced them all;
        once every one has closed, the end of that data."""
        if self.data_end is None or self._last is None or self._last > now:
            return now
        return min(now, self.data_end)

    def hold(self, now: int) -> None:
        """Have the job calendar read the model's jobs not replaced by the live catalog at ``time(now)`` while
        that is not now (``RecencyEncoder.hold``; its other rows follow the clock), else none held; costs nothing
        while that stays."""
        at = self.time(now)
        held = NEVER if at == now else at
        if self.recency is not None and held != self.recency.hold_time:
            self.recency.hold(np.flatnonzero(~self.replaced), held)

    def expiry_applies(self, now: int) -> bool:
        """Whether some job of the model's own, not replaced by the live catalog, is open at ``time(now)`` (not so:
        no job calendar, or none open even at the data's end; the jobs then serve as trained)."""
        return self._last is not None and self._last > self.time(now)

    def alive(self, now: int, rows: int) -> Optional[np.ndarray]:
        """(rows,) bool over the catalog: the model's jobs open at ``time(now)``, every row the live catalog added
        or replaced True; None when their expiry does not apply (``expiry_applies``)."""
        if not self.expiry_applies(now):
            return None
        alive = (self.expires > self.time(now)) | self.replaced
        return np.concatenate([alive, np.ones(rows - len(alive), dtype=bool)])

    def expiry(self, row: int, now: int) -> Optional[int]:
        """Catalog row ``row``'s expiry by the model's data while it applies at ``now``; None otherwise (a live
        catalog row, a replaced one, or no expiry applying)."""
        if self.expires is None or row >= len(self.expires) or self.replaced[row] or not self.expiry_applies(now):
            return None
        return int(self.expires[row])


def data_end(positives: np.ndarray, posted: Optional[np.ndarray], popularity_end: Optional[int] = None
             ) -> Optional[int]:
    """When a model's training data ends: its last positive (the users' histories it keeps, or its popularity
    snapshot's last), else, with neither feature, its last job posting; None without a job calendar."""
    if posted is None:
        return None
    posted = posted[posted != ALWAYS]
    last = [int(positives.max())] if len(positives) else []
    last += [] if popularity_end is None or popularity_end == np.iinfo(np.int64).min else [int(popularity_end)]
    return max(last) if last else (int(posted.max()) if len(posted) else None)
