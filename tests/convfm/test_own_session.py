"""`run_in_own_session` (no Ray): the command runs in a session of its own behind a parent that passes signals
on, so a SIGTERM to the caller's process group reaches it once, through the parent; the parent's death is a
SIGTERM to it; the parent exits with the command's code (128 + N for a signal)."""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the fork is Linux-only")

COMMAND = textwrap.dedent("""
    import os, signal, sys, time
    from convfm.cli.own_session import run_in_own_session

    def command() -> int:
        got = []
        signal.signal(signal.SIGTERM, lambda signum, frame: got.append(signum))
        print(os.getpid(), os.getsid(0), flush=True)
        while not got:
            time.sleep(0.02)
        time.sleep(0.5)  # a second signal would arrive meanwhile
        print(*got, flush=True)
        if sys.argv[1] == "die":
            os.kill(os.getpid(), signal.SIGKILL)
        return 7

    sys.exit(run_in_own_session(command))
""")


@pytest.fixture
def start(tmp_path):
    """start(mode) runs the script in a new process group, as a shell or scheduler starts a command -> (process,
    the command's pid, its session id). Whatever a failed test leaves running is killed at its end."""
    script = tmp_path / "command.py"
    script.write_text(COMMAND)
    groups: list[int] = []

    def run(mode: str = "return") -> tuple[subprocess.Popen, int, int]:
        process = subprocess.Popen([sys.executable, str(script), mode], stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True, start_new_session=True)
        groups.append(process.pid)
        first = process.stdout.readline().split()
        assert len(first) == 2, (first, process.stderr.read() if process.poll() is not None else "")
        groups.append(int(first[1]))
        return process, int(first[0]), int(first[1])

    yield run
    for group in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(group, signal.SIGKILL)


@pytest.mark.timeout(60)
def test_a_sigterm_to_the_group_reaches_the_command_once_and_its_code_comes_back(start):
    process, command_pid, session = start()
    assert command_pid != process.pid and session == command_pid  # a process of its own, in a session of its own
    os.killpg(process.pid, signal.SIGTERM)
    out, err = process.communicate(timeout=30)
    assert out.split() == [str(int(signal.SIGTERM))], err  # once: passed on by the parent, not sent to it directly
    assert process.returncode == 7, err


@pytest.mark.timeout(60)
def test_sighup_to_the_parent_stops_the_command_with_sigterm_and_a_signal_death_is_128_plus_n(start):
    process, _, _ = start(mode="die")
    process.send_signal(signal.SIGHUP)
    out, err = process.communicate(timeout=30)
    assert out.split() == [str(int(signal.SIGTERM))], err
    assert process.returncode == 128 + signal.SIGKILL, err


@pytest.mark.timeout(60)
def test_the_command_gets_a_sigterm_when_its_parent_is_killed_outright(start):
    process, _, _ = start()
    process.kill()
    process.wait(timeout=10)
    out = process.stdout.read()  # the command holds the pipe until it exits: at EOF it has
    assert out.split() == [str(int(signal.SIGTERM))]
