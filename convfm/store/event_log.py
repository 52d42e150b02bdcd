"""The feedback event log: append-only, immutable JSON-lines segments under ``<live store>/events/``.

Object stores cannot append, so every acknowledged batch of events is one new segment, written whole: a temp
file, fsync and rename on a local disk, one PUT on an object store. A reader never sees half a segment, and a
writer killed before the write returned never acknowledged its events. Names ``<ns since epoch, 19
digits>-<8 hex>.jsonl`` sort in write order (the writer keeps them strictly increasing); reading the log walks
the names in order, then each segment's lines.

An event id is stored once: ``EventLog.open`` rebuilds the set of ids from the log, so a client retrying after a
restart of the writer still gets its duplicate recognised. With a dedupe window (the service's
``event_dedupe_days``) the writer holds, and reads back on open, only the ids of the segments written within it:
its memory and what it reads at start follow the window, not the log, and a retry later than the window is stored
again (``interactions_frame`` keeps an id's first record).

Every 1,000th segment the writer also copies its block of segments into one bundle file, which readers that want
many of them fetch instead (``convfm.store.log_bundles``). One writer per log (the service's
single ingress replica); readers (serving replicas, ``convfm train``) may be many. Plain Python, no Ray.

A record: ``event_id``, ``type`` (one of ``convfm.config.EVENTS``), ``user_id``, ``job_id``, ``timestamp``
(ISO-8601 UTC), ``impression_id`` and ``model_version`` (or null), ``known_job`` (whether the serving catalog
knew the job; null when it could not be asked) and ``received_at``. Impression records (``type:
"impression"``, ``event_id`` the response's impression id, ``job_ids`` shown, ``user_id`` possibly null) are
written beside them, best effort, for ``convfm report``, in a log of their own (``<live store>/impressions/``,
the same segments): one per answer would otherwise make every reader of the events (each replica at start, the
writer rebuilding its ids) read, and the writer keep, a record per request served. Logs written before hold them
among the events; readers of events skip them (``is_event``).
"""
from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import json
import logging
import math
import re
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Container, Iterator, Mapping, Optional, Sequence

import numpy as np
import pandas as pd

from convfm.config import EVENTS
from convfm.errors import DataValidationError, StorageError
from convfm.jsonfile import parse_json
from convfm.store import log_bundles, storage
from convfm.store.background import BackgroundWrites
from convfm.validate import lone_surrogate

log = logging.getLogger(__name__)

EVENTS_DIR, IMPRESSIONS_DIR = "events", "impressions"
SEGMENT_RE = re.compile(r"^(\d{19})-[0-9a-f]{8}\.jsonl$")
REQUIRED = ("event_id", "type", "user_id", "job_id", "timestamp")
IMPRESSION = "impression"
OPTIONAL = ("impression_id", "model_version", "known_job", "received_at")
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
YEAR_10000 = 253_402_300_800  # epoch seconds past the last datetime
FUTURE_SLACK = dt.timedelta(days=1)  # client clocks drift; an event days ahead is a unit or typing mistake


