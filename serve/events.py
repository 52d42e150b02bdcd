"""Feedback events in the service: the records ``POST /events`` writes, and ``LiveEvents``, the overlay of
logged events that every ranking replica applies on top of whatever model version it serves.

An event counts at once, before any retraining: every type (view, click, save, apply, dismiss) marks the job
seen for ``exclude_seen`` (as every interaction of the training data does in ``serving.json``), and the types
the model was trained to treat as positive (its data config's ``positive_events``, apply and save by default:
the same events its history features were built from) are prepended to the user's stored history and counted
in the jobs' popularity (when the model has that feature).

Replicas learn of new segments two ways: the ingress broadcasts each one after writing it, and every request
carries the ingress's log position (its segment count); a replica that holds fewer segments (started later,
missed a broadcast) reads the ones it lacks before answering. Applying a segment twice changes nothing.
Plain Python, no Ray.
"""
from __future__ import annotations

import asyncio
import bisect
import datetime as dt
import logging
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Container, Mapping, Optional, Sequence

import numpy as np
import pandas as pd

from convfm.config import EVENTS
from convfm.data.liveness import ALWAYS
from convfm.errors import DataValidationError, StorageError
from convfm.store import event_log, log_bundles
from convfm.store.log_mark import LogMark, segments_through
from serve.replies import ServiceError

log = logging.getLogger(__name__)
IMPRESSION_FLUSH_S, IMPRESSION_BATCH = 2.0, 500  # impression records wait at most this long, or this many
CLOSE_SETTLE_S = 2.0  # a stopping Api waits this long for each log's bundle writes in flight
DEDUPE_DAYS = 7.0  # ``ServeConfig.event_dedupe_days``: how long a stored event id is recognised in a retry


def event_records(events: Sequence[Any], known: Optional[Mapping[str, Optional[int]]]) -> list[dict[str, Any]]:
    """Log records of validated ``serve.schemas.Event`` objects; ``known``: job id -> its posting time in the
    serving catalog, None for a job it does not hold (``Scorer.known_jobs``; ``known`` None when no replica could
    say: the records then carry ``known_job: null``)."""
    received = event_log.iso(dt.datetime.now(dt.timezone.utc))
    return [{"event_id": e.event_id, "type": e.type, "user_id": e.user_id, "job_id": e.job_id,
             "timestamp": event_log.iso(e.timestamp), "impression_id": e.impression_id,
             "model_version": e.model_version,
             "known_job": None if known is None else known.get(e.job_id) is not None,
             "received_at": received} for e in events]


def before_posting(events: Sequence[Any], known: Optional[Mapping[str, Optional[int]]]) -> list[str]:
    """The ids of ``events`` dated before their job's posting: evaluation skips such an event (it ranks the jobs
    live then), and training reads the job as just posted."""
    posted = {} if known is None else known
    return [e.event_id for e in events
            if posted.get(e.job_id) not in (None, ALWAYS) and event_log.micros(e.timestamp) < posted[e.job_id]]


