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
import time

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the fork is Linux-only")

COMMAND = textwrap.dedent("""
    import os, signal, subprocess, sys, time
    from convfm.cli.own_session import run_in_own_session

    def command() -> int:
        got = []
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda signum, frame: got.append(signum))
        helper = subprocess.Popen(["sleep", "60"])  # in the command's session, as Ray's daemons are
        print(os.getpid(), os.getsid(0), helper.pid, flush=True)
        while not got:
            time.sleep(0.02)
        time.sleep(3 if sys.argv[1] == "slow" else 0.5)  # the clean stop; a second signal would arrive meanwhile
        helper.kill()
        print(*got, flush=True)
        if sys.argv[1] == "die":
            os.kill(os.getpid(), signal.SIGKILL)
        return 7

    sys.exit(run_in_own_session(command))
""")


@pytest.fixture
def start(tmp_path):
    """start(mode) runs the script in a new process group, as a shell or scheduler starts a command -> (process,
    the command's pid, its session id, the pid of a helper process it started). Whatever a failed test leaves
    running is killed at its end."""
    script = tmp_path / "command.py"
    script.write_text(COMMAND)
    groups: list[int] = []

    def run(mode: str = "return") -> tuple[subprocess.Popen, int, int, int]:
        process = subprocess.Popen([sys.executable, str(script), mode], stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True, start_new_session=True)
        groups.append(process.pid)
        first = process.stdout.readline().split()
        assert len(first) == 3, (first, process.stderr.read() if process.poll() is not None else "")
        groups.append(int(first[1]))
        return process, int(first[0]), int(first[1]), int(first[2])

    yield run
    for group in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(group, signal.SIGKILL)


@pytest.mark.timeout(60)
def test_a_sigterm_to_the_group_reaches_the_command_once_and_its_code_comes_back(start):
    process, command_pid, session, _ = start()
    assert command_pid != process.pid and session == command_pid  # a process of its own, in a session of its own
    os.killpg(process.pid, signal.SIGTERM)
    out, err = process.communicate(timeout=30)
    assert out.split() == [str(int(signal.SIGTERM))], err  # once: passed on by the parent, not sent to it directly
    assert process.returncode == 7, err


@pytest.mark.timeout(60)
def test_sighup_to_the_parent_stops_the_command_with_sigterm_and_a_signal_death_is_128_plus_n(start):
    process, _, _, _ = start(mode="die")
    process.send_signal(signal.SIGHUP)
    out, err = process.communicate(timeout=30)
    assert out.split() == [str(int(signal.SIGTERM))], err
    assert process.returncode == 128 + signal.SIGKILL, err


@pytest.mark.timeout(60)
def test_the_command_gets_a_sigterm_when_its_parent_is_killed_outright(start):
    process, _, _, _ = start()
    process.kill()
    process.wait(timeout=10)
    out = process.stdout.read()  # the command holds the pipe until it exits: at EOF it has
    assert out.split() == [str(int(signal.SIGTERM))]


@pytest.mark.timeout(60)
def test_sigint_passes_on_as_sigint(start):
    process, _, _, _ = start()
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=30)
    assert out.split() == [str(int(signal.SIGINT))] and process.returncode == 7, err


@pytest.mark.timeout(60)
def test_a_sigkill_to_the_group_during_the_stop_ends_the_commands_whole_session(start):
    """As `timeout -k` escalates: a SIGTERM to the group, then a SIGKILL. The SIGKILL reaches the parent only; its
    end, after a stop was passed on, kills the command's session (Ray's daemons with it) instead of a second
    SIGTERM that would have cut the stop short while everything lived on."""
    process, command_pid, _, helper = start(mode="slow")
    os.killpg(process.pid, signal.SIGTERM)
    time.sleep(0.5)  # the stop passed on and begun
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=10)
    assert process.stdout.read() == ""  # killed in its stop: it never printed what it got
    for pid in (command_pid, helper):
        deadline = time.monotonic() + 10
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive(pid), pid


@pytest.mark.timeout(60)
def test_ctrl_z_stops_the_command_and_fg_continues_it(start):
    process, command_pid, _, _ = start()
    process.send_signal(signal.SIGTSTP)
    assert wait_for_state(command_pid, "T") and wait_for_state(process.pid, "T")
    process.send_signal(signal.SIGCONT)
    assert wait_for_state(command_pid, "S")
    os.killpg(process.pid, signal.SIGTERM)
    out, err = process.communicate(timeout=30)
    assert out.split() == [str(int(signal.SIGTERM))] and process.returncode == 7, err


def alive(pid: int) -> bool:
    """Running (a zombie or a gone pid is not)."""
    return state(pid) not in ("", "Z")


def state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return ""


def wait_for_state(pid: int, wanted: str, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while state(pid) != wanted and time.monotonic() < deadline:
        time.sleep(0.05)
    return state(pid) == wanted