def parse_time(value: Any) -> dt.datetime:
    """A time as an aware UTC datetime: ISO-8601 text (no zone: UTC) or epoch seconds, not before 1970.
    ValueError says what is wrong (booleans, non-finite numbers and text that is not a date are refused)."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError(f"must be an ISO-8601 date/time or epoch seconds, got {type(value).__name__}")
    if isinstance(value, str):
        try:
            when = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            raise ValueError(f"{value[:40]!r} is not an ISO-8601 date/time such as 2026-12-02T12:00:00Z") from None
        try:
            when = when.replace(tzinfo=dt.timezone.utc) if when.tzinfo is None else when.astimezone(dt.timezone.utc)
        except OverflowError:  # a zone offset past year 1 or 9999
            raise ValueError(f"{value[:40]!r} is out of range") from None
    elif not 0 <= _as_float(value) < YEAR_10000:  # (NaN compares False)
        hint = " (epoch milliseconds given as seconds?)" if 0 <= _as_float(value) / 1000 < YEAR_10000 else ""
        shown = str(value) if len(str(value)) <= 24 else str(value)[:20] + "..."
        raise ValueError(f"epoch seconds {shown} out of range{hint}")
    else:
        when = EPOCH + dt.timedelta(seconds=value)
    if when < EPOCH:
        raise ValueError(f"{when.isoformat()} is before 1970-01-01")
    return when


def _as_float(value: int | float) -> float:
    """A JSON number as a float; an integer past float range (JSON allows any digits) as infinity."""
    try:
        return float(value)
    except OverflowError:
        return math.inf


def event_time(value: Any) -> dt.datetime:
    """``parse_time`` for a new event, which also refuses a time more than a day ahead of now."""
    when = parse_time(value)  # (epoch milliseconds given as seconds are out of its range: named there)
    if when > dt.datetime.now(dt.timezone.utc) + FUTURE_SLACK:
        raise ValueError(f"{when.isoformat()} is more than a day in the future")
    return when


def micros(when: dt.datetime) -> int:
    """Microseconds since the epoch: the order key of calendar timestamps (``convfm.data.readers``)."""
    return (when - EPOCH) // dt.timedelta(microseconds=1)


def iso(when: dt.datetime) -> str:
    """The log's spelling of a time: ISO-8601 UTC with microseconds and a ``Z``."""
    return when.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def events_location(live_store: str | Path) -> str | Path:
    """The event log of a live store (``convfm.store.registry.live_location``)."""
    return storage.join(live_store, EVENTS_DIR)


def impressions_location(events: str | Path) -> str | Path:
    """The impression log beside the event log at ``events`` (``<live store>/impressions/``)."""
    return storage.join(storage.parent(events), IMPRESSIONS_DIR)


def list_segments(root: str | Path) -> list[str]:
    """Segment names of the log at ``root``, oldest first (temp files and strangers ignored)."""
    return [n for n in storage.list_files(root) if SEGMENT_RE.match(n)]


def read_segment(root: str | Path, name: str) -> list[dict[str, Any]]:
    """The records of one segment; DataValidationError naming the segment and line of a bad record."""
    where = storage.join(root, name)
    return parse_segment(storage.read_text(where), str(where))


def parse_segment(text: str, where: str) -> list[dict[str, Any]]:
    """A segment's text as records; DataValidationError naming ``where``, the line and the field."""
    return [check_record(line, f"{where}, line {number}")
            for number, line in enumerate(text.splitlines(), start=1) if line.strip()]


def check_record(line: str, where: str) -> dict[str, Any]:
    """One JSON line of a segment as a record, or DataValidationError naming ``where`` and the field."""
    record = parse_json(line, where, "event", DataValidationError)
    impression = record.get("type") == IMPRESSION
    required = ("event_id", "type", "timestamp") if impression else REQUIRED
    missing = [k for k in required if not isinstance(record.get(k), str) or not record[k]]
    if missing:
        raise DataValidationError(f"{where}: missing or empty field(s) {missing}")
    shown = record.get("job_ids")
    if impression and not (isinstance(shown, list) and all(isinstance(j, str) for j in shown)):
        raise DataValidationError(f"{where}: field 'job_ids': an impression needs a list of job ids")
    if not impression and record["type"] not in EVENTS:
        raise DataValidationError(f"{where}: field 'type': unknown event {record['type']!r}; allowed: "
                                  f"{[*EVENTS, IMPRESSION]}")
    try:
        parse_time(record["timestamp"])
    except ValueError as exc:
        raise DataValidationError(f"{where}: field 'timestamp': {exc}") from None
    return {**{k: None for k in OPTIONAL}, **record}


def is_event(record: Mapping[str, Any]) -> bool:
    """A user's event (not an impression record)."""
    return record["type"] != IMPRESSION


def read_log(root: str | Path, skip: Container[str] = (),
             names: Optional[list[str]] = None) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """(segment name, records) of every segment not in ``skip`` (a list or tuple is made a set; anything else, a
    set, is asked as it is, not copied), oldest first (``names``: the log's segments, when listed already). A
    block with two or more of them is read from its bundle (one file), the rest segment by segment; many files
    are fetched at once (``storage.fetched``: one request each on an object store)."""
    names = list_segments(root) if names is None else names
    skipped = set(skip) if isinstance(skip, (list, tuple)) else skip
    for part in storage.fetched(lambda part: _read_part(root, *part), log_bundles.plan(root, names, skipped)):
        yield from part


