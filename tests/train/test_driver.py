"""train.driver's printed summary (Ray-free): what ``convfm train`` ends with."""
from __future__ import annotations

import pytest

from train.driver import TrainingResult, format_summary

pytestmark = pytest.mark.timeout(60)


def result(split_periods, columns_read=None, live_catalog=None):
    best = {"epoch": 2, "val_loss": 0.31, "val_roc_auc": 0.8, "popularity_roc_auc": 0.6}
    return TrainingResult("runs/x", "runs/x/best", 2, best, [{}] * 4, False, 12.5, [], split_periods, columns_read,
                          live_catalog)


def test_the_summary_names_the_global_time_periods_when_there_are_some():
    periods = {"valid_from": "2012-05-20T00:00:00", "test_from": "2012-06-01T00:00:00",
               "examples": {"train": 1000, "valid": 2, "test": 3}}
    line = "global_time split: train before 2012-05-20T00:00:00, valid from 2012-05-20T00:00:00, test from " \
           "2012-06-01T00:00:00 (1,000 / 2 / 3 examples)"
    lines = format_summary(result(periods)).splitlines()
    assert lines[0].startswith("best epoch 3 of 4 (2 in run.json and metrics.csv, which count from 0): "
                               "val_loss 0.3100  val_auc 0.8000  popularity 0.6000")
    assert line in lines and lines.index(line) == lines.index("best model: runs/x/best") - 1
    assert not [line for line in format_summary(result(None)).splitlines() if "split" in line]


def test_the_summary_says_what_each_extra_column_held():
    read = {"users.skills": {"kind": "skills, text ['Headline'] included", "without_value": 0.125},
            "jobs.Industry": {"kind": "category", "values": 1200, "without_value": 0.0},
            "users.years": {"kind": "number", "without_value": 1.0}}
    assert format_summary(result(None, read)).splitlines()[2] == (
        "columns read: users.skills (skills, text ['Headline'] included): 12% of rows without a value; "
        "jobs.Industry (category, 1,200 values): 0% of rows without a value; users.years (number): 100% of rows "
        "without a value")
    assert not [line for line in format_summary(result(None)).splitlines() if "columns read" in line]


def test_the_summary_says_what_the_jobs_took_from_the_live_catalog():
    live = {"store": "models/convfm/live", "version": 24, "added": 6, "replaced": 2, "expired": 1}
    assert ("live catalog v24 (models/convfm/live) applied to the jobs: 6 added, 2 replaced, 1 expired"
            in format_summary(result(None, live_catalog=live)).splitlines())
    assert not [line for line in format_summary(result(None)).splitlines() if "live catalog" in line]
