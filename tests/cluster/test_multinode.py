"""Ray Train across simulated nodes: one worker per node, and a node lost mid-run is survived from a checkpoint.

The scenario (tests/cluster/multinode_scenario.py) runs once, in its own process with its own RAY_TMPDIR:
the session's local Ray (tests/conftest.py) and a ``ray.cluster_utils.Cluster`` cannot share a process, and
the cluster's address file must not redirect anyone else's ``ray.init()`` on this machine. ~60-90 s.
"""
from __future__ import annotations

import collections
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]
SCENARIO = Path(__file__).with_name("multinode_scenario.py")
EPOCHS = 4  # multinode_scenario.EPOCHS


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    workdir = tmp_path_factory.mktemp("multinode")
    # Short and private: Ray's Unix socket paths live under it (limit ~107 characters).
    ray_tmp = tempfile.mkdtemp(prefix="convfm-mn-", dir="/tmp")
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
    env.update(RAY_TMPDIR=ray_tmp, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    result_file = workdir / "result.json"
    command = [sys.executable, str(SCENARIO), str(workdir), str(result_file), "--kill-after-checkpoint"]
    # Own session: on a timeout the whole group (GCS, raylets, workers) goes, not just the script.
    process = subprocess.Popen(command, env=env, cwd=SCENARIO.parents[2], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = process.communicate(timeout=210)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        pytest.fail(f"multi-node scenario still running after 210 s; Ray logs in {ray_tmp}\n{output[-3000:]}")
    if not result_file.exists():
        pytest.fail(f"scenario exited {process.returncode} without a result; Ray logs in {ray_tmp}\n{output[-3000:]}")
    result = json.loads(result_file.read_text())
    if not result["ok"]:
        pytest.fail(f"{result['error']}\n{result['traceback'][-3000:]}\nRay logs in {ray_tmp}")
    shutil.rmtree(ray_tmp, ignore_errors=True)  # session logs of a passing run are not needed
    return result


def node_of_pid(scenario: dict[str, Any]) -> dict[int, str]:
    return {w["pid"]: w["node_id"] for w in scenario["workers"]}


def group_nodes(scenario: dict[str, Any], record: dict[str, Any]) -> list[str]:
    """Nodes of the worker group that trained the epoch of ``record``, in rank order."""
    nodes = node_of_pid(scenario)
    return [nodes[int(pid)] for pid in record["worker_pids"].split(",")]


def test_two_workers_train_on_two_nodes_one_each(scenario):
    nodes = scenario["nodes"]
    first = scenario["history"][0]
    assert first["world_size"] == 2
    assert sorted(group_nodes(scenario, first)) == sorted([nodes["a"], nodes["b"]])
    assert nodes["head"] not in {w["node_id"] for w in scenario["workers"]}  # the head has no CPUs


def test_removed_node_is_replaced_and_training_resumes_from_its_checkpoint(scenario):
    nodes, history = scenario["nodes"], scenario["history"]
    assert scenario["nodes"]["training_alive_after_removal"], "the node was removed after training had ended"
    # one restart, at the epoch after the last checkpoint, not from scratch
    assert len(scenario["restarts"]) == 1, scenario["restarts"]
    resumed_at = scenario["restarts"][0]
    assert 1 <= resumed_at < EPOCHS
    assert [r["run_start_epoch"] for r in history] == [0] * resumed_at + [resumed_at] * (EPOCHS - resumed_at)
    # the new worker group runs on the surviving node and the replacement, one worker each
    survivor = nodes["a"] if nodes["removed"] == nodes["b"] else nodes["b"]
    assert sorted(group_nodes(scenario, history[-1])) == sorted([survivor, nodes["replacement"]])
    per_node = collections.Counter(w["node_id"] for w in scenario["workers"])
    assert per_node == {nodes["removed"]: 1, survivor: 2, nodes["replacement"]: 1}


def test_every_epoch_is_recorded_once_and_the_best_model_is_complete(scenario):
    assert [r["epoch"] for r in scenario["history"]] == list(range(EPOCHS))
    assert scenario["metrics_csv_epochs"] == list(range(EPOCHS))
    assert scenario["best_model_complete"] and 0 <= scenario["best_epoch"] < EPOCHS
    assert all(0.5 < r["val_roc_auc"] <= 1.0 for r in scenario["history"])  # it learned; not a broken restore