class EventWriter:
    """The ingress's side of the event log (opened on first use, reading back the event ids of the last
    ``dedupe_days``; None: every one) and of the impression log beside it: appends run off the event loop, and a
    store that fails is a 503 (nothing acknowledged), never a 500."""

    def __init__(self, live_store: Optional[str | Path], dedupe_days: Optional[float] = DEDUPE_DAYS) -> None:
        self.root = None if live_store is None else event_log.events_location(live_store)
        self.window_s = None if dedupe_days is None else dedupe_days * 86_400.0
        self._log: Optional[event_log.EventLog] = None
        self._shown = None if self.root is None else event_log.EventLog(event_log.impressions_location(self.root),
                                                                         dedupe=False)
        self._opening = asyncio.Lock()
        # writes in call order: impressions flushed before a body of events are stored before those events
        self._writing = asyncio.Lock()
        self._impressions: list[dict[str, Any]] = []  # not yet written (best effort: lost if the process dies)
        self._since = time.monotonic()
        self._timer: Optional[asyncio.Task] = None  # writes the buffer IMPRESSION_FLUSH_S after its first record

    def impression(self, result: dict[str, Any]) -> dict[str, Any]:
        """``result`` (a /recommend answer) with a fresh ``impression_id``; its impression record is buffered
        for the log (``flush``)."""
        result = {**result, "impression_id": uuid.uuid4().hex}
        if self.root is not None:
            if not self._impressions:
                self._since = time.monotonic()
                self._arm_timer()
            self._impressions.append({
                "event_id": result["impression_id"], "type": event_log.IMPRESSION, "user_id": result["user_id"],
                "job_ids": [i["job_id"] for i in result["items"]], "model_version": result["model_version"],
                "timestamp": event_log.iso(dt.datetime.now(dt.timezone.utc)), "fallback": result.get("fallback")})
        return result

    def _arm_timer(self) -> None:
        """Write the buffer ``IMPRESSION_FLUSH_S`` from now even if no request comes to do it (an idle service
        kept its last impressions until the next request, and lost them at shutdown)."""
        if self._timer is not None and not self._timer.done():
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # called outside an event loop (tests): requests and close() still write it
            return
        self._timer = loop.create_task(self._flush_after(IMPRESSION_FLUSH_S))

    async def _flush_after(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        await self.flush()

    async def close(self) -> None:
        """Write what is buffered (the service is stopping), stop the timer, and give bundle writes in flight a
        moment to finish (``EventLog.settle``)."""
        if self._timer is not None and not self._timer.done() and self._timer is not asyncio.current_task():
            self._timer.cancel()
        await self.flush()
        for writer in (self._log, self._shown):
            if writer is not None:
                await asyncio.to_thread(writer.settle, CLOSE_SETTLE_S)

    def due(self, every_s: float = IMPRESSION_FLUSH_S, most: int = IMPRESSION_BATCH) -> bool:
        """Whether buffered impressions should be written now (the oldest waited ``every_s``, or ``most``)."""
        return bool(self._impressions) and (len(self._impressions) >= most or time.monotonic() - self._since >= every_s)

    async def flush(self) -> None:
        """Write the buffered impressions as one segment of the impression log; on a store failure they are
        dropped (logged)."""
        async with self._writing:
            pending, self._impressions = self._impressions, []
            if not pending or self._shown is None:
                return
            try:
                await self._storing(self._shown.append, pending)
            except ServiceError:
                log.warning("dropped %d impression record(s): the impression log is unavailable", len(pending))

    async def _open(self) -> event_log.EventLog:
        if self.root is None:
            raise ServiceError(503, "no event log: this service was started without a live store")
        async with self._opening:
            if self._log is None:
                self._log = await self._storing(event_log.EventLog.open, self.root, self.window_s)
        return self._log

    async def _storing(self, function: Any, *args: Any) -> Any:
        try:
            return await asyncio.to_thread(function, *args)
        except (StorageError, DataValidationError, OSError) as exc:
            log.warning("event log %s unavailable: %s", self.root, exc)
            raise ServiceError(503, "event log unavailable; nothing was stored, retry") from None

    async def position(self) -> Optional[int]:
        """The log's segment count, for replicas to compare with theirs; None when there is no readable log."""
        try:
            return (await self._open()).position
        except ServiceError:
            return None

    async def append(self, events: Sequence[Any],
                     known: Optional[Mapping[str, Optional[int]]]) -> tuple[dict[str, Any], event_log.Appended]:
        """Store ``events``; returns the ``EventsResponse`` body once the segment is written."""
        writer = await self._open()
        async with self._writing:
            appended = await self._storing(writer.append, event_records(events, known))
        unknown = sorted({r["job_id"] for r in appended.records if r["known_job"] is False})
        stored = {r["event_id"] for r in appended.records}
        early = [i for i in before_posting(events, known) if i in stored]
        body = {"accepted": len(appended.records), "duplicates": appended.duplicates, "unknown_jobs": unknown,
                "before_posting": early, "segment": appended.segment, "position": appended.position}
        return body, appended


class LiveEvents:
    """Events of the log applied to this process: per user, jobs seen and (time, type, job) in time order. Each
    event is one tuple, shared by its user's list and the journal, of interned strings (~440 bytes an event;
    docs/SERVING.md). With a ``mark`` (``LogMark``: what the served models were trained on), the segments up to
    it are counted, not held: only the seen marks of event types the models' data left out are kept of them.
    The cut applies once a listing of the log shows the mark's segment (another log, or a shortened one: every
    event is kept, with a warning)."""

    def __init__(self, root: Optional[str | Path] = None, mark: Optional[LogMark] = None) -> None:
        self.root = root  # the log's folder, read when catching up; None: only what ``add`` is given
        self.mark = mark
        self._cut: Optional[str] = None  # mark's last segment, once the log was seen to hold it
        self._cut_count = 0  # the log's segments up to ``_cut``
        self._cut_read = False  # its segments read for the seen marks of the types left out of the models' data
        self._applied: set[str] = set()  # segments applied (after ``_cut``)
        self._seen: dict[str, set[str]] = {}
        # user -> (time in microseconds, type, job), by time; the journal: the same tuples in the order applied
        self._events: dict[str, list[tuple[int, str, str]]] = {}
        self._journal: list[tuple[int, str, str]] = []
        self._lock = threading.Lock()
        self._reading = threading.Lock()  # one catch-up at a time; others wait for it and then find nothing left
        self.forward: Optional["LiveEvents"] = None  # an overlay being built to replace this one: gets every add

    @property
    def position(self) -> int:
        """Segments applied here (those up to the cut included)."""
        return self._cut_count + len(self._applied)

    @property
    def cut(self) -> Optional[str]:
        """The last segment left out (the served models' own), None while every event is held."""
        return self._cut

    @property
    def held(self) -> int:
        """Events held (in the journal)."""
        return len(self._journal)

    def behind(self, position: Optional[int]) -> bool:
        return position is not None and self.root is not None and self.position < position

    def add(self, segment: str, records: Sequence[Mapping[str, Any]]) -> bool:
        """Apply one segment's records (False when it was applied already, or is the models' own)."""
        with self._lock:
            fresh = self._add(segment, records)
        following = self.forward
        if following is not None:
            following.add(segment, records)
        return fresh

    def _add(self, segment: str, records: Sequence[Mapping[str, Any]]) -> bool:
        if self._cut is not None and segment <= self._cut:
            self._seen_only(records)
            return False
        if segment in self._applied:
            return False
        for r in filter(event_log.is_event, records):
            user, job = sys.intern(r["user_id"]), sys.intern(r["job_id"])
            self._seen.setdefault(user, set()).add(job)
            event = (pd.Timestamp(r["timestamp"]).value // 1000, sys.intern(r["type"]), job)
            bisect.insort(self._events.setdefault(user, []), event)
            self._journal.append(event)
        self._applied.add(segment)
        return True

    def _seen_only(self, records: Sequence[Mapping[str, Any]]) -> None:
        """The seen marks of a segment up to the cut: only its event types the models' seen pairs lack."""
        for r in records:
            if event_log.is_event(r) and r["type"] not in self.mark.seen_types:
                self._seen.setdefault(sys.intern(r["user_id"]), set()).add(sys.intern(r["job_id"]))

    def catch_up(self) -> int:
        """Read and apply every segment of the log not applied yet; returns how many."""
        if self.root is None:
            return 0
        with self._reading:
            names = event_log.list_segments(self.root)
            if self.mark is not None and self._cut is None:
                self._place_cut(names)
            after = bisect.bisect_right(names, self._cut) if self._cut is not None else 0
            if self._cut is not None and not self._cut_read:
                if set(EVENTS) - self.mark.seen_types:
                    for _, records in event_log.read_log(self.root, names=names[:after]):
                        with self._lock:
                            self._seen_only(records)
                self._cut_read = True
            # from the start of the bundle block the cut falls in (blocks count from the log's first segment), so
            # that block's later segments come from its bundle; the segments before the cut are skipped
            start = after - after % log_bundles.BUNDLE
            skip = _Either(self._applied, frozenset(names[start:after]))
            count = 0
            for name, records in event_log.read_log(self.root, skip=skip, names=names[start:]):
                count += self.add(name, records)
            if count:
                log.info("applied %d event log segment(s) from %s", count, self.root)
            return count

    def _place_cut(self, names: list[str]) -> None:
        """Leave out the segments up to the mark from now on, if the log holds the mark's segment."""
        last = self.mark.last_segment
        covered = segments_through(names, last)
        if covered is None:
            log.warning("event log %s does not hold segment %s, the last one the served model was trained on "
                        "(another log, or one shortened): every logged event is held", self.root, last)
            self.mark = None
            return
        with self._lock:
            self._cut, self._cut_count = last, covered
            self._applied = {name for name in self._applied if name > last}  # their events stay: harmless

    def seen_rows(self, user_id: Optional[str], rows: Mapping[str, int]) -> list[int]:
        """``rows`` (job id -> catalog row) of the jobs ``user_id`` has any event for; other jobs are left out."""
        jobs = self._seen.get(user_id, ()) if user_id is not None else ()
        return sorted(rows[j] for j in jobs if j in rows)

    def applied_since(self, cursor: int, types: Sequence[str]) -> tuple[list[str], np.ndarray, int]:
        """(jobs, times (n,) int64 microseconds, new cursor): the events of ``types`` applied after the first
        ``cursor`` (a reader's count of those it has taken), for the jobs' popularity."""
        with self._lock:
            new, cursor = self._journal[cursor:], len(self._journal)
        kept = [(job, time) for time, kind, job in new if kind in types]
        return [job for job, _ in kept], np.array([time for _, time in kept], dtype=np.int64), cursor

    def positives(self, user_id: Optional[str], types: Sequence[str], length: int) -> list[str]:
        """The user's last ``length`` distinct jobs with an event of ``types``, most recent first."""
        out: list[str] = []
        for _, kind, job in reversed(self._events.get(user_id, []) if user_id is not None else []):
            if kind in types and job not in out:
                out.append(job)
                if len(out) == length:
                    break
        return out


class _Either:
    """Membership in either of two sets, neither copied (the applied segments grow while a catch-up reads)."""

    def __init__(self, first: Container[str], second: Container[str]) -> None:
        self.first, self.second = first, second

    def __contains__(self, name: object) -> bool:
        return name in self.first or name in self.second


async def follow_log(live: Optional[LiveEvents], position: Optional[int]) -> None:
    """Before answering: read the segments this process lacks when the writer's ``position`` is ahead of it.
    A log that cannot be read is logged and the answer goes on without those events (never a failed request)."""
    if live is None or not live.behind(position):
        return
    try:
        await asyncio.to_thread(live.catch_up)
    except (StorageError, DataValidationError, OSError) as exc:
        log.warning("event log %s: catching up failed: %s", live.root, exc)
