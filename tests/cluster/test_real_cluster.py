"""The cluster workflow as users run it: `ray start` nodes, `ray job submit`, `serve deploy`, token auth.

The commands come from the documents themselves (the section "A local cluster, the same commands" of
docs/CLUSTER.md, and the RayJob manifests in deploy/), so a documented command that breaks fails here. They are
adapted in three ways only, by ``adapt``: the shared folder (``~/convfm-shared``; ``/mnt/shared`` in the
manifests) is a temporary folder, ``--gpu`` is dropped (no GPU here), and sizes (users, epochs, trials) are
made tiny. The cluster is a head with 2 CPUs and a
second node with 1 CPU; every process runs with the documented token setup (``RAY_AUTH_MODE=token`` and a
``~/.ray/auth_token`` from ``ray get-auth-token --generate``).

One module-scoped cluster, the tests in the order a user works: data and a training run spread over both
nodes (whose second node is lost mid-run, a third joining once it is over), evaluation, a generic table and the
job market trained with distributed preparation (Ray Data) over the two live nodes, a search, the training run
published after it, batch recommendations, the service. The RayJob manifests' entrypoints are checked against
the documented commands, not run.
"""
from __future__ import annotations

import csv
import json
import re
import shlex
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import yaml

from convfm.cli.main import main
from convfm.cli.serve import free_port
from convfm.jsonfile import read_json
from real_cluster import RealCluster

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]

REPO = Path(__file__).resolve().parents[2]
CLUSTER_DOC = REPO / "docs" / "CLUSTER.md"
LOCAL_SECTION = "## A local cluster, the same commands"
JOB_TIMEOUT = 300


def documented(pattern: str) -> str:
    """The one command line of docs/CLUSTER.md's local-cluster section that matches ``pattern`` (a regex)."""
    text = CLUSTER_DOC.read_text()
    section = text[text.index(LOCAL_SECTION):].split("\n## ")[0]
    lines = [line.strip() for line in section.splitlines() if re.search(pattern, line)]
    assert len(lines) == 1, f"docs/CLUSTER.md: expected one command matching {pattern!r}, found {lines}"
    return lines[0]


def adapt(command: str, shared: Path, **flags: Any) -> list[str]:
    """The documented command for this machine: shared paths, no --gpu, flags set (``epochs=1`` -> ``--epochs 1``,
    replacing the documented value or appended)."""
    words = [word.replace("/mnt/shared", str(shared)).replace("~/convfm-shared", str(shared))
             for word in shlex.split(command.split(" && ")[0].split("  #")[0]) if word != "--gpu"]
    for name, value in flags.items():
        flag = "--" + name.replace("_", "-")
        if flag in words:
            words[words.index(flag) + 1] = str(value)
        else:
            words += [flag, str(value)]
    return words


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealCluster]:
    real = RealCluster(tmp_path_factory.mktemp("real_cluster"), REPO)
    try:
        real.start_head(num_cpus=2)
        real.add_node("node2", num_cpus=1)
        yield real
    finally:
        real.stop()


@pytest.fixture(scope="module")
def market(cluster: RealCluster) -> Path:
    command = documented(r"^ray job submit .* convfm data synth ")
    cluster.run(adapt(command, cluster.shared, users=800, jobs=300, interactions=12000), timeout=JOB_TIMEOUT)
    path = cluster.shared / "data" / "synthetic"
    assert (path / "interactions.csv").is_file()
    return path


@pytest.fixture(scope="module")
def spread_run(cluster: RealCluster, market: Path) -> dict[str, Any]:
    """The documented training job, 2 workers with --placement SPREAD; node2's raylet is killed as soon as
    Ray Train registers the first checkpoint, and a new node joins once the job is over."""
    command = adapt(documented(r"^ray job submit .* convfm train .*--data (?!.*--prepare)"), cluster.shared, workers=2,
                    epochs=2,
                    placement="SPREAD")  # epoch 0, node2 lost, epoch 1 resumed from epoch 0's checkpoint
    out = Path(command[command.index("--out") + 1])
    snapshot = out / "ray" / out.name / "checkpoint_manager_snapshot.json"
    job = cluster.popen(command, "train-spread.log")
    deadline = time.monotonic() + JOB_TIMEOUT
    while not snapshot.exists():
        assert job.poll() is None, f"job ended before a checkpoint: {cluster.log_tail('train-spread.log')}"
        assert time.monotonic() < deadline, "no checkpoint registered in time"
        time.sleep(0.1)
    node2_pids = {p.pid for p in cluster.descendants("node2")}
    head_pids = {p.pid for p in cluster.descendants("head")}
    raylet = cluster.kill_raylet("node2")
    alive_at_kill = job.poll() is None
    returncode = job.wait(timeout=max(1.0, deadline - time.monotonic()))
    log = cluster.log_tail("train-spread.log", 10**7)
    assert returncode == 0, log[-8000:]
    cluster.add_node("node3", num_cpus=1)  # as an autoscaler replaces a lost instance
    return {"out": out, "log": log, "node2_pids": node2_pids, "head_pids": head_pids, "raylet": raylet,
            "alive_at_kill": alive_at_kill}


