"""The live catalog's state over one model's catalog: the deltas of ``convfm.store.live_catalog`` applied to a
fitted extractor and the model's side of its rows, one way for a service's ``Scorer`` and a batch run's ranker.
No Ray; the model's parts are passed in."""
from __future__ import annotations

import dataclasses
import logging
import threading
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np
import pandas as pd

from convfm.config import DataConfig
from convfm.data.liveness import ALWAYS, NEVER, lifetime_ends
from convfm.features.context import now_micros
from convfm.store.live_catalog import Delta, dated_times, grown, kept_upserts, upsert_frame, upsert_times

log = logging.getLogger(__name__)


class LiveJobs:
    """The live catalog's state over one model's catalog (a service's Scorer, a batch run's ranker): applied
    ``version``, ``posted``/``expires`` (N,) int64 microseconds per catalog row (``ALWAYS``/``NEVER`` unless the
    live catalog set them) and ``lock`` (apply vs. reads). A job posted without ``expires_at`` closes
    ``lifetime_days`` after its posting, as the model's training data read such a job (its data config's
    ``job_lifetime_days``; None: never)."""

    def __init__(self, n_jobs: int, lifetime_days: Optional[float] = None) -> None:
        self.version, self.lifetime_days = 0, lifetime_days
        self.posted = np.full(n_jobs, ALWAYS, dtype=np.int64)
        self.last_posted = ALWAYS  # at least the latest of ``posted``: no row is scheduled once the clock passes it
        self.expires = np.full(n_jobs, NEVER, dtype=np.int64)
        self.lock = threading.RLock()

    @classmethod
    def of_model(cls, n_jobs: int, data_config: Mapping[str, Any]) -> "LiveJobs":
        """Over a model's catalog of ``n_jobs`` rows, live jobs closing as its ``data_config`` (its saved
        ``data_config.json``; empty: the defaults) read the jobs it trained on."""
        return cls(n_jobs, data_config.get("job_lifetime_days", DataConfig().job_lifetime_days))

    def open_at(self, mask: Optional[np.ndarray], now: Optional[int] = None) -> Optional[np.ndarray]:
        """``mask`` (N,) bool (None: every row) and-ed with "posted and not expired at ``now``"; None when every
        row is. A job upserted with a ``posted_at`` ahead (the service takes up to a day) opens then: it was
        recommended from its upsert on."""
        now = now_micros() if now is None else now
        if (self.expires == NEVER).all() and self.last_posted <= now:  # not a second pass over the rows
            return mask
        alive = (self.expires > now) & (self.posted <= now)
        return alive if mask is None else mask & alive

    def _times(self, recency: Any, row: int) -> tuple[int, int]:
        """A catalog row's (posting, expiry) as served: the calendar's (the model's data, or the live catalog's
        upserts), closed sooner by an ``expire``."""
        if recency is None:
            return int(self.posted[row]), int(self.expires[row])
        return int(recency.posted[row]), min(int(recency.expires[row]), int(self.expires[row]))

    def apply(self, deltas: Sequence[Delta], extractor: Any,
              put_rows: Callable[[np.ndarray], None]) -> tuple[np.ndarray, pd.DataFrame]:
        """``deltas``, in order, exactly as if applied one at a time, upserts first in each: their rows written
        into ``extractor``'s catalog (``put_jobs``: an id it holds is replaced, a new one appended),
        ``put_rows(rows)`` computing the model's side of them (ranker, index), their times recorded; then the
        expirations of ids the catalog holds. A run of deltas is folded first (``_Fold``): a job upserted in
        several is encoded once, with its last content and the times the sequence gives it, so a replica that
        starts after thousands of small deltas encodes each job once, not each delta apart. Returns the upserted
        rows (n,) and their jobs frame (a row may repeat), for what the caller keeps per row (display columns,
        popularity)."""
        rows, frames = [np.zeros(0, dtype=np.int64)], []
        with self.lock:
            for run in delta_runs(deltas, FOLDED_UPSERTS):
                fold = _Fold(self, extractor)
                for delta in run:
                    fold.add(delta)
                run_rows, frame = fold.put(put_rows)
                rows.append(run_rows)
                frames += [frame] if len(frame) else []
                self.version = run[-1].version
        return np.concatenate(rows), pd.concat(frames, ignore_index=True) if frames else upsert_frame(())