def written_ns(segment: str) -> int:
    """When a segment was written: its name's nanoseconds since the epoch."""
    return int(segment[:19])


def _read_part(root: str | Path, bundle: Optional[str], names: list[str]) -> list[tuple[str, list[dict[str, Any]]]]:
    """The wanted segments ``names`` of one part: a lone segment, or a bundle's (read one by one, with a
    warning, when the bundle is unreadable or not the block its name says)."""
    if bundle is not None:
        where = storage.join(root, log_bundles.BUNDLES_DIR, bundle)
        try:
            texts = log_bundles.bundle_texts(root, bundle)
            return [(name, parse_segment(texts[name], f"{where}, segment {name}")) for name in names]
        except (DataValidationError, StorageError, OSError, KeyError) as exc:
            log.warning("event log bundle %s unreadable (%s); reading its segments one by one", where, exc)
    return [(name, read_segment(root, name)) for name in names]


def bundle_missing(root: str | Path) -> dict[str, int]:
    """``log_bundles.bundle_missing`` over the log at ``root``, with its segment count under ``"segments"``."""
    names = list_segments(root)
    return {"segments": len(names), **log_bundles.bundle_missing(root, names)}


@dataclasses.dataclass(frozen=True)
class Appended:
    """What one append did: the segment written (None when every event was a duplicate), the records in it,
    the ids ignored as duplicates, and the log's position (its segment count) after it."""

    segment: Optional[str]
    records: list[dict[str, Any]]
    duplicates: list[str]
    position: int


