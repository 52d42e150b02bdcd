"""``EventOverlay``: the one ``LiveEvents`` the models of a process read, cut at what every model it serves was
trained on, and replaced when a load changes that.

A model trained with ``--events`` holds the log up to its ``LogMark`` in its own data, so the overlay need hold
only the events after the earliest mark among the served versions (a model trained without the log needs them
all). Each load (a first load, a reload, a traffic split's versions) is admitted here before it serves: when
the mark it needs differs from the overlay's, a new overlay is read from the log after the new mark while the
old one serves (every segment added to the old one meanwhile is passed on), then every served model moves to
it and counts its logged positives again. Without a log, or while the log cannot be read, the overlay holds
what it is given. Plain Python, no Ray.
"""
from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

from convfm.errors import DataValidationError, StorageError
from convfm.store.log_mark import LogMark, common_mark
from serve.events import LiveEvents, follow_log

if TYPE_CHECKING:
    from serve.scorer import Scorer

log = logging.getLogger(__name__)
UNSET = object()  # no model admitted yet: the overlay has not been cut or read


class EventOverlay:
    """The process's overlay of logged events (``live``) and its replacement when the served versions change.
    ``served`` lists the models serving now (set by the owner: a Ranker's slots, a LocalBackend's one)."""

    def __init__(self, root: Optional[str | Path]) -> None:
        self.root = root
        self.live = LiveEvents(root)
        self.served: Callable[[], list["Scorer"]] = lambda: []
        self._mark: object = UNSET  # the mark ``live`` was asked to cut at
        self._lock = threading.Lock()  # one admission at a time

    def admit(self, scorer: "Scorer", replacing: Optional["Scorer"] = None) -> None:
        """Before ``scorer`` serves (instead of ``replacing``, if any): cut the overlay at the mark that suits it
        and every other served model, and let it read the overlay."""
        with self._lock:
            others = [s for s in self.served() if s is not replacing and s is not scorer]
            self._cut([s.event_mark for s in (*others, scorer)], others)
            scorer.follow_events(self.live)

    async def follow(self, position: Optional[int]) -> None:
        """Before answering: read the segments this process lacks (``follow_log``); nothing before the first
        admission, which reads the log cut at its model's mark."""
        if self._mark is not UNSET:
            await follow_log(self.live, position)

    def info(self) -> dict[str, Any]:
        """What ``/model`` tells of the overlay: segments applied, events held, the segment it is cut at."""
        live = self.live
        return {"segments": live.position, "held": live.held, "cut_at": live.cut}

    def settle(self) -> None:
        """After versions stopped serving (a split's end): cut at what the remaining ones need."""
        with self._lock:
            served = self.served()
            if served and self._mark is not UNSET:
                self._cut([s.event_mark for s in served], served)

    def _cut(self, marks: list[Optional[LogMark]], others: list["Scorer"]) -> None:
        wanted = common_mark(marks) if self.root is not None else None
        if self._mark is not UNSET and wanted == self._mark:
            return
        if self._mark is UNSET and wanted is None:  # the first model needs every event: read them into this one
            self._mark = None
            self._read(self.live)
            return
        old = self.live
        fresh = LiveEvents(self.root, wanted)
        old.forward = fresh  # what the old overlay is given while the new one reads the log
        self._read(fresh)
        for scorer in others:
            scorer.follow_events(fresh)
        self.live, self._mark = fresh, wanted
        old.forward = None  # after the swap: an add meanwhile reached both (a segment applies once)
        log.info("event overlay cut at %s: %d event(s) held (%d before)",
                 "nothing" if wanted is None else f"segment {wanted.last_segment}", fresh.held, old.held)

    def _read(self, live: LiveEvents) -> None:
        """Read the log into ``live``; a log that cannot be read is logged and read again by requests
        (``follow_log``)."""
        try:
            live.catch_up()
        except (StorageError, DataValidationError, OSError) as exc:
            log.warning("event log %s: reading it failed: %s", live.root, exc)
