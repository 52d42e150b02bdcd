"""convfm.data.splitting: the global_time split (train < T1 <= valid < T2 <= test) beside the per-user one, and
the extra training negatives (train_negative_ratio) that leave every split but train as it was."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from convfm.config import DataConfig
from convfm.data.liveness import MICROS_PER_DAY, job_windows
from convfm.data.loading import build_examples, load_job_market
from convfm.data.prepare import prepare_data
from convfm.data.splitting import TRAIN_ONLY, split_examples
from convfm.errors import ConfigError

DAY = MICROS_PER_DAY
T0 = pd.Timestamp("2024-01-01").value // 1000  # microseconds


def examples_at(times: list[int] | np.ndarray) -> pd.DataFrame:
    n = len(times)
    return pd.DataFrame({"user_id": [f"u{i % 7}" for i in range(n)], "job_id": [f"j{i}" for i in range(n)],
                         "label": np.ones(n, np.float32), "timestamp": np.asarray(times, np.int64)})


def test_default_starts_leave_the_fractions_after_them() -> None:
    times = np.random.default_rng(0).permutation(100)
    config = DataConfig(split="global_time", valid_fraction=0.1, test_fraction=0.2)
    splits = split_examples(examples_at(times), config, calendar=False)
    assert splits.starts == (70, 80)  # 20 times at or after 80, then 10 of the 80 before it at or after 70
    assert (len(splits.train), len(splits.valid), len(splits.test)) == (70, 10, 20)
    assert splits.train["timestamp"].max() < 70 <= splits.valid["timestamp"].min()
    assert splits.valid["timestamp"].max() < 80 <= splits.test["timestamp"].min()


def test_the_periods_read_as_one_line_for_people(market_dir) -> None:
    from convfm.data.prepare import prepare_data
    from convfm.data.splitting import describe_periods, split_periods

    periods = split_periods((70, 80), (7000, 10, 20), calendar=False)
    assert periods == {"valid_from": "70", "test_from": "80", "examples": {"train": 7000, "valid": 10, "test": 20}}
    assert describe_periods(periods) == (
        "global_time split: train before 70, valid from 70, test from 80 (7,000 / 10 / 20 examples)")
    data = prepare_data(DataConfig(path=str(market_dir), split="global_time"))
    t1, t2 = (pd.Timestamp(t, unit="us").isoformat() for t in data.split_starts)
    assert data.split_periods == {"valid_from": t1, "test_from": t2, "examples": data.summary()}
    assert prepare_data(DataConfig(path=str(market_dir))).split_periods is None  # per-user split: no dates


def test_the_daily_loops_served_version_config_prepares_with_no_test_split(market_dir) -> None:
    """docs/DAILY_LOOP.md: global time, test_fraction 0, a small valid share; history features on (the default)
    made the empty test split fail its encoding (a reshape of no rows)."""
    data = prepare_data(DataConfig(path=str(market_dir), split="global_time", valid_fraction=0.05, test_fraction=0))
    assert data.summary()["test"] == 0 and len(data.sets["test"]) == 0 and data.summary()["valid"] > 0
    assert data.extractor.history_length == 20


def test_ties_at_a_start_all_go_to_the_later_split() -> None:
    splits = split_examples(examples_at([1, 2, 3, 4, 5, 5, 5, 5, 6, 7]),
                            DataConfig(split="global_time", valid_fraction=0.1, test_fraction=0.1), calendar=False)
    assert splits.starts == (6, 7)
    assert splits.test["timestamp"].tolist() == [7] and splits.valid["timestamp"].tolist() == [6]
    splits = split_examples(examples_at([1, 2, 3, 4, 5, 5, 5, 5, 5, 5]),
                            DataConfig(split="global_time", valid_fraction=0.1, test_fraction=0.1), calendar=False)
    assert splits.starts == (4, 5) and len(splits.test) == 6 and splits.valid["timestamp"].tolist() == [4]


def test_explicit_dates_are_honoured_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    times = T0 + np.arange(60) * DAY  # one example a day, 2024-01-01 .. 2024-02-29
    config = DataConfig(split="global_time", valid_start="2024-02-01", test_start="2024-02-15T12:00")
    with caplog.at_level(logging.INFO, logger="convfm.data.splitting"):
        splits = split_examples(examples_at(times), config)
    assert splits.starts == (T0 + 31 * DAY, T0 + 45 * DAY + DAY // 2)
    assert (len(splits.train), len(splits.valid), len(splits.test)) == (31, 15, 14)
    assert ("global_time split: train before 2024-02-01T00:00:00, valid from 2024-02-01T00:00:00, test from "
            "2024-02-15T12:00:00 (31 / 15 / 14 examples)") in caplog.text
    only_valid = split_examples(examples_at(times), DataConfig(split="global_time", valid_start="2024-02-20"))
    assert only_valid.starts == (T0 + 50 * DAY, T0 + 54 * DAY)  # test keeps the default 10%: 6 of 60 days


def test_empty_splits_and_dates_without_a_calendar_are_errors() -> None:
    times = T0 + np.arange(60) * DAY
    with pytest.raises(ConfigError, match=r"split: global_time: the test split is empty \(no examples at or after "
                                          r"2024-06-01T00:00:00\); the examples run from 2024-01-01T00:00:00 to "
                                          r"2024-02-29T00:00:00"):
        split_examples(examples_at(times), DataConfig(split="global_time", test_start="2024-06-01"))
    with pytest.raises(ConfigError, match=r"the train split is empty \(no examples before 2023-12-01T00:00:00\)"):
        split_examples(examples_at(times), DataConfig(split="global_time", valid_start="2023-12-01",
                                                       test_start="2024-01-15"))
    with pytest.raises(ConfigError, match=r"the valid split is empty \(no examples in \[2024-01-10T06:00:00, "):
        split_examples(examples_at(times), DataConfig(split="global_time", valid_start="2024-01-10T06:00",
                                                       test_start="2024-01-10T12:00"))
    with pytest.raises(ConfigError, match=r"test_start: the test period would start at 2024-02-24T00:00:00, not "
                                          r"after valid_start 2024-02-26T00:00:00; set test_start"):
        split_examples(examples_at(times), DataConfig(split="global_time", valid_start="2024-02-26"))
    with pytest.raises(ConfigError, match=r"valid_start: needs date/time interaction timestamps"):
        split_examples(examples_at(np.arange(60)), DataConfig(split="global_time", valid_start="2024-02-01"),
                       calendar=False)
    with pytest.raises(ConfigError, match=r"the train split is empty"):
        split_examples(examples_at([5] * 10), DataConfig(split="global_time"), calendar=False)


def test_global_time_through_loading_keeps_pairs_apart(tmp_path: Path) -> None:
    """Negatives carry their positive's timestamp, so each (user, job) pair lands in exactly one period."""
    rng = np.random.default_rng(1)
    n_jobs, n_rows = 60, 600
    posted = pd.to_datetime(T0 + np.arange(n_jobs) * DAY, unit="us")
    pd.DataFrame({"job_id": [f"j{i}" for i in range(n_jobs)], "posted_at": posted}).to_csv(tmp_path / "jobs.csv",
                                                                                        index=False)
    job = rng.integers(0, n_jobs, n_rows)
    stamps = pd.to_datetime(T0 + job * DAY + rng.integers(0, 5 * DAY, n_rows), unit="us")
    pd.DataFrame({"user_id": np.char.add("u", rng.integers(0, 40, n_rows).astype(str)),
                  "job_id": [f"j{i}" for i in job], "event": rng.choice(["apply", "view"], n_rows),
                  "timestamp": stamps.strftime("%Y-%m-%dT%H:%M:%S")}).to_csv(tmp_path / "interactions.csv",
                                                                             index=False)
    config = DataConfig(path=str(tmp_path), split="global_time", negative_ratio=2, valid_fraction=0.15,
                        test_fraction=0.15)
    market = load_job_market(config)
    examples = build_examples(market, config)
    splits = split_examples(examples, config, calendar=market.calendar)
    t1, t2 = splits.starts
    assert splits.train["timestamp"].max() < t1 <= splits.valid["timestamp"].min()
    assert splits.valid["timestamp"].max() < t2 <= splits.test["timestamp"].min()
    keys = [set(zip(s["user_id"], s["job_id"])) for s in (splits.train, splits.valid, splits.test)]
    assert sum(map(len, keys)) == len(set().union(*keys)) == len(examples)
    assert abs(len(splits.test) / len(examples) - 0.15) < 0.02


