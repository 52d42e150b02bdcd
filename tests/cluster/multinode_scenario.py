"""Multi-node Ray Train on one machine, as a script that writes its findings to a JSON file.

    python tests/cluster/multinode_scenario.py WORKDIR RESULT_JSON [--kill-after-checkpoint]

``ray.cluster_utils.Cluster`` starts a head with no CPUs (dashboard on: Train's cleanup uses the State API)
and two 1-CPU nodes, so a 2-worker run gets exactly one worker per node. With ``--kill-after-checkpoint``
the main thread removes one worker node (no graceful shutdown) as soon as Ray Train has registered the
first checkpoint, then adds a fresh 1-CPU node, as an autoscaler replacing a lost instance would: the run
must restart on the surviving and the new node and resume from that checkpoint.

It runs in its own process because a process can join only one Ray and the test session already has a
local one (tests/conftest.py). The caller points RAY_TMPDIR at a private directory, so this cluster's
address file (/tmp/ray/ray_current_cluster otherwise) and session logs never meet another Ray here.
"""
from __future__ import annotations

import argparse
import json
import os
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Optional

for key, value in {
    "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled", "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0", "RAY_TRAIN_METRICS_ENABLED": "0", "RAY_DEDUP_LOGS": "0",
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2",  # the controller polls workers (and sees a dead one) every 0.2 s
}.items():
    os.environ.setdefault(key, value)

import ray  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

from convfm.config import DataConfig, ModelConfig, TrainConfig  # noqa: E402
from convfm.synth import generate_market, write_market  # noqa: E402
from convfm.commands.serve import free_port  # noqa: E402

# The GCS declares a killed node dead after 3 missed 0.5 s health checks instead of ~15 s.
FAST_NODE_DEATH = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 500,
                   "health_check_timeout_ms": 500, "health_check_failure_threshold": 3}
NODE = {"num_cpus": 1, "object_store_memory": 80 * 2**20}
EPOCHS = 4
RUN_NAME = "run"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("workdir", type=Path)
    parser.add_argument("result", type=Path)
    parser.add_argument("--kill-after-checkpoint", action="store_true")
    args = parser.parse_args()
    try:
        result = run(args.workdir, args.kill_after_checkpoint)
    except Exception as exc:  # noqa: BLE001 - the test reads the error from the result file
        result = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:4000], "traceback": traceback.format_exc()}
    args.result.write_text(json.dumps(result, indent=1, default=str))


def run(workdir: Path, kill: bool) -> dict[str, Any]:
    started = time.monotonic()
    market = workdir / "market"
    write_market(generate_market(users=300, jobs=150, interactions=6000, seed=0), market)
    # Free ports, not 8265/52365: another Ray on this machine (a test session, a user) may hold those.
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "include_dashboard": True, "dashboard_port": free_port(),
        "dashboard_agent_listen_port": None, "object_store_memory": 100 * 2**20, "_system_config": FAST_NODE_DEATH})
    try:
        nodes = [cluster.add_node(**NODE) for _ in range(2)]
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
        report: dict[str, Any] = {"ok": True, "nodes": {"head": cluster.head_node.node_id,
                                                        "a": nodes[0].node_id, "b": nodes[1].node_id}}
        training = _Training(market, workdir)
        training.start()
        if kill:  # Ray's Node installs signal handlers, so nodes come and go from the main thread only
            report["nodes"].update(_replace_node_after_checkpoint(cluster, nodes[1], training))
        training.join()
        if training.error is not None:
            raise training.error
        report.update(training.result, workers=_train_workers(), wall_seconds=time.monotonic() - started)
        return report
    finally:
        ray.shutdown()
        cluster.shutdown()


def _replace_node_after_checkpoint(cluster: Cluster, node: Any, training: "_Training") -> dict[str, Any]:
    """Remove ``node`` (no graceful shutdown) once Train has registered a checkpoint, then add a new node."""
    run_dir = training.workdir / "storage" / RUN_NAME
    snapshot = run_dir / "checkpoint_manager_snapshot.json"  # written once a checkpoint is registered
    while not snapshot.exists():
        if not training.is_alive():
            raise RuntimeError(f"training ended without a checkpoint registered in {run_dir}")
        time.sleep(0.05)
    seen = time.monotonic()
    cluster.remove_node(node, allow_graceful=False)
    removed = {"removed": node.node_id, "removal_seconds": time.monotonic() - seen,
               "training_alive_after_removal": training.is_alive()}
    removed["replacement"] = cluster.add_node(**NODE).node_id
    return removed


class _Training(threading.Thread):
    """run_training in a thread, while the main thread removes and adds nodes."""

    def __init__(self, market: Path, workdir: Path) -> None:
        super().__init__(name="training", daemon=True)
        self.market, self.workdir = market, workdir
        self.result: dict[str, Any] = {}
        self.error: Optional[Exception] = None

    def run(self) -> None:
        try:
            self.result = self._train()
        except Exception as exc:  # noqa: BLE001 - re-raised by the main thread
            self.error = exc

    def _train(self) -> dict[str, Any]:
        from train.driver import run_training

        data = DataConfig(path=str(self.market))
        model = ModelConfig.from_dict({"embedding_dim": 8, "conv_filters": 8, "hidden_dims": [16]})
        # batch 64: ~1 s epochs, so the node removal (~0.5 s) lands mid-run rather than after the last epoch
        # One worker per node: SPREAD asks for it, and each worker needs a node's only CPU (the head has none).
        train = TrainConfig.from_dict({"num_workers": 2, "num_epochs": EPOCHS, "patience": EPOCHS, "batch_size": 64,
                                       "learning_rate": 0.005, "eval_negatives": 19, "max_failures": 2,
                                       "cpus_per_worker": 1, "placement_strategy": "SPREAD"})
        result = run_training(data, model, train, self.workdir / RUN_NAME, storage_path=str(self.workdir / "storage"))
        lines = (result.out_dir / "metrics.csv").read_text().splitlines()
        column = lines[0].split(",").index("epoch")
        return {"history": [{k: r.get(k) for k in ("epoch", "run_start_epoch", "world_size", "worker_pids",
                                                    "samples_per_s", "val_roc_auc")} for r in result.history],
                "metrics_csv_epochs": [int(float(line.split(",")[column])) for line in lines[1:]],
                "restarts": result.restarts, "best_epoch": result.best_epoch,
                "best_model_complete": (result.best_dir / "manifest.json").is_file(),
                "train_wall_seconds": result.wall_seconds}


def _train_workers() -> list[dict[str, Any]]:
    """Every Ray Train worker actor of the run, dead or alive, with the node it ran on."""
    from ray.util.state import list_actors

    actors = list_actors(filters=[("class_name", "=", "RayTrainWorker")], limit=100, raise_on_missing_output=False)
    return [{"node_id": a.node_id, "state": a.state, "pid": a.pid} for a in actors]


if __name__ == "__main__":
    main()
