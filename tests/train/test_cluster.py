"""train.cluster: which Ray a run starts or joins, how code reaches it, and a dead address failing fast.

Ray itself is not started here: ``ray.init`` is replaced by a recorder where a test needs to see its
arguments. tests/cluster/test_real_cluster.py runs the same decisions against a real `ray start` cluster.
"""
from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import convfm
import train as train_package
from convfm.cli.serve import free_port
from convfm.errors import ConfigError
from train import cluster


@pytest.fixture
def recorded_init(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(cluster.ray, "is_initialized", lambda: False)
    monkeypatch.setattr(cluster.ray, "init", lambda **kwargs: calls.append(kwargs))
    monkeypatch.delenv(cluster.ADDRESS_VAR, raising=False)
    monkeypatch.delenv(cluster.JOB_CONFIG_VAR, raising=False)
    return calls


def test_no_address_starts_a_new_local_ray_never_a_recorded_cluster(recorded_init, monkeypatch):
    monkeypatch.delenv(cluster.STARTUP_CONCURRENCY_VAR, raising=False)
    cluster.init_ray(None, quiet=True)
    assert recorded_init[0]["address"] == "local"
    assert recorded_init[0]["include_dashboard"] is True  # Train's cleanup needs the State API
    # raylet's "worker processes have been started" warning waits for 4x this many processes, not 4x the cores
    assert int(os.environ[cluster.STARTUP_CONCURRENCY_VAR]) >= 8


def test_a_sigterm_while_ray_starts_interrupts_as_after_it(monkeypatch):
    """Ray's own handler, set inside ``ray.init``, turned a SIGTERM there into ``sys.exit(15)``: an exit 15 without
    a word. The CLI (``sigterm_interrupts``) now reads it as the interrupt it is; other callers keep Ray's exit."""
    import signal

    monkeypatch.setattr(cluster.ray, "is_initialized", lambda: False)
    monkeypatch.delenv(cluster.ADDRESS_VAR, raising=False)
    monkeypatch.setattr(cluster.ray, "init", lambda **kwargs: sys.exit(signal.SIGTERM))
    with pytest.raises(KeyboardInterrupt):
        cluster.init_ray(None, quiet=False, sigterm_interrupts=True)
    with pytest.raises(SystemExit):
        cluster.init_ray(None, quiet=False)
    monkeypatch.setattr(cluster.ray, "init", lambda **kwargs: sys.exit(3))
    with pytest.raises(SystemExit):
        cluster.init_ray(None, quiet=False, sigterm_interrupts=True)


def test_a_users_own_startup_concurrency_is_kept(recorded_init, monkeypatch):
    monkeypatch.setenv(cluster.STARTUP_CONCURRENCY_VAR, "3")
    cluster.init_ray(None, quiet=True)
    assert os.environ[cluster.STARTUP_CONCURRENCY_VAR] == "3"


def test_ray_address_of_a_submitted_job_is_joined_without_shipping_code_twice(recorded_init, monkeypatch):
    monkeypatch.setattr(cluster, "check_reachable", lambda address, source: None)
    monkeypatch.setenv(cluster.ADDRESS_VAR, "10.0.0.5:6379")
    monkeypatch.setenv(cluster.JOB_CONFIG_VAR, json.dumps({"runtime_env": {"working_dir": "gcs://_ray_pkg_x.zip"}}))
    cluster.init_ray(None, quiet=True)
    assert recorded_init == [{"address": "10.0.0.5:6379", "runtime_env": {}, "log_to_driver": False}]


def test_a_plain_driver_ships_its_packages_as_paths_that_survive_ray_deep_copy(recorded_init, monkeypatch):
    """Ray deep-copies the runtime env when it merges it with a job's: module objects raised TypeError."""
    monkeypatch.setattr(cluster, "check_reachable", lambda address, source: None)
    import tune as tune_package

    cluster.init_ray("auto", quiet=False, packages=[tune_package])
    runtime_env = recorded_init[0]["runtime_env"]
    assert runtime_env == {"py_modules": [str(Path(m.__file__).parent) for m in (convfm, train_package, tune_package)]}
    assert copy.deepcopy(runtime_env) == runtime_env
    assert all(Path(path, "__init__.py").is_file() for path in runtime_env["py_modules"])


def test_a_job_without_working_dir_gets_the_packages_shipped(monkeypatch):
    monkeypatch.setenv(cluster.JOB_CONFIG_VAR, json.dumps({"runtime_env": {"env_vars": {"A": "1"}}}))
    assert cluster.code_runtime_env([convfm])["py_modules"] == [str(Path(convfm.__file__).parent)]


def test_a_dead_address_fails_in_seconds_naming_it():
    port = free_port()  # nothing listens there; Ray resolves 127.0.0.1 to this node's IP
    address = f"127.0.0.1:{port}"
    started = time.monotonic()
    with pytest.raises(ConfigError, match=rf"--address {address}: the Ray cluster at \S+:{port} does not answer"):
        cluster.check_reachable(address, "--address")
    assert time.monotonic() - started < cluster.PROBE_TIMEOUT_S + 2


def test_auto_with_no_recorded_cluster_says_so(monkeypatch, tmp_path):
    monkeypatch.delenv(cluster.ADDRESS_VAR, raising=False)
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))  # an empty Ray temp dir: no ray_current_cluster file
    monkeypatch.setattr("ray._private.services.find_gcs_addresses", lambda: [])  # nor a GCS process here
    with pytest.raises(ConfigError, match=r"--address auto: Could not find any running Ray instance"):
        cluster.check_reachable("auto", "--address")


