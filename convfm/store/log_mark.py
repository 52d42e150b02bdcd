"""``LogMark``: how much of the service's event log a model was trained on, so that serving need not hold those
events again.

Training with ``--events`` reads every segment of the log up to its last one (segment names sort in write
order, and the writer keeps them strictly increasing, also across restarts). The model's own data then holds
those events: ``serving.json``'s seen pairs (of the event types the data config turns into labels), the users'
stored histories and the jobs' popularity. The mark, written in ``serving.json``, names that last segment, so a
serving replica's overlay of logged events (``serve.events.LiveEvents``) keeps only what came after it, plus the
seen marks of the types the model's data left out. Plain Python.
"""
from __future__ import annotations

import bisect
import dataclasses
from typing import Any, Mapping, Optional, Sequence

from convfm.config import EVENTS
from convfm.errors import ArtifactError
from convfm.store.event_log import SEGMENT_RE


@dataclasses.dataclass(frozen=True)
class LogMark:
    """The last segment a model read of the event log, the segments up to it, and the event types its seen
    pairs hold (``positive_events`` + ``negative_events``)."""

    last_segment: str
    segments: int
    seen_types: frozenset[str]

    def to_dict(self) -> dict[str, Any]:
        return {"last_segment": self.last_segment, "segments": self.segments, "seen_types": sorted(self.seen_types)}

    @classmethod
    def from_dict(cls, payload: Any, source: str) -> "LogMark":
        """A mark as ``serving.json`` holds it; ArtifactError naming ``source`` and the field otherwise."""
        where = f"{source}: event_log"
        if not isinstance(payload, Mapping):
            raise ArtifactError(f"{where}: expected an object, got {type(payload).__name__}")
        last, segments, types = payload.get("last_segment"), payload.get("segments"), payload.get("seen_types")
        if not (isinstance(last, str) and SEGMENT_RE.match(last)):
            raise ArtifactError(f"{where}.last_segment: not an event log segment name: {last!r}")
        if not (isinstance(segments, int) and not isinstance(segments, bool) and segments >= 1):
            raise ArtifactError(f"{where}.segments: a segment count of 1 or more, got {segments!r}")
        if not (isinstance(types, list) and all(t in EVENTS for t in types)):
            raise ArtifactError(f"{where}.seen_types: a list of event types among {list(EVENTS)}, got {types!r}")
        return cls(last, segments, frozenset(types))

    def covers(self, other: Optional["LogMark"]) -> bool:
        """Whether an overlay cut at this mark holds every logged event a model marked ``other`` needs (None: a
        model trained without the log needs them all): it is no later, and leaves out no seen type more."""
        return other is not None and self.last_segment <= other.last_segment and self.seen_types <= other.seen_types


def common_mark(marks: Sequence[Optional[LogMark]]) -> Optional[LogMark]:
    """The latest mark that ``covers`` every one of ``marks`` (the versions one overlay serves); None when one
    of them is None, or there are none."""
    if not marks or any(m is None for m in marks):
        return None
    first = min(marks, key=lambda m: m.last_segment)
    types = frozenset.intersection(*(m.seen_types for m in marks))
    return LogMark(first.last_segment, first.segments, types)


def segments_through(names: Sequence[str], last: str) -> Optional[int]:
    """How many of a log's segments (``names``, in order) come up to segment ``last`` (a mark's, a run's first
    read) included; None when the log does not hold it (another log, or one shortened)."""
    at = bisect.bisect_left(names, last)
    return at + 1 if at < len(names) and names[at] == last else None


def seen_segments(names: list[str], mark: Optional[LogMark]) -> list[str]:
    """The segments a reader of the log's seen pairs must read beside a model marked ``mark`` (``names``, in
    order): those after the mark when the model's seen pairs hold every event type and the log holds the mark's
    segment, else all of them."""
    every_type = mark is not None and mark.seen_types == frozenset(EVENTS)
    covered = segments_through(names, mark.last_segment) if every_type else None
    return names if covered is None else names[covered:]
