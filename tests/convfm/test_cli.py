"""The `convfm` command: help, data synth, and one-line errors (tracebacks only with --debug).

One error runs as users run it, in a fresh `python -m convfm.cli.main` process; the others call ``main`` in
this process (a fresh interpreter costs seconds of torch imports each and tests nothing more)."""
import re
import shutil
import socket
import subprocess
import sys
import threading
import time

import pandas as pd
import psutil
import pytest

from convfm.cli.main import SUBCOMMANDS, build_parser, main, starts_local_ray
from convfm.errors import ConfigError, ConvFMError


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "convfm.cli.main", *args], capture_output=True, text=True, timeout=120)


def test_every_subcommand_has_help(capsys):
    for name in SUBCOMMANDS:
        with pytest.raises(SystemExit) as exit_info:
            build_parser().parse_args([name, "--help"])
        assert exit_info.value.code == 0
        assert "usage: convfm " + name in capsys.readouterr().out


def test_commands_that_start_a_local_ray_are_the_ones_run_in_a_session_of_their_own(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    parse = build_parser().parse_args
    assert starts_local_ray(parse(["serve", "--model", "m"])) and starts_local_ray(parse(["train", "--data", "d"]))
    assert not starts_local_ray(parse(["train", "--data", "d", "--address", "auto"]))  # joins a cluster
    assert starts_local_ray(parse(["train", "--data", "d", "--address", "local"]))  # as init_ray reads it
    assert not starts_local_ray(parse(["data", "synth", "--out", "x"]))
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")  # a `ray job submit` entrypoint joins its cluster
    assert not starts_local_ray(parse(["tune", "--config", "c.yaml"]))
    assert starts_local_ray(parse(["serve", "--model", "m"]))  # its own Ray always


def test_data_synth_writes_a_market(tmp_path, capsys):
    assert main(["data", "synth", "--out", str(tmp_path), "--users", "50", "--jobs", "200",
                 "--interactions", "500", "--seed", "3"]) == 0
    assert {p.name for p in tmp_path.iterdir()} >= {"jobs.csv", "users.csv", "interactions.csv", "truth.csv",
                                                    "oracle.npz", "meta.json"}
    out = capsys.readouterr().out
    assert "wrote 50 users, 200 jobs, 500 interactions" in out
    assert re.search(r"^interactions per user, median +8\.00$", out, re.M)
    assert re.search(r"^last-tenth positives on jobs posted in it +\d+\.\d%$", out, re.M)
    assert main(["data", "stats", "--data", str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip() == out.split("\n\n", 1)[1].strip()  # the same table from the files
    export = tmp_path / "export"  # a real log's names: read through a config's data section, as training does
    export.mkdir()
    pd.read_csv(tmp_path / "jobs.csv").rename(columns={"job_id": "JobID"}).to_csv(export / "jobs.csv", index=False)
    pd.read_csv(tmp_path / "interactions.csv").rename(columns={"job_id": "JobID"}).to_csv(export / "apps.csv",
                                                                                          index=False)
    (tmp_path / "real.yaml").write_text(f"data:\n  path: {export}\n  interactions_file: apps\n  columns: "
                                        "{jobs: {job_id: JobID}, interactions: {job_id: JobID}}\n")
    assert main(["data", "stats", "--config", str(tmp_path / "real.yaml")]) == 0
    assert capsys.readouterr().out.strip() == out.split("\n\n", 1)[1].strip()
    again = ["data", "synth", "--users", "50", "--jobs", "200", "--interactions", "500"]
    assert main([*again, "--out", str(tmp_path), "--format", "parquet"]) == 2  # replaced it, or mixed the two
    assert "already holds a market (interactions.csv, jobs.csv, meta.json, oracle.npz)" in capsys.readouterr().err
    assert main([*again, "--out", str(tmp_path / "parts"), "--parts", "600"]) == 2  # empty parts, refused on read
    assert re.search(r"--parts: 600 parts of 4\d\d interactions would leave some empty", capsys.readouterr().err)


def test_errors_are_one_line_without_traceback(tmp_path):
    result = run_cli("evaluate", "--model", str(tmp_path / "missing"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"convfm evaluate: error: {tmp_path / 'missing'}: model directory not found"]
    with pytest.raises(ConvFMError, match="model directory not found"):  # --debug: the exception, traceback and all
        main(["--debug", "evaluate", "--model", str(tmp_path / "missing")])


def test_library_imports_no_ray():
    code = ("import importlib, pkgutil, sys, convfm\n"
            "for m in pkgutil.walk_packages(convfm.__path__, 'convfm.'):\n"
            "    if not m.name.startswith('convfm.cli'): importlib.import_module(m.name)\n"
            "import convfm.cli.main; convfm.cli.main.build_parser()\n"
            "print(sorted(n for n in sys.modules if n == 'ray' or n.startswith('ray.')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_train_scaling_flags_reach_the_train_config(tmp_path, capsys):
    from convfm.cli.train import resolve_configs

    args = build_parser().parse_args(["train", "--data", str(tmp_path), "--out", str(tmp_path / "run"), "--workers",
                                      "4", "--cpus-per-worker", "2", "--placement", "SPREAD"])
    train = resolve_configs(args)[2]
    assert (train.num_workers, train.cpus_per_worker, train.placement_strategy) == (4, 2.0, "SPREAD")
    with pytest.raises(SystemExit) as exit_info:  # range checks: test_config.py
        main(["train", "--data", str(tmp_path), "--placement", "spread"])
    assert exit_info.value.code == 2 and "--placement: invalid choice: 'spread'" in capsys.readouterr().err


def test_tune_and_serve_config_errors_name_the_line_and_misspelt_sections(tmp_path, capsys):
    tune_yaml = tmp_path / "tune.yaml"
    tune_yaml.write_text("tune:\n  search_alg: random\n  num_samples: 0\n")
    assert main(["tune", "--config", str(tune_yaml), "--data", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"{tune_yaml} [tune] line 3: num_samples:" in err, err
    serve_yaml = tmp_path / "serve.yaml"
    serve_yaml.write_text("serv:\n  port: 9000\n")
    assert main(["serve", "--model", str(tmp_path), "--config", str(serve_yaml)]) == 2
    err = capsys.readouterr().err
    assert "unknown section(s) ['serv']" in err, err


def test_serve_names_a_port_another_process_listens_on_before_starting_ray(tiny, capsys):
    """Serve's proxy failed to bind inside an actor: a traceback and exit 1."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        assert main(["serve", "--model", str(tiny.entry), "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert f"convfm serve: error: port: cannot listen on 127.0.0.1:{port}: Address already in use" in err, err
    assert "choose another --port" in err, err


class FakeDaemon:
    """A psutil process stand-in: Ray's raylet, running until ``end`` is set."""

    def __init__(self) -> None:
        self.end = threading.Event()

    def name(self) -> str:
        return "raylet"

    def cmdline(self) -> list[str]:
        return ["raylet"]

    def status(self) -> str:
        return psutil.STATUS_ZOMBIE if self.end.is_set() else psutil.STATUS_SLEEPING


@pytest.mark.timeout(60)
def test_the_stop_gives_up_deleting_the_app_once_rays_raylet_has_ended(monkeypatch, capsys):
    """A SIGTERM to every process of a cgroup (systemd's default) reached Ray's daemons too: ``serve.delete`` then
    waited 60 s until Ray aborted the process."""
    from ray import serve

    from convfm.cli.serve import delete_app_while_ray_lives

    daemon, never = FakeDaemon(), threading.Event()
    monkeypatch.setattr(psutil.Process, "children", lambda self, recursive=False: [daemon])
    monkeypatch.setattr(serve, "delete", lambda name: never.wait(30))
    threading.Timer(0.3, daemon.end.set).start()
    started = time.monotonic()
    delete_app_while_ray_lives("convfm")
    assert time.monotonic() - started < 5
    assert "convfm's replicas could not be drained" in capsys.readouterr().err
    never.set()

    def refused(name: str) -> None:
        raise RuntimeError("no such app")

    monkeypatch.setattr(serve, "delete", refused)  # a delete that fails, Ray alive: its error, as before
    with pytest.raises(RuntimeError, match="no such app"):
        delete_app_while_ray_lives("convfm")


def test_serve_names_a_live_catalog_delta_it_cannot_apply_before_starting_ray(tiny, tmp_path, capsys):
    """A delta holding a lone surrogate (written before the service refused one) failed every replica's load; the
    command said only "the model failed to load"."""
    from convfm.store.live_catalog import CatalogStore

    entry = tmp_path / "entry"
    shutil.copytree(tiny.entry, entry)
    store = CatalogStore(entry / "live")
    store.append(upsert=[{"job_id": "ok-1", "posted_at": None}])
    (store.root / "000002.json").write_text(  # as the service wrote it: the surrogate escaped, valid JSON
        (store.root / "000001.json").read_text().replace('"ok-1"', '"bad-\\udc00"').replace('"version": 1',
                                                                                            '"version": 2'))
    assert main(["serve", "--model", str(entry)]) != 0
    err = capsys.readouterr().err
    assert f"{store.root / '000002.json'}: live catalog v2 cannot be applied: UnicodeEncodeError" in err, err


def test_evaluate_writes_its_report_beside_the_published_version_not_into_it(tiny, tmp_path, capsys):
    """A published version is exactly its manifest's files: a report written into it would be an unlisted file
    (refused by the next load), and a shared registry's versions are not the evaluator's to change."""
    from convfm.store.artifacts import load_model_dir
    from convfm.store.registry import publish

    version = publish(tiny.model_dir, tmp_path / "models", "jobs")
    before = sorted(p.name for p in version.iterdir())
    assert main(["evaluate", "--model", str(tmp_path / "models" / "jobs"), "--max-events", "50"]) == 0
    assert sorted(p.name for p in version.iterdir()) == before
    load_model_dir(version)  # still exactly what was published
    report = tmp_path / "models" / "jobs" / "v0001.eval_test.json"
    assert report.is_file() and f"report written to {report}" in capsys.readouterr().out
    for argv, message in [  # refused before the evaluation runs: a report in the model, a directory, no negatives
        (["--out", str(version / "x.json")], f"--out {version / 'x.json'}: inside the model directory {version}"),
        (["--out", str(tmp_path)], f"--out {tmp_path}: a directory; give the report's file path"),  # was a traceback
        (["--protocol", "sampled", "--negatives", "0"], "--negatives: must be at least 1, got 0"),  # read as 99
    ]:
        assert main(["evaluate", "--model", str(version), *argv]) == 2
        assert message in capsys.readouterr().err
    assert sorted(p.name for p in version.iterdir()) == before


def test_evaluate_names_a_saved_data_path_that_is_not_there_and_recommend_checks_k(tiny, tmp_path, monkeypatch,
                                                                                   capsys):
    """The saved data path is relative to where training ran: from elsewhere it read "data directory not found"
    without saying where the path came from. ``recommend -k 0`` read "cannot reach" without a service."""
    import argparse
    import json

    from convfm.cli.evaluate import saved_data_config

    model = tmp_path / "model"
    model.mkdir()
    saved = json.loads((tiny.model_dir / "data_config.json").read_text())
    (model / "data_config.json").write_text(json.dumps({**saved, "path": "data/market"}))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"^data/market: data directory not found \(the path .*data_config\.json "
                                          r"saved at training, relative to where it ran\); give --data DIR$"):
        saved_data_config(model, argparse.Namespace(table=None, data=None))
    given = saved_data_config(model, argparse.Namespace(table=None, data=str(tiny.market)))
    assert given.path == str(tiny.market)
    with pytest.raises(SystemExit):
        main(["recommend", "-k", "0"])
    assert "argument -k: must be an integer in 1..100, got 0" in capsys.readouterr().err


def test_bad_data_found_in_a_ray_task_is_answered_as_in_the_driver():
    """Distributed preparation finds bad cells on workers: Ray wraps the error twice, the CLI still prints its
    one line (and anything else stays a traceback)."""
    from ray.data.exceptions import UserCodeException
    from ray.exceptions import RayTaskError

    from convfm.cli.main import user_error
    from convfm.errors import DataValidationError

    bad = DataValidationError("train.csv: column 'label', row 3: label '2' is not binary")
    try:
        raise UserCodeException("UDF failed to process a data block") from bad
    except UserCodeException as exc:
        wrapped = exc
    task = RayTaskError("MapBatches(_typed)", "Traceback ...", wrapped)
    assert user_error(task) is bad and user_error(task.as_instanceof_cause()) is bad and user_error(bad) is bad
    assert user_error(RayTaskError("f", "Traceback ...", ValueError("a bug"))) is None
    assert user_error(RuntimeError("a bug")) is None
