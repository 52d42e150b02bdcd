"""benchmarks/app_usage.py: a Frappe-shaped log, two negatives per distinct use, a truth that ranks it."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from convfm.cli.common import load_table_spec
from convfm.data.prepare import prepare_data

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "app_usage.py"


@pytest.fixture(scope="module")
def app_usage():
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import app_usage
    finally:
        sys.path.remove(str(SCRIPT.parent))
    return app_usage


def test_each_distinct_use_gets_two_random_apps_in_its_own_context(app_usage):
    frame = app_usage.generate(users=60, apps=300, uses=3000, seed=3)
    assert list(frame.columns) == [*app_usage.FIELDS, "label", "truth"]
    positives, negatives = frame[frame["label"] == 1], frame[frame["label"] == 0]
    assert len(negatives) == 2 * len(positives) and 2500 < len(positives) <= 3000
    context = ["user", "daytime", "weekday", "homework", "weather", "city"]
    assert not positives.duplicated([*context, "item"]).any()
    assert negatives[context].apply(tuple, axis=1).isin(set(positives[context].apply(tuple, axis=1))).all()
    assert ((frame["weekday"].isin(["saturday", "sunday"])) == (frame["isweekend"] == "weekend")).all()
    assert frame.groupby("city")["country"].nunique().max() == 1 and frame.groupby("item")["cost"].nunique().max() == 1
    assert frame["truth"].between(0, 1, inclusive="neither").all()
    auc, loss = app_usage.truth_scores(frame)
    assert auc > 0.9 and 0 < loss < 0.4
    pd.testing.assert_frame_equal(frame, app_usage.generate(users=60, apps=300, uses=3000, seed=3))
    assert not frame.equals(app_usage.generate(users=60, apps=300, uses=3000, seed=4))


def test_the_written_spec_loads_as_a_table_split_seven_two_one(app_usage, tmp_path):
    frame = app_usage.generate(users=40, apps=200, uses=1500, seed=0)
    data = prepare_data(load_table_spec(app_usage.write(tmp_path, frame)))
    sizes = data.summary()
    assert sum(sizes.values()) == len(frame)
    assert abs(sizes["valid"] / len(frame) - 0.2) < 0.01 and abs(sizes["test"] / len(frame) - 0.1) < 0.01
    assert {f.name for f in data.extractor.feature_map.of_kind("categorical")} == set(app_usage.FIELDS)
    assert len(pd.read_csv(tmp_path / "truth.csv")) == len(frame)


def test_cli_prints_the_truths_scores(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path), "--users", "30", "--apps", "100",
                           "--uses", "800"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "30 users, " in done.stdout and "the truth's ROC-AUC 0." in done.stdout
    assert (tmp_path / "app_usage.yaml").is_file() and (tmp_path / "app_usage.csv").is_file()