class EventLog:
    """The writer of one event log: rebuilds the seen event ids on open, appends one segment per call. With
    ``dedupe=False`` (the impression log, whose ids the service draws) it keeps no ids and needs no ``open``.
    With ``window_s`` it holds the ids of the segments written in the last ``window_s`` seconds alone."""

    def __init__(self, root: str | Path, dedupe: bool = True, window_s: Optional[float] = None) -> None:
        if window_s is not None and not (math.isfinite(window_s) and window_s * 1e9 >= 1):
            raise ValueError(f"the dedupe window must be positive seconds (a nanosecond or more) or None, got "
                             f"{window_s!r}")
        self.root = root
        self.dedupe = dedupe
        self.window_ns = None if window_s is None else int(window_s * 1e9)
        self._ids: dict[str, int] = {}  # event id -> when the segment that holds it was written (ns)
        # with a window: the held ids, oldest first (each once: a held id is never stored again)
        self._order: collections.deque[str] = collections.deque()
        self._segments = 0
        self._last_ns = 0
        self._block: Optional[list[str]] = None  # the segments after the last whole block (None: not listed yet)
        self._lock = threading.Lock()  # one append at a time: the id check and the write go together
        self._bundling = BackgroundWrites("convfm-event-bundle")

    @classmethod
    def open(cls, root: str | Path, window_s: Optional[float] = None) -> "EventLog":
        """The log at ``root`` (created on first append), with every event id already in it, or those of the
        segments written in the last ``window_s`` seconds (the older ones are not read)."""
        writer, names = cls(root, window_s=window_s), list_segments(root)
        since = writer._since(time.time_ns())
        for name, records in read_log(root, skip=[n for n in names if written_ns(n) < since], names=names):
            written = written_ns(name)
            writer._ids.update((r["event_id"], written) for r in records if is_event(r))
        if writer.window_ns is not None:  # by the last segment holding each (a log can hold an id twice)
            writer._order.extend(sorted(writer._ids, key=writer._ids.__getitem__))
        writer._found(names)
        return writer

    def _since(self, now_ns: int) -> int:
        """The oldest segment time whose ids are held (0: all)."""
        return 0 if self.window_ns is None else now_ns - self.window_ns

    def _forget_old(self, now_ns: int) -> None:
        """Drop the ids whose segments were written before the window."""
        since = self._since(now_ns)
        while self._order and self._ids[self._order[0]] < since:
            del self._ids[self._order.popleft()]

    def _found(self, names: list[str]) -> None:
        """Take the log's segments ``names`` as this writer's start: its position and the open block."""
        self._segments = len(names)
        self._block = names[len(names) - len(names) % log_bundles.BUNDLE:]
        if names:
            self._last_ns = max(self._last_ns, written_ns(names[-1]))

    @property
    def position(self) -> int:
        """Segments in the log (this writer's and those found on open): readers compare theirs with it."""
        return self._segments

    def __len__(self) -> int:
        return len(self._ids)

    def append(self, records: Sequence[Mapping[str, Any]]) -> Appended:
        """Write the records whose ``event_id`` is new (first one wins inside ``records``) as one segment and
        return once it is stored; a storage failure raises StorageError and nothing counts as written, as does a
        record this log's readers would refuse (DataValidationError)."""
        with self._lock:
            if self._block is None:  # a writer that was not opened (the impression log): list the log once
                self._found(list_segments(self.root))
            self._forget_old(time.time_ns())
            fresh, duplicates, ids = [], [], set()
            for record in records:
                event_id = record["event_id"]
                if self.dedupe and (event_id in self._ids or event_id in ids):
                    duplicates.append(event_id)
                else:
                    ids.add(event_id)
                    fresh.append(dict(record))
            if not fresh:
                return Appended(None, [], duplicates, self._segments)
            lines = [json.dumps(r, ensure_ascii=False, separators=(",", ":")) for r in fresh]
            for number, line in enumerate(lines, start=1):  # what readers would refuse is never written
                check_record(line, f"{self.root}: record {number} to append")
                if not line.isascii() and lone_surrogate(line) is not None:  # it failed the write after the checks
                    raise DataValidationError(f"{self.root}: record {number} to append: not valid Unicode text")
            self._last_ns = max(time.time_ns(), self._last_ns + 1)
            name = f"{self._last_ns:019d}-{uuid.uuid4().hex[:8]}.jsonl"
            text = "".join(line + "\n" for line in lines)
            storage.write_text(storage.join(self.root, name), text, durable=True)
            if self.dedupe:
                self._ids.update((event_id, self._last_ns) for event_id in ids)
                if self.window_ns is not None:
                    self._order.extend(ids)
            self._segments += 1
            self._block.append(name)
            full = len(self._block) == log_bundles.BUNDLE
            block, self._block = (self._block, []) if full else (None, self._block)
            appended = Appended(name, fresh, duplicates, self._segments)
        if block is not None:  # in the background: the append (and every one queued behind it) does not wait
            self._bundling.start(log_bundles.write_bundle, self.root, block)
        return appended

    def settle(self, timeout_s: Optional[float] = None) -> None:
        """Wait for the bundle writes in flight (a writer that stops, tests); one cut short is written again by
        ``convfm catalog bundle``, and its segments read meanwhile."""
        self._bundling.settle(timeout_s)


def interactions_frame(root: str | Path, names: Optional[list[str]] = None) -> pd.DataFrame:
    """The log as an interactions table (``convfm.data.schema.INTERACTIONS``): user_id, job_id, event (the
    event type: the data config's positive/negative events turn it into labels) and timestamp (int64
    microseconds since the epoch, the order key of calendar data), in log order; ``names``: the segments to read
    (listed already), else every one."""
    if not storage.exists(root):  # a mistyped --events read as "holds no events"
        raise DataValidationError(f"{root}: event log not found (a service's live store holds it in events/)")
    ids: set[str] = set()  # a retry stored again after the writer's dedupe window counts once
    records = [r for _, segment in read_log(root, names=names) for r in segment
               if is_event(r) and not (r["event_id"] in ids or ids.add(r["event_id"]))]
    if not records:
        raise DataValidationError(f"{root}: the event log holds no events")
    times = [micros(parse_time(r["timestamp"])) for r in records]
    return pd.DataFrame({"user_id": pd.Series([r["user_id"] for r in records], dtype="str"),
                         "job_id": pd.Series([r["job_id"] for r in records], dtype="str"),
                         "event": pd.Series([r["type"] for r in records], dtype="str"),
                         "timestamp": np.array(times, dtype=np.int64)})
