"""A worker killed mid-epoch is replaced and the run resumes from its last checkpoint; ``convfm evaluate`` reads
the best model back; ``--resume`` continues the stopped run. Both continuations keep the epoch count: each epoch
exactly once in metrics.csv.

The run is the session's ``run_two_workers`` (tests/train/conftest.py), whose run directory is an ``s3://`` URI
(moto's S3 server): outputs and Ray's checkpoints live in the bucket, the replacement workers restore from it,
and so does ``--resume``. One Ray Train run answers these questions and tests/train/test_distributed.py's (a fit
costs ~12 s of worker start-up on a 2-core box); its files were read before the resume adds an epoch."""
from __future__ import annotations

import json
import math

import pytest

from convfm.cli.main import main
from convfm.store import storage

pytestmark = pytest.mark.slow


@pytest.fixture
def crashed_run(run_two_workers, monkeypatch):
    """run_two_workers, with models read from its bucket cached where its run cached them."""
    monkeypatch.setenv(storage.CACHE_ENV, str(run_two_workers.cache))
    return run_two_workers


@pytest.mark.timeout(240)
def test_killed_worker_is_replaced_and_training_resumes_from_checkpoint(crashed_run):
    result = crashed_run.result
    assert crashed_run.marker.startswith("rank 1 ")  # rank 1 really died (os._exit) in epoch 1
    history = result.history
    assert [r["epoch"] for r in history] == [0, 1, 2]
    assert crashed_run.metrics["epoch"].tolist() == [0, 1, 2]
    # epoch 0 ran in the first worker group; the replacement group started at epoch 1 from its checkpoint
    assert [r["run_start_epoch"] for r in history] == [0, 1, 1] and result.restarts == [1]
    first, second = set(history[0]["worker_pids"].split(",")), set(history[1]["worker_pids"].split(","))
    assert first.isdisjoint(second) and history[1]["worker_pids"] == history[2]["worker_pids"]
    # optimizer step count and LR schedule continued instead of restarting
    assert [r["learning_rate"] for r in history] == pytest.approx(
        [0.01 * (1 + math.cos(math.pi * e / 3)) / 2 for e in range(3)], rel=1e-6)
    assert result.best_metrics["val_roc_auc"] > result.best_metrics["popularity_roc_auc"] + 0.1
    assert crashed_run.record["restarts"] == [1]


@pytest.mark.timeout(240)
def test_outputs_and_checkpoints_are_in_the_bucket_and_evaluate_reads_the_best_model(crashed_run):
    uri, result = crashed_run.uri, crashed_run.result
    assert result.out_dir == uri and result.best_dir == storage.join(uri, "best")
    record = crashed_run.record
    assert record["status"] == "finished" and record["name"] == "crashed" and record["epochs_trained"] == 3
    assert record["storage_path"] == storage.join(uri, "ray") and record["best_dir"] == result.best_dir
    assert storage.is_file(storage.join(uri, "curves.png"))
    assert [d for d in storage.list_dirs(storage.join(uri, "ray", "crashed")) if d.startswith("checkpoint_")]
    assert not list(crashed_run.tmp_path.glob("**/run.json")), "a URI run writes nothing under the working tree"

    report_path = crashed_run.tmp_path / "valid.json"
    assert main(["evaluate", "--model", result.best_dir, "--split", "valid", "--out", str(report_path)]) == 0
    report = json.loads(report_path.read_text())
    assert report["model"]["roc_auc"] == pytest.approx(result.best_metrics["val_roc_auc"], abs=1e-9)


@pytest.mark.timeout(240)
def test_resume_continues_a_stopped_run(crashed_run, run_metrics, capsys):
    from train.outputs import read_run

    uri = crashed_run.uri
    capsys.readouterr()
    assert main(["train", "--resume", uri, "--epochs", "4"]) == 0
    out = capsys.readouterr().out
    assert "epoch   4 " in out and "epoch   3 " not in out and "best epoch" in out  # only the new epoch ran
    assert f"convfm evaluate --model {storage.join(uri, 'best')}" in out
    metrics = run_metrics(uri)
    assert metrics["epoch"].tolist() == [0, 1, 2, 3] and metrics["run_start_epoch"].tolist() == [0, 1, 1, 3]
    saved = read_run(uri)
    assert saved["attempts"] == 2 and saved["train"]["num_epochs"] == 4 and saved["restarts"] == [1, 3]

    # nothing left to do: refused before Ray does any work, naming the field to change
    assert main(["train", "--resume", uri, "--epochs", "4"]) == 2
    assert "num_epochs: the run already trained 4 epoch(s)" in capsys.readouterr().err

    # stopped after its last epoch, before the export (a SIGTERM): the resume exports it, training nothing. It was
    # refused ("already trained"), and only more epochs gave the run a model.
    fs, root = storage._fs(storage.join(uri, "best"))  # the bucket's filesystem (moto's endpoint)
    fs.delete_dir(root)
    storage.write_text(storage.join(uri, "run.json"), json.dumps({**saved, "status": "running"}))
    assert main(["train", "--resume", uri, "--epochs", "4"]) == 0
    out = capsys.readouterr().out
    assert "epoch   " not in out and "best epoch" in out and storage.is_file(storage.join(uri, "best", "manifest.json"))
    assert read_run(uri)["status"] == "finished" and run_metrics(uri)["epoch"].tolist() == [0, 1, 2, 3]


@pytest.mark.timeout(240)
def test_without_restarts_a_crash_fails_the_run_with_a_clear_error(ray_local, make_configs, tmp_path):
    from train.driver import TrainingError, run_training

    with pytest.raises(TrainingError, match=r"training failed after 0 restart\(s\)"):
        run_training(*make_configs(num_workers=1, num_epochs=2, max_failures=0), tmp_path / "run",
                     loop_options={"crash_at_epoch": 0, "crash_marker": str(tmp_path / "crashed.txt")})
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["status"] == "failed" and run["error"]
    assert (tmp_path / "crashed.txt").read_text().startswith("rank 0 ")  # a lone worker is rank 0