def test_prepared_data_keeps_starts_and_drops_windows_without_a_calendar(tmp_path: Path) -> None:
    jobs = "job_id,title,posted_at\n" + "".join(f"j{i},Job {i},2024-01-{i + 1:02d}\n" for i in range(9))
    rows = "".join(f"u{u},j{(u + k) % 9},apply,{10 * k + u}\n" for u in range(6) for k in range(5))
    (tmp_path / "jobs.csv").write_text(jobs)
    (tmp_path / "interactions.csv").write_text("user_id,job_id,event,timestamp\n" + rows)
    data = prepare_data(DataConfig(path=str(tmp_path), split="global_time", negative_ratio=1))
    assert data.windows is None and data.for_split("test").split_starts == data.split_starts
    t1, t2 = data.split_starts
    assert data.frames["valid"]["timestamp"].between(t1, t2 - 1).all()
    assert (data.frames["test"]["timestamp"] >= t2).all() and (data.frames["train"]["timestamp"] < t1).all()


@pytest.mark.parametrize("split", ["time", "global_time", "random"])
def test_train_negative_ratio_adds_unseen_live_negatives_to_training_alone(split: str) -> None:
    """The extra draw leaves the split, validation and test as negative_ratio's; each extra negative is a live
    pair no user touched, beside a training example of its user at its time, about 3 per training positive."""
    from tests.convfm.test_negatives import dated_market

    market = dated_market()
    plain, more = DataConfig(split=split), DataConfig(split=split, train_negative_ratio=5)
    examples = build_examples(market, more)
    base = examples[~examples[TRAIN_ONLY]].drop(columns=TRAIN_ONLY).reset_index(drop=True)
    pd.testing.assert_frame_equal(base, build_examples(market, plain))
    want, got = split_examples(base, plain), split_examples(examples, more)
    pd.testing.assert_frame_equal(got.valid, want.valid)
    pd.testing.assert_frame_equal(got.test, want.test)
    assert got.starts == want.starts and TRAIN_ONLY not in got.train
    pd.testing.assert_frame_equal(got.train[~got.train_only].reset_index(drop=True), want.train)

    extra = got.train[got.train_only]
    touched = set(zip(market.interactions["user_id"], market.interactions["job_id"]))
    pairs = list(zip(examples["user_id"], examples["job_id"]))
    assert len(set(pairs)) == len(pairs) and not touched & set(zip(extra["user_id"], extra["job_id"]))
    assert (extra["label"] == 0).all()
    trained = set(zip(want.train["user_id"], want.train["timestamp"]))
    assert set(zip(extra["user_id"], extra["timestamp"])) <= trained
    dropped = examples[TRAIN_ONLY].sum() - len(extra)
    assert dropped > 0 and 2.5 * (want.train["label"] > 0).sum() < len(extra) <= 3 * (examples["label"] > 0).sum()
    windows = job_windows(market.jobs, more.job_lifetime_days)
    codes = pd.Index(windows.job_ids).get_indexer(extra["job_id"])
    assert windows.live(extra["timestamp"].to_numpy(), codes[:, None]).all()


