"""`convfm demo` (what `make demo` runs) end to end on a tiny market, in its own process and its own local Ray:
eight stages in order, real HTTP answers, a posted job recommended, an event changing the next answer, the
closing how-to, and none of Ray's console noise it avoids."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from convfm.cli.demo import MARKER, claim_workdir
from convfm.errors import ConfigError


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_tiny_demo_runs_every_stage_and_answers_http(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # its own Ray, not the test session's
    done = subprocess.run(
        [sys.executable, "-m", "convfm.cli.main", "demo", "--workdir", str(tmp_path / "demo"), "--users", "300",
         "--jobs", "200", "--interactions", "6000", "--epochs", "1", "--workers", "1", "--trials", "1",
         "--trial-epochs", "1"],
        capture_output=True, text=True, timeout=400, env=env)
    out = done.stdout
    assert done.returncode == 0, (out[-3000:], done.stderr[-3000:])
    check_tour(out)
    assert (tmp_path / "demo" / "models" / "convfm" / "v0001" / "manifest.json").is_file()
    assert f"convfm serve --model {tmp_path / 'demo' / 'models' / 'convfm'}" in out
    combined = out + done.stderr
    assert "Traceback" not in combined
    assert "Configuration for experiment" not in combined  # Tune's banner: the demo prints its own trial table
    assert "Started Serve in namespace" not in combined  # Serve's INFO lines: the stage prints its own ready line
    assert "worker processes have been started" not in combined  # raylet's warning (train/cluster.py)
    assert "graceful_shutdown" not in combined  # Serve's shutdown retry notice (convfm/cli/serve.py)


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


def test_the_demo_posting_is_a_valid_post_jobs_body_that_its_filter_matches():
    """No Ray: the job the demo posts passes the API's own schema and suits the user it is written for."""
    import datetime as dt

    import pandas as pd

    from convfm.cli.demo_service import NEW_JOB_ID, suited_job
    from serve.schemas import JobsRequest

    user = pd.Series({"user_id": "u1", "skills": "react;typescript;excel", "location": "Austin",
                      "experience_level": "entry"})
    job = suited_job(user, dt.datetime(2026, 12, 2, 9, tzinfo=dt.timezone.utc))
    posted = JobsRequest.model_validate({"upsert": [job]}).upsert[0]
    assert posted.job_id == NEW_JOB_ID and posted.location == "Austin" and posted.experience_level == "entry"
    assert posted.title == "Junior Frontend Engineer" and posted.skills[:2] == ["react", "typescript"]
    assert "excel" not in posted.skills  # only the skills of the cluster the user's skills point to
    assert posted.expires_at - posted.posted_at == dt.timedelta(days=30)


def test_stage_clock_times_each_stage_and_sums_them_up(capsys):
    from convfm.cli.demo import STAGES, StageClock

    stage = StageClock()
    stage("first")
    stage("second")
    summary = stage.summary()
    out = capsys.readouterr().out
    assert f"== [1/{STAGES}] first" in out and f"== [2/{STAGES}] second" in out and out.count("s)\n") == 2
    assert len(stage.seconds) == 2 and summary.startswith("demo finished in ") and "[1] 0s  [2] 0s" in summary


def check_tour(out: str) -> None:
    """The demo's stdout shows every stage in order, the posted job in the second answer, the event's effect."""
    positions = [out.index(f"== [{n}/8]") for n in range(1, 9)]
    assert positions == sorted(positions)
    assert re.search(r"demo finished in \d+s: \[1\] \d+s .* \[8\] \d+s", out)  # the per-stage split
    assert "roc_auc" in out and "popularity" in out and "oracle" in out  # the evaluation table
    queries, live, feedback = out[positions[4]:positions[5]], out[positions[5]:positions[6]], out[positions[6]:]
    assert queries.count("POST /recommend") == 3 and "fallback: popular" in queries
    assert re.search(r"model v000[12]", queries)  # v0002: stage 2's, when it validated better than the tuned

    # the posted job: stored as catalog version 1, listed by GET /jobs/{id}, then in the next answer
    assert "-> catalog version 1: 1 job added" in live and "GET /jobs/j-new-0001 -> " in live
    before, after = live.split("POST /jobs (X-API-Key)")
    assert "j-new-0001" not in before and re.search(r"j-new-0001 .*<- new", after)
    assert re.search(r"the posted job is #\d for", live)

    # the event: stored, and the next answer differs (the applied job is gone)
    applied = re.search(r"apply: \S+ -> (\S+),", feedback).group(1)
    assert "-> 1 event stored" in feedback
    event_before, event_after = feedback.split("after the event")
    assert applied in event_before and applied not in event_after.split(f"{applied} is gone")[0]
    assert f"{applied} is gone; scores moved with the history" in feedback



def test_the_demo_serves_stage_twos_model_when_it_validates_better_than_the_tuned_one(tiny, tmp_path, capsys):
    from convfm.cli.demo import better_model
    from convfm.store.artifacts import save_model_dir
    from convfm.store.registry import publish

    def model(name: str, auc: float) -> Path:
        return save_model_dir(tmp_path / name, tiny.model, tiny.data.extractor, metrics={"val_roc_auc": auc})

    tuned = Path(publish(model("tuned", 0.70), tmp_path / "models", "convfm"))
    served = better_model(model("trained", 0.80), tuned)
    assert served == tmp_path / "models" / "convfm" / "v0002"
    assert (tmp_path / "models" / "convfm" / "latest").read_text().strip() == "v0002"
    assert "stage 2's model validates better (ROC-AUC 0.8000 against the tuned 0.7000)" in capsys.readouterr().out
    assert better_model(model("worse", 0.60), served) == served  # the tuned one stays when it is as good or better
    assert "serving the tuned model" in capsys.readouterr().out
