"""Run a command that starts its own local Ray in a session of its own, behind a process that passes signals on.

Ray's local daemons (GCS server, raylet, log monitor, dashboard agent) are the driver's children, in the
caller's process group. A SIGTERM sent to that group (`timeout`, `kill -- -PGID`, a script's `kill 0`,
supervisord's ``stopasgroup``) reached them as it reached the driver: the GCS stopped first, and `convfm serve`'s
clean stop (deleting the app, so that its replicas write what they buffered) waited 60 s for it until Ray aborted
the process; `convfm train` took 12 s instead of 4. Ctrl-C was never a problem: Ray starts its daemons with
SIGINT blocked. Senders that signal every process of a cgroup (systemd's default ``KillMode``, Slurm's
proctrack/cgroup) still reach the daemons: no process group keeps them out.

So on Linux the command forks. The child leaves the group (``setsid``) and runs the command; the parent stays
where the caller put it and exits with the child's status. It passes SIGINT and SIGTERM on to the child (SIGHUP
as SIGTERM: a closed terminal stops the service cleanly), and Ctrl-Z's SIGTSTP as a SIGSTOP, before it stops
itself (the child's orphaned group would discard a SIGTSTP); SIGCONT follows. A pipe tells the child when the
parent has passed a stop on, and its end (EOF) when the parent is gone: killed outright before any stop, the
parent leaves the child one SIGTERM; killed after one (a SIGKILL to the group after a grace period, as
``timeout -k`` sends), the child's whole session gets a SIGKILL, as the group did before.

With two processes of the same command line, ``pkill -f`` and ``killall`` signal both: ``convfm.signals.stop_once``
is the commands' SIGTERM handler, so the copy the parent passes on is ignored.
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from typing import Any, Callable

PASSED_ON = {signal.SIGINT: signal.SIGINT, signal.SIGTERM: signal.SIGTERM, signal.SIGHUP: signal.SIGTERM,
             signal.SIGTSTP: signal.SIGSTOP, signal.SIGCONT: signal.SIGCONT}
STOPS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)  # what the child hears of as a stop in progress


def run_in_own_session(command: Callable[[], int]) -> int:
    """``command()``'s exit code, the command run in a child process with a session of its own (see the module
    docstring). Elsewhere than Linux, or with threads already running (a fork copies only the caller's), the
    command runs in this process, as before. The child returns from here with the command's code; the parent
    exits with the child's (128 + N if signal N ended it) without tearing its interpreter down: it holds nothing
    to clean up, and the teardown of one that imported torch added ~0.5 s to every stop."""
    if not sys.platform.startswith("linux") or threading.active_count() > 1:
        return command()
    sys.stdout.flush()  # nothing buffered is printed twice
    sys.stderr.flush()
    told, tell = os.pipe()  # parent -> child: a byte per stop passed on; EOF once the parent is gone
    before = signal.pthread_sigmask(signal.SIG_BLOCK, set(PASSED_ON))  # none lost between the fork and the handlers
    child = os.fork()
    if child == 0:
        os.close(tell)
        os.setsid()
        watch_parent(told)
        signal.pthread_sigmask(signal.SIG_SETMASK, before)
        return command()
    os.close(told)
    previous = {signum: signal.getsignal(signum) for signum in PASSED_ON}

    def pass_on(signum: int, frame: Any) -> None:
        if signum in STOPS:
            with contextlib.suppress(BrokenPipeError):  # the child has just ended
                os.write(tell, b"s")
        os.kill(child, PASSED_ON[signum])  # not reaped before the handlers are restored: the pid is still its
        if signum == signal.SIGTSTP:
            os.kill(os.getpid(), signal.SIGSTOP)

    for signum, handler in previous.items():
        if handler is not signal.SIG_IGN:  # ignored (started in the background by a script): the child ignores it too
            signal.signal(signum, pass_on)
    signal.pthread_sigmask(signal.SIG_SETMASK, before)
    try:
        os.waitid(os.P_PID, child, os.WEXITED | os.WNOWAIT)  # its end, the pid still held; signals run pass_on
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    _, status = os.waitpid(child, 0)
    code = os.waitstatus_to_exitcode(status)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code if code >= 0 else 128 - code)


def watch_parent(told: int) -> None:
    """A daemon thread that reads the parent's pipe until its end: then one SIGTERM to this process, or, when a
    stop had been passed on, a SIGKILL to its session (Ray's daemons with it). Not Linux's parent-death signal:
    a killed parent's threads exit one by one, the orphan is handed to each in turn and signalled at each exit
    (torch's native threads: two SIGTERMs seen), and a second SIGTERM cut the clean stop short."""

    def watch() -> None:
        stopping = False
        while chunk := os.read(told, 64):
            stopping = True if b"s" in chunk else stopping
        if stopping:
            os.killpg(os.getpgrp(), signal.SIGKILL)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="convfm-parent-watch", daemon=True).start()