def test_seen_pairs_are_the_interacted_ones_never_sampled_negatives(market_dir: Path) -> None:
    """Evaluation and serving never offer a user their seen jobs: the jobs they interacted with, not the jobs
    drawn as their negatives (never shown), with or without train_negative_ratio, whose baseline is unchanged."""
    from convfm.store.serving_data import serving_payload

    plain = prepare_data(DataConfig(path=str(market_dir)))
    more = prepare_data(DataConfig(path=str(market_dir), train_negative_ratio=4))
    log = pd.read_csv(market_dir / "interactions.csv", dtype=str)
    kept = log[log["event"].isin(DataConfig.positive_events + DataConfig.negative_events)]
    want = kept[["user_id", "job_id"]].drop_duplicates().sort_values(["user_id", "job_id"], ignore_index=True)
    examples = pd.concat([f[["user_id", "job_id"]] for f in plain.frames.values()]).drop_duplicates()
    assert len(examples) > len(want)  # the sampled negatives
    for data in (plain, more):
        pd.testing.assert_frame_equal(data.seen.sort_values(["user_id", "job_id"], ignore_index=True), want)
        users = data.frames["test"]["user_id"].unique()
        pd.testing.assert_frame_equal(data.for_split("test").seen.sort_values(["user_id", "job_id"], ignore_index=True),
                                      want[want["user_id"].isin(users)].reset_index(drop=True))
    assert len(more.frames["train"]) > len(plain.frames["train"])
    pd.testing.assert_frame_equal(more.frames["test"], plain.frames["test"])
    served = serving_payload(plain)
    assert served["seen"] == serving_payload(more)["seen"]
    assert served["seen"] == {"user_id": want["user_id"].tolist(), "job_id": want["job_id"].tolist()}
    assert serving_payload(more)["popularity"] == served["popularity"]  # of shown examples


@pytest.mark.parametrize("options, message", [
    ({"negative_ratio": 3, "train_negative_ratio": 2},
     r"train_negative_ratio: must be an integer in \[negative_ratio=3, 100\], got 2"),
    ({"train_negative_ratio": 4.5}, "train_negative_ratio: must be an integer"),
    ({"kind": "table", "categorical": ["a"], "train_negative_ratio": 4}, "train_negative_ratio: only for kind jobs"),
])
def test_train_negative_ratio_is_checked(options: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        DataConfig(**options)
