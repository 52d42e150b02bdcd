"""`convfm tune` stopped with SIGTERM (`kill`, a scheduler's stop) as users run it, in a process with its own
local Ray: it stops as Ctrl-C does (Tune saves the search's state), says how to resume, and exits 130."""
from __future__ import annotations

import json
import re
import subprocess
import sys

import pandas as pd
import pytest

from tests.train.test_sigterm import USER_ENV, sigterm_once

pytestmark = pytest.mark.slow


@pytest.mark.timeout(240)
def test_sigterm_stops_the_search_as_ctrl_c_does_and_leaves_it_resumable(market_dir, tmp_path, tune_yaml):
    """Ray's own SIGTERM handler, set as the driver connects, aborted the process (exit 134 and a C++ stack
    dump), leaving experiment.json "running" and Tune's state as last saved in passing."""
    config = tune_yaml(tmp_path / "tune.yaml", tmp_path / "models", num_samples=4, max_t=2, grace_period=2)
    out = tmp_path / "search"
    stopped = sigterm_once(["tune", "--config", str(config), "--data", str(market_dir), "--out", str(out)],
                           r"trial \S+  epoch   1 ")  # a trial's first epoch reported
    err = stopped.stderr
    assert stopped.returncode == 130, err
    last = err.strip().splitlines()[-1]
    assert re.fullmatch(rf"convfm tune: search interrupted with [0-3] of 4 trial\(s\) finished; continue it with: "
                        rf"convfm tune --resume {re.escape(str(out))}", last), err
    assert "Aborted" not in err, err
    assert json.loads((out / "experiment.json").read_text())["status"] == "interrupted"
    resumed = subprocess.run([sys.executable, "-m", "convfm.cli.main", "tune", "--resume", str(out)],
                             capture_output=True, text=True, env=USER_ENV, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert pd.read_csv(out / "trials.csv")["epochs"].tolist() == [2] * 4  # the stopped trials trained on
    # N counts what the resume skips, the trials done before the signal; it trains the others, stopped ones too
    finished = int(re.search(r"interrupted with (\d) of 4", last).group(1))
    trained = set(re.findall(r"^trial (\S+)  (?:epoch|done)", resumed.stdout, flags=re.MULTILINE))
    done_before = set(re.findall(r"^trial (\S+)  done$", stopped.stdout, flags=re.MULTILINE))
    assert (finished, len(trained)) == (len(done_before), 4 - len(done_before)), (last, resumed.stdout)
    assert not trained & done_before, resumed.stdout
