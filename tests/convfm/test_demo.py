"""`convfm demo` (what `make demo` runs) end to end on a tiny market, in its own process and its own local Ray:
six stages in order, real HTTP answers, the closing how-to, and none of Ray's console noise it suppresses."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from convfm.cli.demo import MARKER, claim_workdir
from convfm.errors import ConfigError


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_tiny_demo_runs_every_stage_and_answers_http(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # its own Ray, not the test session's
    done = subprocess.run(
        [sys.executable, "-m", "convfm.cli.main", "demo", "--workdir", str(tmp_path / "demo"), "--users", "300",
         "--jobs", "200", "--interactions", "6000", "--epochs", "1", "--trials", "1"],
        capture_output=True, text=True, timeout=400, env=env)
    out = done.stdout
    assert done.returncode == 0, (out[-3000:], done.stderr[-3000:])
    positions = [out.index(f"== [{n}/6]") for n in range(1, 7)]
    assert positions == sorted(positions)
    assert "roc_auc" in out and "popularity" in out and "oracle" in out  # the evaluation table
    assert out.count("POST /recommend") == 3 and "fallback: popular" in out and "model v0001" in out
    assert (tmp_path / "demo" / "models" / "convfm" / "v0001" / "manifest.json").is_file()
    assert f"convfm serve --model {tmp_path / 'demo' / 'models' / 'convfm'}" in out
    combined = out + done.stderr
    assert "Traceback" not in combined
    assert "Configuration for experiment" not in combined  # Tune's banner: the demo prints its own trial table
    assert "Started Serve in namespace" not in combined  # Serve's INFO lines: the stage prints its own ready line


@pytest.mark.timeout(60)
def test_demo_refuses_a_foreign_non_empty_workdir_and_leaves_it_intact(tmp_path, capsys):
    from convfm.cli.main import main

    home = tmp_path / "home"
    (home / "notes").mkdir(parents=True)
    (home / "notes" / "thesis.txt").write_text("years of work")
    (home / ".bashrc").write_text("export X=1")

    assert main(["demo", "--workdir", str(home)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "convfm demo: error: --workdir" in err and "not a previous demo's" in err
    assert (home / "notes" / "thesis.txt").read_text() == "years of work"
    assert sorted(p.name for p in home.iterdir()) == [".bashrc", "notes"]

    a_file = tmp_path / "file.txt"
    a_file.write_text("keep")
    with pytest.raises(ConfigError, match="not a directory"):
        claim_workdir(a_file)
    assert a_file.read_text() == "keep"


def test_demo_reuses_a_previous_demo_workdir_and_an_empty_one(tmp_path):
    fresh = tmp_path / "new" / "demo"
    claim_workdir(fresh)
    assert [p.name for p in fresh.iterdir()] == [MARKER]

    (fresh / "data").mkdir()
    (fresh / "data" / "jobs.csv").write_text("old run")
    claim_workdir(fresh)  # a previous demo's directory: replaced
    assert [p.name for p in fresh.iterdir()] == [MARKER]

    empty = tmp_path / "empty"
    empty.mkdir()
    claim_workdir(empty)
    assert (empty / MARKER).is_file()

    link = tmp_path / "link"
    link.symlink_to(fresh)
    (fresh / "stale").write_text("x")
    claim_workdir(link)  # judged and replaced through the link; the link itself stays
    assert link.is_symlink() and [p.name for p in fresh.iterdir()] == [MARKER]