def test_auto_with_a_stale_recorded_cluster_fails_fast_naming_it(monkeypatch, tmp_path):
    """An earlier `ray start` whose processes died: Ray would retry its GCS for ~10 minutes."""
    port = free_port()
    stale = f"127.0.0.1:{port}"
    monkeypatch.delenv(cluster.ADDRESS_VAR, raising=False)
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    (tmp_path / "ray").mkdir()
    (tmp_path / "ray" / "ray_current_cluster").write_text(stale)
    monkeypatch.setattr("ray._private.services.find_gcs_addresses", lambda: [])  # no live Ray here either
    with pytest.raises(ConfigError, match=rf"at \S+:{port} does not answer \(recorded by an earlier"):
        cluster.check_reachable("auto", "--address")


def test_convfm_train_with_a_dead_address_exits_2_with_one_line(market_dir, tmp_path):
    port = free_port()
    address = f"127.0.0.1:{port}"
    command = [sys.executable, "-m", "convfm.cli.main", "train", "--data", str(market_dir), "--epochs", "1",
               "--out", str(tmp_path / "run"), "--address", address]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert re.fullmatch(
        rf"convfm train: error: --address {address}: the Ray cluster at \S+:{port} does not answer: "
        r"Connection refused; start it with `ray start --head`, pass the right address, or leave out --address "
        r"for a local Ray", done.stderr.strip().splitlines()[-1]), done.stderr
    assert "Traceback" not in done.stderr


def test_sigterm_as_ctrl_c_calls_the_sigint_handler_of_the_moment_and_restores_both():
    """Within ``Tuner.fit()`` Tune's SIGINT handler stops the search gracefully; SIGTERM then does the same."""
    import signal

    calls = []
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with cluster.sigterm_as_ctrl_c():
        signal.signal(signal.SIGINT, lambda signum, frame: calls.append(signum))  # as Tune sets its own
        for _ in range(2):  # the second, as `pkill -f` also sends the copy `run_in_own_session` passes on: ignored
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)
    assert calls == [signal.SIGTERM]
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
    with cluster.sigterm_as_ctrl_c():
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # SIGINT ignored (a background process): still interrupts
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)  # the handler runs between bytecodes of the main thread
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
