"""Signal handling the commands share (no Ray): what a SIGTERM does once a stop has begun."""
from __future__ import annotations

import contextlib
import signal
from typing import Any, Callable


def stop_once(handler: Callable[[int, Any], Any]) -> Callable[[int, Any], Any]:
    """A SIGTERM handler that calls ``handler`` for the first SIGTERM and ignores the later ones: ``pkill -f``,
    ``killall`` and cgroup-wide senders signal both processes of ``convfm.cli.own_session.run_in_own_session``,
    and the copy the parent passes on would cut the clean stop short. A second Ctrl-C still interrupts it."""

    def first(signum: int, frame: Any) -> Any:
        with contextlib.suppress(ValueError):  # not the main thread: nothing to change
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        return handler(signum, frame)

    return first
