"""convfm.data.negatives: live negatives never leak the future, popularity weights use only the past."""
from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

from convfm.config import DataConfig
from convfm.data.liveness import MICROS_PER_DAY, job_windows
from convfm.data.loading import JobMarket, build_examples

DAY = MICROS_PER_DAY
T0 = pd.Timestamp("2024-01-01").value // 1000  # microseconds


def dated_market(n_users: int = 300, n_jobs: int = 400, n_rows: int = 3000, seed: int = 0) -> JobMarket:
    """Jobs posted over 90 days (some with expires_at); users act from day 10 on, on jobs posted by then."""
    rng = np.random.default_rng(seed)
    posted = T0 + rng.integers(0, 90 * DAY, n_jobs)
    expires = pd.Series(pd.to_datetime(posted + rng.integers(1, 20, n_jobs) * DAY, unit="us"))
    expires[rng.random(n_jobs) < 0.5] = pd.NaT  # these live the default 30 days
    jobs = pd.DataFrame({"job_id": [f"j{i}" for i in range(n_jobs)],
                         "posted_at": pd.to_datetime(posted, unit="us"), "expires_at": expires})
    job = rng.integers(0, n_jobs, n_rows)
    times = np.maximum(posted[job], T0 + 10 * DAY) + rng.integers(0, DAY, n_rows)  # dozens of jobs live
    events = np.array(["view", "click", "apply", "save"])[rng.integers(0, 4, n_rows)]
    interactions = pd.DataFrame({"user_id": np.char.add("u", rng.integers(0, n_users, n_rows).astype(str)),
                                 "job_id": jobs["job_id"].to_numpy()[job], "event": events,
                                 "timestamp": times.astype(np.int64)})
    return JobMarket(jobs=jobs, users=None, interactions=interactions, calendar=True)


def sampled(market: JobMarket, examples: pd.DataFrame) -> pd.DataFrame:
    seen = set(zip(market.interactions["user_id"], market.interactions["job_id"]))
    return examples[[p not in seen for p in zip(examples["user_id"], examples["job_id"])]]


def test_live_negatives_are_live_unseen_unique_and_seeded() -> None:
    market = dated_market()
    config = DataConfig(negative_ratio=3, seed=4)  # negative_sampling "live" is the default
    examples = build_examples(market, config)
    negatives = sampled(market, examples)
    positives = int(build_examples(market, DataConfig())["label"].sum())
    assert len(negatives) == 3 * positives and (negatives["label"] == 0).all()
    windows = job_windows(market.jobs, config.job_lifetime_days)
    codes = pd.Index(windows.job_ids).get_indexer(negatives["job_id"])
    times = negatives["timestamp"].to_numpy()
    assert windows.live(times, codes[:, None]).all()  # posted_at <= t < expires_at for every negative
    posted = market.jobs.set_index("job_id")["posted_at"].loc[negatives["job_id"]].to_numpy()
    assert (posted.astype("datetime64[us]").astype(np.int64) <= times).all()  # none posted after its positive
    pairs = list(zip(examples["user_id"], examples["job_id"]))
    assert len(set(pairs)) == len(pairs)
    pd.testing.assert_frame_equal(examples, build_examples(market, config))
    assert not examples.equals(build_examples(market, config, rng_seed=5))
    uniform = sampled(market, build_examples(market, DataConfig(negative_ratio=3, seed=4,
                                                                negative_sampling="uniform")))
    ucodes = pd.Index(windows.job_ids).get_indexer(uniform["job_id"])
    assert windows.live(uniform["timestamp"].to_numpy(), ucodes[:, None]).mean() < 0.5  # what live avoids