FOLDED_UPSERTS = 10_000  # at most this many upserts are folded into one put (a bigger delta goes alone)


def delta_runs(deltas: Sequence[Delta], upserts: int) -> list[list[Delta]]:
    """``deltas`` cut into consecutive runs holding at most ``upserts`` upserts each (or one delta)."""
    runs: list[list[Delta]] = []
    size = 0
    for delta in deltas:
        if not runs or size + len(delta.upsert) > upserts:
            runs.append([])
            size = 0
        runs[-1].append(delta)
        size += len(delta.upsert)
    return runs


@dataclasses.dataclass
class _Folded:
    record: Mapping[str, Any]  # its last upsert
    posted: int
    expires: int  # as that upsert set it (what put_jobs records)
    closed: int  # its row's ``LiveJobs.expires``: that, or a later expire's time


class _Fold:
    """A run of deltas over a ``LiveJobs`` and its extractor, folded to what applying them one by one leaves:
    per job its last upsert and times, and the expirations of rows held before the run."""

    def __init__(self, live: LiveJobs, extractor: Any) -> None:
        self.live, self.extractor = live, extractor
        self.recency = getattr(extractor, "recency_encoder", None)
        self.jobs: dict[str, _Folded] = {}  # in order of first upsert: new ids are appended in that order
        self.closed: dict[int, int] = {}  # catalog row (held before the run, not upserted since) -> expire time
        self.last_posted = ALWAYS  # the latest posting any upsert of the run gave

    def _held(self, job_id: str) -> Optional[tuple[int, int]]:
        """A job's (posting, expiry) as served at this point of the run; None for an id not held."""
        if job_id in self.jobs:
            job = self.jobs[job_id]
            return job.posted, min(job.expires, job.closed) if self.recency is not None else job.closed
        row = self.extractor.job_rows.get(job_id)
        if row is None:
            return None
        posted, expires = self.live._times(self.recency, row)
        closed = self.closed.get(row)
        if closed is not None:
            expires = closed if self.recency is None else min(int(self.recency.expires[row]), closed)
        return posted, expires

    def add(self, delta: Delta) -> None:
        records = kept_upserts(delta.upsert, delta.version)
        ids = [str(j["job_id"]).strip() for j in records]
        held = {j: times for j in ids if (times := self._held(j)) is not None}
        posted, expires = dated_times(ids, *upsert_times(records), held, delta.written_at)
        expires = np.where(expires == NEVER, lifetime_ends(posted, self.live.lifetime_days), expires)
        rows = self.extractor.job_rows
        self.last_posted = max(self.last_posted, int(posted.max(initial=ALWAYS)))
        for job_id, record, p, e in zip(ids, records, posted.tolist(), expires.tolist()):
            self.jobs[job_id] = _Folded(record, p, e, e)
            self.closed.pop(rows.get(job_id, -1), None)
        unknown = 0
        for job_id, time in delta.expire.items():
            if job_id in self.jobs:
                self.jobs[job_id].closed = time
            elif job_id in rows:
                self.closed[rows[job_id]] = time
            else:
                unknown += 1
        if unknown:
            log.info("live catalog v%d expires %d id(s) this catalog does not hold", delta.version, unknown)

    def put(self, put_rows: Callable[[np.ndarray], None]) -> tuple[np.ndarray, pd.DataFrame]:
        """Write the folded run into the extractor and ``put_rows`` -> the upserted rows and their frame."""
        live, jobs = self.live, list(self.jobs.values())
        frame = upsert_frame([j.record for j in jobs])
        rows = np.zeros(0, dtype=np.int64)
        if jobs:
            posted = np.array([j.posted for j in jobs], dtype=np.int64)
            rows = self.extractor.put_jobs(frame, posted, np.array([j.expires for j in jobs], dtype=np.int64))
            put_rows(rows)
            n = len(self.extractor.job_ids)
            live.posted, live.expires = grown(live.posted, n, ALWAYS), grown(live.expires, n, NEVER)
            live.posted[rows], live.expires[rows] = posted, [j.closed for j in jobs]
            live.last_posted = max(live.last_posted, self.last_posted)
        if self.closed:
            live.expires[list(self.closed)] = list(self.closed.values())
        return rows, frame
