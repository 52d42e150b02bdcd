"""Run a command that starts its own local Ray in a session of its own, behind a process that passes signals on.

Ray's local daemons (GCS server, raylet, log monitor, dashboard agent) are the driver's children, in the
caller's process group. A SIGTERM sent to that group (`timeout`, Slurm's `scancel`, `kill -- -PGID`, a script's
`kill 0`, supervisord's ``stopasgroup``) reached them as it reached the driver: the GCS stopped first, and
`convfm serve`'s clean stop (deleting the app, so that its replicas write what they buffered) waited 60 s for it
until Ray aborted the process; `convfm train` took 12 s instead of 4. Ctrl-C was never a problem: Ray starts its
daemons with SIGINT blocked.

So on Linux the command forks. The child leaves the group (``setsid``) and runs the command; the parent stays
where the caller put it, holds nothing but the child's pid, passes SIGINT and SIGTERM on to the child (SIGHUP
as SIGTERM: a closed terminal stops the service cleanly) and exits with the child's status. Killed outright, the
parent leaves the child a SIGTERM (a thread of the child watches for it), so nothing outlives it.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
import time
from typing import Any, Callable

PASSED_ON = {signal.SIGINT: signal.SIGINT, signal.SIGTERM: signal.SIGTERM, signal.SIGHUP: signal.SIGTERM}
PARENT_CHECK_S = 0.25  # how soon the command learns that its parent was killed outright


def run_in_own_session(command: Callable[[], int]) -> int:
    """``command()``'s exit code, the command run in a child process with a session of its own (see the module
    docstring). Elsewhere than Linux, or with threads already running (a fork copies only the caller's), the
    command runs in this process, as before. Both processes return from here: the child with the command's code,
    the parent with the child's (128 + N if signal N ended it)."""
    if not sys.platform.startswith("linux") or threading.active_count() > 1:
        return command()
    sys.stdout.flush()  # nothing buffered is printed twice
    sys.stderr.flush()
    parent = os.getpid()
    before = signal.pthread_sigmask(signal.SIG_BLOCK, set(PASSED_ON))  # none lost between the fork and the handlers
    child = os.fork()
    if child == 0:
        os.setsid()
        die_with_parent(parent)
        signal.pthread_sigmask(signal.SIG_SETMASK, before)
        return command()
    previous = {signum: signal.getsignal(signum) for signum in PASSED_ON}

    def pass_on(signum: int, frame: Any) -> None:
        os.kill(child, PASSED_ON[signum])

    for signum, handler in previous.items():
        if handler is not signal.SIG_IGN:  # ignored (started in the background by a script): the child ignores it too
            signal.signal(signum, pass_on)
    signal.pthread_sigmask(signal.SIG_SETMASK, before)
    try:
        _, status = os.waitpid(child, 0)  # a signal runs pass_on and the wait goes on (PEP 475)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    code = os.waitstatus_to_exitcode(status)
    return code if code >= 0 else 128 - code


def die_with_parent(parent: int, every_s: float = PARENT_CHECK_S) -> None:
    """One SIGTERM to this process once ``parent`` has ended, even by SIGKILL (checked every ``every_s`` by a
    daemon thread). Not Linux's parent-death signal: a killed parent's threads exit one by one, the orphan is
    handed to each in turn and signalled at each exit (torch's native threads: two SIGTERMs seen), and a second
    SIGTERM cuts the clean stop short."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(every_s)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="convfm-parent-watch", daemon=True).start()
