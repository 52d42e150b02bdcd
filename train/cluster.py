"""Start or join Ray for a `convfm train` / `convfm tune` run: which Ray, and how the code reaches it.

Three cases, decided here once for both commands:
- ``--address`` given (``auto``, ``HOST:PORT``, ``ray://...``): join that cluster. ``auto`` is resolved the way
  Ray resolves it ($RAY_ADDRESS, else the cluster recorded in Ray's temp dir) and the GCS is probed first, so
  a dead cluster fails in seconds naming its address instead of Ray retrying it for ~10 minutes.
- no ``--address`` but $RAY_ADDRESS set (every ``ray job submit`` entrypoint has it): join that cluster.
- neither: a new local Ray (``address="local"``), never a cluster some earlier ``ray start`` left recorded.

Code shipping: a job submitted with ``--working-dir``/``--py-modules`` already carries the code to every
node, and Ray merges the driver's runtime env into the job's (by deep copy: module objects cannot be
copied, and a second ``py_modules`` conflicts). Otherwise the packages travel as ``py_modules`` *paths*, so
a plain driver on a cluster whose nodes run another convfm checkout still runs its own code.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import threading
from pathlib import Path
from types import ModuleType
from typing import Any, Iterator, Optional, Sequence

import ray

import convfm
import train as train_package
from convfm.errors import ConfigError
from convfm.signals import stop_once

JOB_CONFIG_VAR = "RAY_JOB_CONFIG_JSON_ENV_VAR"  # set by the job supervisor on a submitted job's entrypoint
ADDRESS_VAR = "RAY_ADDRESS"
PROBE_TIMEOUT_S = 3.0
STARTUP_CONCURRENCY_VAR = "RAY_worker_maximum_startup_concurrency"  # read by the raylet a local Ray starts


def init_ray(address: Optional[str], quiet: bool, packages: Sequence[ModuleType] = (),
             sigterm_interrupts: bool = False) -> None:
    """Join the caller's Ray, the cluster at ``address`` (or $RAY_ADDRESS), or start a local one.

    The dashboard stays on for a local Ray: Ray Train's cleanup queries the State API through it, and
    without it a stopped Tune trial's workers are never freed. ``sigterm_interrupts`` (the CLI): a SIGTERM then
    interrupts as Ctrl-C does; Ray's own handler, set as it connects, aborted the process (exit 134, a C++
    stack dump) while the workers went on for seconds."""
    if quiet:
        quiet_ray_data()
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")  # reports return in ~0.5 s, not 2 s
    target = address or os.environ.get(ADDRESS_VAR) or "local"
    try:
        _connect(target, address, quiet, packages)
    except SystemExit as exc:  # Ray's handler while it starts: sys.exit(SIGTERM), an exit 15 without a word
        if sigterm_interrupts and exc.code == signal.SIGTERM:
            raise KeyboardInterrupt from None
        raise
    if sigterm_interrupts and threading.current_thread() is threading.main_thread():
        # after ray.init: its handler replaces ours; once: `pkill -f` reaches both processes of `run_in_own_session`
        signal.signal(signal.SIGTERM, stop_once(signal.default_int_handler))


def _connect(target: str, address: Optional[str], quiet: bool, packages: Sequence[ModuleType]) -> None:
    """``ray.init`` of a local Ray or of the cluster at ``target``."""
    if target == "local":
        # Train's and Tune's helper actors (controller, sync actor, cleaner, coordinator, each a process, most
        # with 0 CPU) and Serve's outnumber 4x the default startup concurrency (the CPU count) on a small machine:
        # raylet then warns of "worker processes ... started", a warning meant for runaway nested tasks. A
        # concurrency of 8 keeps that warning for more than 32 processes (a user's own setting wins).
        os.environ.setdefault(STARTUP_CONCURRENCY_VAR, str(max(8, os.cpu_count() or 1)))
        ray.init(address="local", include_dashboard=True, configure_logging=False, log_to_driver=not quiet)
    else:
        check_reachable(target, "--address" if address else f"${ADDRESS_VAR}")
        ray.init(address=target, runtime_env=code_runtime_env([convfm, train_package, *packages]),
                 log_to_driver=not quiet)


@contextlib.contextmanager
def sigterm_as_ctrl_c(enabled: bool = True) -> Iterator[None]:
    """Within the block, SIGTERM does whatever Ctrl-C does at that moment. For ``Tuner.fit()``: Tune sets its own
    SIGINT handler there (stop the trials, save the search's state, return; a second signal interrupts at once),
    while the SIGTERM that ``init_ray`` sets would break out of Tune's loop unsaved. After the block both signals
    get back the handlers they had: Tune leaves its SIGINT handler set when no signal came, and a Ctrl-C after
    the search (during the export) then did nothing."""
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield
        return
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, stop_once(_as_ctrl_c))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, before[0])
        signal.signal(signal.SIGTERM, before[1])


def _as_ctrl_c(signum: int, frame: Any) -> None:
    handler = signal.getsignal(signal.SIGINT)
    if not callable(handler):  # SIGINT ignored (a process started in the background) or its default
        raise KeyboardInterrupt
    handler(signum, frame)


def quiet_ray_data() -> None:
    """Ray Data's console lines off: its progress reports and, when a batch function fails, a stack trace of the
    error the CLI then prints in one line (``convfm.cli.main.user_error``). Its session log file
    (``ray-data.log``) keeps everything; ``--debug`` leaves the console as Ray Data sets it."""
    import ray.data  # noqa: F401 - Ray Data configures its loggers on import

    for handler in logging.getLogger("ray.data").handlers:
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            handler.setLevel(logging.CRITICAL + 1)


def joined_cluster(address: Optional[str]) -> bool:
    """Whether ``init_ray(address)`` joins a cluster (which may autoscale) rather than starting a local Ray."""
    return (address or os.environ.get(ADDRESS_VAR) or "local") != "local"


def code_runtime_env(packages: Sequence[ModuleType]) -> dict[str, Any]:
    """The runtime env that ships ``packages`` to the cluster: nothing when the submitted job ships code."""
    job_env = submitted_job_runtime_env()
    if job_env is not None and ("working_dir" in job_env or "py_modules" in job_env):
        return {}
    return {"py_modules": [str(Path(package.__file__).parent) for package in packages]}


def submitted_job_runtime_env() -> Optional[dict[str, Any]]:
    """The runtime env of the Ray job this process is the entrypoint of; None outside a submitted job."""
    raw = os.environ.get(JOB_CONFIG_VAR)
    if not raw:
        return None
    try:
        return dict(json.loads(raw).get("runtime_env") or {})
    except (ValueError, AttributeError, TypeError):
        return {}


def check_reachable(address: str, source: str) -> None:
    """Fail fast, naming the address, when the cluster's GCS does not accept connections.

    ``address`` is a cluster address, not "local". Ray client addresses (``ray://``) are left to Ray, which
    fails quickly on them already."""
    if address.startswith("ray://"):
        return
    from ray._private.services import canonicalize_bootstrap_address  # how ray.init resolves "auto"

    try:
        resolved = canonicalize_bootstrap_address(address)
    except (ValueError, ConnectionError) as exc:  # "Could not find any running Ray instance..." for auto
        raise ConfigError(f"{source} {address}: {exc}") from None
    host, _, port = resolved.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=PROBE_TIMEOUT_S):
            pass
    except OSError as exc:
        stale = " (recorded by an earlier `ray start` whose processes are gone?)" if address == "auto" else ""
        raise ConfigError(f"{source} {address}: the Ray cluster at {resolved} does not answer{stale}: "
                          f"{exc.strerror or exc}; start it with `ray start --head`, pass the right address, "
                          "or leave out --address for a local Ray") from None