def test_training_job_spreads_over_both_nodes_and_resumes_after_losing_one(spread_run: dict[str, Any]) -> None:
    out = spread_run["out"]
    run = read_json(out / "run.json", "the run record")
    assert run["status"] == "finished", run
    with open(out / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    epochs = [int(float(row["epoch"])) for row in rows]
    assert epochs == list(range(len(epochs))) and len(epochs) >= 2, epochs  # every epoch once, in order
    assert spread_run["alive_at_kill"], "the job had ended before node2 was lost"
    assert run["restarts"], f"no restart after node2's raylet ({spread_run['raylet']}) was killed: {rows}"
    first = [int(pid) for pid in rows[0]["worker_pids"].split(",")]
    assert len(first) == 2 and set(first) & spread_run["node2_pids"] and set(first) & spread_run["head_pids"], (
        f"workers {first} not one per node (node2 pids {sorted(spread_run['node2_pids'])})")
    resumed = [row for row in rows if int(float(row["run_start_epoch"])) > 0]
    assert resumed and int(float(resumed[0]["run_start_epoch"])) == int(float(resumed[0]["epoch"])), rows
    assert int(float(resumed[0]["world_size"])) == 2
    assert all(0.5 < float(row["val_roc_auc"]) <= 1.0 for row in rows), rows  # it learned: not a broken restore
    assert (out / "best" / "manifest.json").is_file()
    assert "epoch   1" in spread_run["log"] and "best model:" in spread_run["log"]


def test_evaluate_job_reads_the_shared_run(cluster: RealCluster, spread_run: dict[str, Any], market: Path) -> None:
    best = spread_run["out"] / "best"
    command = adapt(documented(r"^ray job submit .* convfm evaluate "), cluster.shared)
    assert command[command.index("--model") + 1] == str(best)
    cluster.run(command, timeout=JOB_TIMEOUT)
    report = read_json(best.with_name("best.eval_test.json"), "the evaluation report")
    assert 0.5 < report["model"]["roc_auc"] <= 1.0, report


@pytest.fixture(scope="module")
def table_run(cluster: RealCluster, table_example: Callable[[Path, dict[str, str]], Path]) -> dict[str, Any]:
    """The documented training of a table prepared on the cluster (Ray Data), 1 epoch in batches of 32. The test
    writes the table where the command reads it (tests/conftest.py's cut of configs/table_example.csv), as CSV:
    with Parquet, Ray Data's reader had the raylet start up to 20 worker processes on these 2 cores, and twice a
    raylet starved until the GCS declared its node dead (FAST_NODE_DEATH); tests/train/test_prepare_distributed.py
    reads Parquet."""
    command = adapt(documented(r"^ray job submit .* convfm train .*--table .*--prepare distributed"), cluster.shared,
                    epochs=1, batch_size=32)  # ~90 steps: the documented 1,024 takes 3 steps of 3,000 rows, no learning
    spec = Path(command[command.index("--table") + 1])
    table_example(spec.parent, dict.fromkeys(("train", "valid", "test"), "csv"))
    assert spec.is_file(), f"the documented spec {spec} is not the table.yaml tests/conftest.py writes"
    return submitted(cluster, command, "train-table.log")


def submitted(cluster: RealCluster, command: list[str], log_name: str) -> dict[str, Any]:
    """Run a training job to its end, noting which node ran which process: its run directory, log and pids."""
    job = cluster.popen(command, log_name)
    pids = cluster.wait_noting_pids(job, timeout=JOB_TIMEOUT)
    log = cluster.log_tail(log_name, 10**6)
    assert job.wait() == 0, log[-8000:]
    return {"out": Path(command[command.index("--out") + 1]), "log": log, "pids": pids}


def prepared_on_the_cluster(run: dict[str, Any]) -> dict[str, str]:
    """The run prepared its data on the cluster, trained one epoch with one worker on each node, learned from the
    streamed shards and wrote its best model: its metrics row."""
    out = run["out"]
    assert "preparing data on the cluster (Ray Data): asked for (--prepare distributed)" in run["log"]
    record = read_json(out / "run.json", "the run record")
    assert record["status"] == "finished" and record["prepare"]["path"] == "distributed", record
    with open(out / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 1 and int(float(rows[0]["world_size"])) == 2, rows
    workers = {int(pid) for pid in rows[0]["worker_pids"].split(",")}
    nodes = {name for name, pids in run["pids"].items() if workers & pids}
    assert len(workers) == 2 and len(nodes) == 2, f"workers {workers} ran on {nodes}, not one per node"
    # chance is 0.5; in process, the table's epoch measured 0.61 (the generator's 0.80)
    assert 0.55 < float(rows[0]["val_roc_auc"]) <= 1.0, rows
    assert (out / "best" / "manifest.json").is_file() and "best model:" in run["log"]
    return rows[0]


def test_table_job_prepares_on_the_cluster_and_trains_on_both_nodes(table_run: dict[str, Any]) -> None:
    prepared_on_the_cluster(table_run)


@pytest.fixture(scope="module")
def market_run(cluster: RealCluster, market: Path) -> dict[str, Any]:
    """The documented training of the job market prepared on the cluster (Ray Data: examples, splits and
    histories per user bucket), 1 epoch."""
    command = adapt(documented(r"^ray job submit .* convfm train .*--data .*--prepare distributed"), cluster.shared,
                    epochs=1, batch_size=256)
    return submitted(cluster, command, "train-market.log")


def test_market_job_prepares_on_the_cluster_and_trains_on_both_nodes(market_run: dict[str, Any]) -> None:
    prepared_on_the_cluster(market_run)
    serving = read_json(market_run["out"] / "best" / "serving.json", "the serving data")
    assert len(serving["jobs"]["job_id"]) == 300 and serving["seen"]["user_id"], serving.keys()


@pytest.fixture(scope="module")
def tuned(cluster: RealCluster, market: Path, spread_run: dict[str, Any]) -> Path:
    """The documented search, which publishes its best model as the shared registry entry's v0001; the spread
    run's best model is then published as v0002 (`convfm models publish`, the daily loop's step). Its trial has
    2 workers: a TorchTrainer (DDP) per trial; 1-worker trials train in their Tune actor (tests/tune)."""
    tune = adapt(documented(r"^ray job submit .* convfm tune "), cluster.shared, samples=1, max_concurrent=1,
                 epochs=1, workers_per_trial=2)
    cluster.run(tune, timeout=JOB_TIMEOUT)
    entry = Path(tune[tune.index("--registry") + 1]) / "convfm"
    assert (entry / "v0001" / "manifest.json").is_file()  # the search's best
    assert int(read_json(entry / "v0001" / "metrics.json", "the best trial's metrics")["world_size"]) == 2
    assert list((Path(tune[tune.index("--out") + 1]) / "train").glob("train-*/checkpoint_*/model"))
    assert main(["models", "publish", str(spread_run["out"] / "best"), str(entry)]) == 0
    return entry


def test_tune_job_publishes_to_the_shared_registry(tuned: Path) -> None:
    assert (tuned / "v0001" / "manifest.json").is_file() and (tuned / "v0002" / "manifest.json").is_file()
    assert (tuned / "latest").read_text().strip() == "v0002"  # published after the search's v0001


def test_batch_recommendations_job_writes_every_users_top_k(cluster: RealCluster, tuned: Path, market: Path) -> None:
    command = adapt(documented(r"^ray job submit .* convfm recommend-batch "), cluster.shared)
    command[command.index("-k") + 1] = "5"  # `adapt` writes long flags; -k has none
    out = Path(command[command.index("--out") + 1])
    cluster.run(command, timeout=JOB_TIMEOUT)
    summary = read_json(out / "_SUCCESS.json", "the batch summary")
    users = sum(1 for _ in csv.DictReader(open(market / "users.csv")))
    assert summary["users"] == summary["users_with_rows"] == users and summary["workers"] == 2, summary
    assert summary["rows"] == 5 * users and summary["model_version"] == "v0002", summary  # the entry's latest


def rayjob_entrypoint(manifest: str, shared: Path, **flags: Any) -> list[str]:
    """A RayJob's entrypoint as KubeRay submits it: `ray job submit -- ENTRYPOINT`, the code from the image
    (here the installed checkout: /home/ray/convfm is this repository)."""
    entrypoint = yaml.safe_load((REPO / "deploy" / manifest).read_text())["spec"]["entrypoint"]
    entrypoint = entrypoint.replace("/home/ray/convfm", str(REPO))
    return ["ray", "job", "submit", "--", *adapt(entrypoint, shared, **flags)]


# What a RayJob manifest's entrypoint may say that the documented local command does not, and the reverse.
MANIFEST_ONLY = {"rayjob-train.yaml": {}, "rayjob-tune.yaml": {"--workers-per-trial": "1"}}  # spelled out there
DOCS_ONLY = {"rayjob-train.yaml": {"--placement": "SPREAD"}, "rayjob-tune.yaml": {}}  # one worker per local node


@pytest.mark.parametrize("manifest, pattern", [
    ("rayjob-train.yaml", r"^ray job submit .* convfm train .*--data (?!.*--prepare)"),
    ("rayjob-tune.yaml", r"^ray job submit .* convfm tune "),
])
def test_rayjob_entrypoint_is_the_documented_command(manifest: str, pattern: str) -> None:
    """The manifests' entrypoints are not submitted here (each costs a minute or more of this box's 2 cores):
    each must be the documented command that runs above, which is: the same flags but for the image's config
    path, its own run directory, its sizes and the differences listed above (tests/cluster/test_kuberay.py
    parses them with the CLI)."""
    def flags(words: list[str]) -> dict[str, str]:
        words = words[words.index("convfm") + 2:]
        return {w: (words[i + 1] if i + 1 < len(words) and not words[i + 1].startswith("--") else "")
                for i, w in enumerate(words) if w.startswith("--")}

    shared = Path("/shared")
    ours, docs = flags(rayjob_entrypoint(manifest, shared)), flags(adapt(documented(pattern), shared))
    assert ours.pop("--config") == str(REPO / docs.pop("--config"))
    assert ours.pop("--out") != docs.pop("--out")  # its own run directory
    for size in ("--samples", "--max-concurrent", "--epochs"):  # a laptop's run beside a cluster's
        for flags_of in (ours, docs):
            flags_of.pop(size, None)
    for flags_of, extra in ((ours, MANIFEST_ONLY[manifest]), (docs, DOCS_ONLY[manifest])):
        assert {flag: flags_of.pop(flag, None) for flag in extra} == extra
    assert ours == docs


def _http(url: str, body: dict[str, Any] | None = None, timeout: float = 30) -> tuple[int, dict[str, Any]]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def _wait_for(url: str, check: Any, timeout: float = 180) -> dict[str, Any]:
    deadline, last = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        try:
            status, body = _http(url, timeout=10)
            last = (status, body)
            if status == 200 and check(body):
                return body
        except (urllib.error.URLError, OSError, ValueError) as exc:
            last = repr(exc)
        time.sleep(1)
    raise AssertionError(f"{url}: not as expected after {timeout:.0f}s; last answer {last}")


def test_serve_deploy_serves_the_registry_and_reloads_on_user_config(
        cluster: RealCluster, tuned: Path, market: Path) -> None:
    command = documented(r"^serve deploy serve/config\.yaml")
    config = yaml.safe_load((REPO / "serve" / "config.yaml").read_text())
    port = free_port()
    config["http_options"]["port"] = port  # the one change: 8000 may be taken on this machine
    deployed = cluster.workdir / "config.yaml"
    words = adapt(command, cluster.shared)
    words[words.index("serve/config.yaml")] = str(deployed)

    deployed.write_text(yaml.safe_dump(config))
    cluster.run(words, timeout=120)
    url = f"http://127.0.0.1:{port}"
    _wait_for(f"{url}/healthz", lambda body: True)  # 200 once the model is loaded
    assert _wait_for(f"{url}/model", lambda body: True)["version"] == "v0002"  # null = latest at start-up
    user = next(csv.DictReader(open(market / "users.csv")))["user_id"]
    status, body = _http(f"{url}/recommend", {"user_id": user, "k": 5})
    assert status == 200 and len(body["items"]) == 5 and body["model_version"] == "v0002", body

    config["applications"][0]["deployments"][0]["user_config"]["model_version"] = "v0001"
    deployed.write_text(yaml.safe_dump(config))
    cluster.run(words, timeout=120)
    _wait_for(f"{url}/model", lambda body: body.get("version") == "v0001", timeout=120)
    status, body = _http(f"{url}/recommend", {"user_id": user, "k": 5})
    assert status == 200 and body["model_version"] == "v0001", body
    cluster.run(["serve", "shutdown", "-y"], timeout=120)
