"""``EventOverlay``: the one ``LiveEvents`` the models of a process read, cut at what every model it serves was
trained on, and replaced when a load changes that.

A model trained with ``--events`` holds the log up to its ``LogMark`` in its own data, so the overlay need hold
only the events after the earliest mark among the models it serves (a model trained without the log needs them
all). Each model is admitted here before it serves (a first load, a reload, a traffic split's versions) and
released when it stops; the overlay keeps its own set of the models that follow it, so a model admitted while
another load swaps the overlay is moved with the rest. When the mark they need changes, a new overlay is read
from the log after the new mark while the old one serves (every segment added to the old one is passed on, also
after the swap, for a caller that took the old one a moment before), then every following model moves to it and
counts its logged positives again. A new overlay that cannot be read is dropped when the old one holds what the
models need (it is tried again at the next load). Plain Python, no Ray.
"""
from __future__ import annotations

import logging
import threading
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Optional

from convfm.errors import DataValidationError, StorageError
from convfm.store.log_mark import common_mark
from serve.events import LiveEvents, follow_log

if TYPE_CHECKING:
    from serve.scorer import Scorer

log = logging.getLogger(__name__)
UNSET = object()  # no model admitted yet: the overlay has not been cut or read


class EventOverlay:
    """The process's overlay of logged events (``live``), the models that read it, and its replacement when
    they change."""

    def __init__(self, root: Optional[str | Path]) -> None:
        self.root = root
        self.live = LiveEvents(root)
        self._followers: "weakref.WeakSet[Scorer]" = weakref.WeakSet()  # admitted, not released (a dropped one
        # that is no longer referenced leaves by itself)
        self._mark: object = UNSET  # the mark ``live`` was asked to cut at
        self._lock = threading.Lock()  # one admission or release at a time

    def admit(self, scorer: "Scorer", replacing: Optional["Scorer"] = None) -> None:
        """Before ``scorer`` serves (instead of ``replacing``, if any): cut the overlay at the mark that suits it
        and every other following model, and let it read the overlay."""
        with self._lock:
            if replacing is not None:
                self._followers.discard(replacing)
            self._followers.add(scorer)
            try:
                self._cut()
                if scorer.live is not self.live:
                    scorer.follow_events(self.live)
            except BaseException:  # the load fails: ``replacing`` serves on, as a follower
                self._followers.discard(scorer)
                if replacing is not None:
                    self._followers.add(replacing)
                raise

    def release(self, scorers: Iterable["Scorer"]) -> None:
        """``scorers`` stopped serving (a split's versions dropped): the overlay may leave out more of the log."""
        with self._lock:
            for scorer in scorers:
                self._followers.discard(scorer)
            if len(self._followers) and self._mark is not UNSET:
                self._cut()

    async def follow(self, position: Optional[int]) -> None:
        """Before answering: read the segments this process lacks (``follow_log``); nothing before the first
        admission, which reads the log cut at its model's mark."""
        if self._mark is not UNSET:
            await follow_log(self.live, position)

    def info(self) -> dict[str, Any]:
        """What ``/model`` tells of the overlay: segments applied, events held, the segment it is cut at."""
        live = self.live
        return {"segments": live.position, "held": live.held, "cut_at": live.cut}

    def _cut(self) -> None:
        followers = list(self._followers)
        wanted = common_mark([s.event_mark for s in followers]) if self.root is not None else None
        if self._mark is not UNSET and wanted == self._mark:
            return
        if self._mark is UNSET and wanted is None:  # the first model needs every event: read them into this one
            self._mark = None
            self._read(self.live)
            return
        old, fresh = self.live, LiveEvents(self.root, wanted)
        old.forward = fresh  # what the old overlay is given from now on, also after the swap
        moved: list["Scorer"] = []
        try:
            if not self._read(fresh) and self._mark is not UNSET and (self._mark is None or self._mark.covers(wanted)):
                old.forward = None  # the old overlay holds what the models need: keep it, cut at the next load
                return
            for scorer in followers:
                scorer.follow_events(fresh)
                moved.append(scorer)
        except BaseException:
            old.forward = None
            for scorer in moved:  # back on the overlay that goes on being fed
                scorer.follow_events(old)
            raise
        self.live, self._mark = fresh, wanted
        log.info("event overlay cut at %s: %d event(s) held (%d before)",
                 "nothing" if wanted is None else f"segment {wanted.last_segment}", fresh.held, old.held)

    def _read(self, live: LiveEvents) -> bool:
        """Read the log into ``live``; False when it cannot be read (logged; requests read it again,
        ``follow_log``)."""
        try:
            live.catch_up()
            return True
        except (StorageError, DataValidationError, OSError) as exc:
            log.warning("event log %s: reading it failed: %s", live.root, exc)
            return False
