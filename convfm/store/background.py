"""Writes that no caller waits for (a log's or the live catalog's bundles), and a way to wait for them."""
from __future__ import annotations

import threading
from typing import Any, Callable, Optional


class BackgroundWrites:
    """Each ``start`` runs in a daemon thread of its own; ``settle`` waits for those still running (a writer that
    stops, tests). A write cut short by the process's end is the caller's to redo (``convfm catalog bundle``)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._threads: list[threading.Thread] = []

    def start(self, target: Callable[..., Any], *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, name=self.name, daemon=True)
        thread.start()
        self._threads = [t for t in self._threads if t.is_alive()] + [thread]

    def settle(self, timeout_s: Optional[float] = None) -> None:
        for thread in list(self._threads):
            thread.join(timeout_s)
