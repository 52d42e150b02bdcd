"""A real two-node Ray cluster on this machine, started with the `ray start` commands a user runs.

Each node is a ``ray start ... --block`` process in its own process session; every process it spawns (GCS,
raylet, dashboard, workers, job drivers) descends from it. ``stop`` ends exactly those: the recorded
``ray start`` processes, their descendants and their process groups, never another Ray on the machine
(``ray stop`` would kill every Ray of this user).

Isolation from any other Ray here (a test session's local Ray, a user's cluster):
- its own free ports (GCS, dashboard, client server, dashboard agent) and random worker ports;
- its own ``RAY_TMPDIR`` (a short path: Ray's unix sockets live under it), so its address file is its own;
- its own ``HOME``, where ``ray get-auth-token --generate`` writes ``~/.ray/auth_token``, and
  ``RAY_AUTH_MODE=token`` for every process: the token setup docs/CLUSTER.md tells users to do.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional, Sequence

import psutil

from convfm.cli.serve import free_port

# The GCS declares a lost node dead after 3 missed 0.5 s health checks instead of ~15 s.
FAST_NODE_DEATH = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 500,
                   "health_check_timeout_ms": 500, "health_check_failure_threshold": 3}
NODE_OBJECT_STORE = 200 * 2**20


class RealCluster:
    """``start_head``, ``add_node``, then ``run``/``popen`` commands with the cluster's environment; ``stop``."""

    def __init__(self, workdir: Path, repo: Path) -> None:
        self.workdir, self.repo = workdir, repo
        self.shared = workdir / "shared"  # what /mnt/shared is on a real cluster: every node sees it
        self.logs = workdir / "logs"
        for folder in (self.shared, self.logs, workdir / "home"):
            folder.mkdir(parents=True, exist_ok=True)
        self.ray_tmp = Path(tempfile.mkdtemp(prefix="cfm-ray-", dir="/tmp"))
        self.nodes: dict[str, subprocess.Popen] = {}
        self.seen: dict[int, psutil.Process] = {}  # every process seen under a node, for stop()
        self.gcs_port, self.dashboard_port = free_port(), free_port()
        bin_dir = str(Path(sys.executable).parent)  # the venv's ray, serve and convfm
        self.env = {**os.environ, "HOME": str(workdir / "home"), "RAY_TMPDIR": str(self.ray_tmp),
                    "RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1",
                    "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
                    # what `ray dashboard cluster.yaml` provides on localhost:8265, on this cluster's port
                    "RAY_API_SERVER_ADDRESS": self.dashboard_url, "RAY_DASHBOARD_ADDRESS": self.dashboard_url}
        self.env.pop("RAY_ADDRESS", None)

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    def start_head(self, num_cpus: int) -> None:
        self.run(["ray", "get-auth-token", "--generate"], timeout=60)
        self._start("head", ["--head", "--port", str(self.gcs_port), "--dashboard-port", str(self.dashboard_port),
                             "--include-dashboard", "true", "--ray-client-server-port", str(free_port()),
                             "--system-config", json.dumps(FAST_NODE_DEATH)], num_cpus)

    def add_node(self, name: str, num_cpus: int) -> None:
        self._start(name, ["--address", self.address], num_cpus)

    def _start(self, name: str, flags: list[str], num_cpus: int) -> None:
        command = ["ray", "start", *flags, "--block", "--node-ip-address", "127.0.0.1", "--num-cpus", str(num_cpus),
                   "--dashboard-agent-listen-port", str(free_port()), "--min-worker-port", "0",
                   "--max-worker-port", "0", "--object-store-memory", str(NODE_OBJECT_STORE), "--disable-usage-stats"]
        log = open(self.logs / f"ray-start-{name}.log", "w")
        # cwd: Serve resolves serve/config.yaml's relative `model: models/convfm` from where the cluster started
        self.nodes[name] = subprocess.Popen(command, cwd=self.shared, env=self.env, stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        self.wait_for_nodes(len(self.alive_nodes()), starting=name)

    def alive_nodes(self) -> list[str]:
        return [name for name, process in self.nodes.items() if process.poll() is None]

    def wait_for_nodes(self, count: int, starting: str, timeout: float = 90) -> None:
        """Until ``count`` nodes are alive in the GCS; fails at once if the ``starting`` node's process exits."""
        script = ("import sys, time, ray; ray.init(address='auto', log_to_driver=False)\n"
                  f"deadline = time.monotonic() + {timeout}\n"
                  f"while sum(1 for n in ray.nodes() if n['Alive']) != {count}:\n"
                  "    if time.monotonic() > deadline: sys.exit(3)\n"
                  "    time.sleep(0.5)\n")
        waiter = subprocess.Popen([sys.executable, "-c", script], env={**self.env, "RAY_ADDRESS": self.address},
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + timeout + 30
        while waiter.poll() is None:
            if self.nodes[starting].poll() is not None or time.monotonic() > deadline:
                waiter.kill()
                break
            time.sleep(0.2)
        output = waiter.communicate()[0]
        if waiter.returncode != 0:
            raise RuntimeError(f"{count} node(s) not alive (`ray start` of {starting}: "
                               f"{self.log_tail(f'ray-start-{starting}.log')}); waiter: {output[-3000:]}")
        self._record()

    def run(self, command: Sequence[str], timeout: float, cwd: Optional[Path] = None,
            check: bool = True) -> subprocess.CompletedProcess:
        """Run a client command (``ray job submit ...``, ``serve deploy ...``) to completion."""
        self._record()
        done = subprocess.run(list(command), cwd=cwd or self.repo, env=self.env, capture_output=True, text=True,
                              timeout=timeout)
        self._record()
        if check and done.returncode != 0:
            raise AssertionError(f"{' '.join(command)} exited {done.returncode}:\n{done.stdout[-6000:]}\n"
                                 f"{done.stderr[-6000:]}")
        return done

    def popen(self, command: Sequence[str], log_name: str, cwd: Optional[Path] = None) -> subprocess.Popen:
        """Start a client command in the background, its output in logs/<log_name>."""
        log = open(self.logs / log_name, "w")
        return subprocess.Popen(list(command), cwd=cwd or self.repo, env=self.env, stdout=log,
                                stderr=subprocess.STDOUT)

    def wait_noting_pids(self, job: subprocess.Popen, timeout: float) -> dict[str, set[int]]:
        """Wait for a background command (killed past ``timeout``), noting every process each live node ran
        meanwhile: node name -> pids, to tell which node a run's Ray workers were on after they are gone."""
        pids: dict[str, set[int]] = {name: set() for name in self.alive_nodes()}
        deadline = time.monotonic() + timeout
        while job.poll() is None:
            if time.monotonic() > deadline:
                job.kill()
                break
            for name, seen in pids.items():
                seen.update(p.pid for p in self.descendants(name))
            time.sleep(0.5)
        self._record()
        return pids

    def descendants(self, name: str) -> list[psutil.Process]:
        try:
            return psutil.Process(self.nodes[name].pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def kill_raylet(self, name: str) -> int:
        """SIGKILL the node's raylet, as a lost machine would vanish; its workers die with it."""
        self._record()
        raylet = next(p for p in self.descendants(name) if p.name() == "raylet")
        raylet.kill()
        return raylet.pid

    def log_tail(self, log_name: str, chars: int = 4000) -> str:
        path = self.logs / log_name
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def _record(self) -> None:
        for name in self.nodes:  # psutil.Process signals refuse a pid reused by another process
            self.seen.update((p.pid, p) for p in self.descendants(name))

    def stop(self) -> None:
        """SIGTERM each `ray start --block` (it stops its node), then SIGKILL whatever of theirs is left."""
        self._record()
        for process in self.nodes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.nodes.values():
            try:
                process.wait(timeout=5)  # a graceful stop takes ~20 s; nothing here needs one
            except subprocess.TimeoutExpired:
                pass
        for process in self.seen.values():
            _kill(process)
        for process in self.nodes.values():
            try:
                os.killpg(process.pid, signal.SIGKILL)  # start_new_session: the group is this node's alone
            except (ProcessLookupError, PermissionError):
                pass
        shutil.rmtree(self.ray_tmp, ignore_errors=True)


def _kill(process: psutil.Process) -> None:
    try:
        process.kill()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        pass