def test_live_negatives_golden_and_counted_when_nothing_is_live(caplog: pytest.LogCaptureFixture) -> None:
    jobs = pd.DataFrame({
        "job_id": ["a", "b", "c", "d", "e"],
        "posted_at": pd.to_datetime(["2024-01-01", "2024-01-02", "2024-01-11", None, "2024-01-01"]),
        "expires_at": pd.to_datetime(["2024-01-03", None, None, "2024-01-06", None]),
    })
    rows = [("u1", "b", "apply", T0 + 3 * DAY), ("u1", "e", "view", T0), ("u2", "c", "apply", T0 + 50 * DAY)]
    market = JobMarket(jobs=jobs, users=None, calendar=True,
                       interactions=pd.DataFrame(rows, columns=["user_id", "job_id", "event", "timestamp"]))
    with caplog.at_level(logging.WARNING, logger="convfm.data.negatives"):
        examples = build_examples(market, DataConfig(negative_ratio=2, job_lifetime_days=30))
    # day 3: a expired, b and e seen by u1, c not posted yet, d live (no posted_at, expires day 5);
    # day 50: only c (posted day 10, 30-day lifetime) was live, and u2 applied to it
    assert examples.values.tolist() == [["u1", "e", 0.0, T0], ["u1", "b", 1.0, T0 + 3 * DAY],
                                        ["u1", "d", 0.0, T0 + 3 * DAY], ["u2", "c", 1.0, T0 + 50 * DAY]]
    assert "sampled 1 of 4 live negatives: 3 slot(s) had no live job, unseen by the user" in caplog.text


def test_live_negatives_found_when_rejection_would_miss_them() -> None:
    """One long-lived job among 1000 short ones: rejection draws from all 1000 and rarely hits it; the exact
    fill after the rounds still finds it."""
    n = 1000
    posted = T0 + np.arange(n) * DAY
    expires = posted + DAY
    expires[0] = T0 + 2000 * DAY
    jobs = pd.DataFrame({"job_id": [f"j{i}" for i in range(n)], "posted_at": pd.to_datetime(posted, unit="us"),
                         "expires_at": pd.to_datetime(expires, unit="us")})
    rows = [(f"u{k}", "j999", "apply", T0 + 1500 * DAY + k) for k in range(50)]
    market = JobMarket(jobs=jobs, users=None, calendar=True,
                       interactions=pd.DataFrame(rows, columns=["user_id", "job_id", "event", "timestamp"]))
    negatives = build_examples(market, DataConfig(negative_ratio=1)).query("label == 0")
    assert len(negatives) == 50 and set(negatives["job_id"]) == {"j0"}


def test_live_without_a_calendar_samples_uniformly(caplog: pytest.LogCaptureFixture) -> None:
    market = dated_market()
    numeric = JobMarket(jobs=market.jobs, users=None, interactions=market.interactions, calendar=False)
    with caplog.at_level(logging.WARNING, logger="convfm.data.loading"):
        live = build_examples(numeric, DataConfig(negative_ratio=2))
    assert "needs date/time interaction timestamps" in caplog.text
    pd.testing.assert_frame_equal(live, build_examples(numeric, DataConfig(negative_ratio=2,
                                                                           negative_sampling="uniform")))


def test_popularity_weights_count_only_earlier_interactions() -> None:
    """Catalog of 11: ``hot`` has 200 views before the positives, ``future`` 200 after. P(job) is proportional
    to 1 + earlier interactions, so among the 9 unseen-able jobs hot gets 201/209 and future 1/209."""
    jobs = pd.DataFrame({"job_id": ["hot", "future", "target", *[f"j{i}" for i in range(8)]]})
    rows = [(f"c{i}", "hot", "view", i) for i in range(200)]
    rows += [(f"f{i}", "future", "view", 10_000 + i) for i in range(200)]
    rows += [(f"u{i}", "target", "apply", 1000) for i in range(500)]
    market = JobMarket(jobs=jobs, users=None,
                       interactions=pd.DataFrame(rows, columns=["user_id", "job_id", "event", "timestamp"]))
    examples = build_examples(market, DataConfig(negative_ratio=1, negative_sampling="popularity", seed=0))
    negatives = examples[examples["user_id"].str.startswith("u") & (examples["label"] == 0)]
    share = negatives["job_id"].value_counts(normalize=True)
    assert len(negatives) == 500 and "target" not in share
    assert 0.93 < share["hot"] <= 0.99  # expected 201/209 = 0.962
    assert share.get("future", 0.0) < 0.02  # expected 1/209; 200/209 if the future counted
    uniform = build_examples(market, DataConfig(negative_ratio=1, negative_sampling="uniform", seed=0))
    assert uniform[uniform["user_id"].str.startswith("u") & (uniform["label"] == 0)]["job_id"].eq("hot").mean() < 0.3
