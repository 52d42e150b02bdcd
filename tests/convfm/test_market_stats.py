"""convfm.data.market_stats: golden values on a hand-built five-row log."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from convfm.data.market_stats import format_stats, market_stats


@pytest.fixture
def log() -> tuple[pd.DataFrame, pd.DataFrame]:
    jobs = pd.DataFrame({"job_id": ["j1", "j2", "j3"],
                         "posted_at": ["2023-12-15T00:00:00", "2024-01-09T00:00:00", None],  # j3: first seen
                         "expires_at": ["2024-01-06T00:00:00", None, None]})  # else 30 days
    interactions = pd.DataFrame({
        "user_id": ["u1", "u1", "u2", "u2", "u3"],
        "job_id": ["j1", "j2", "j2", "j3", "j1"],
        "event": ["apply", "view", "apply", "save", "apply"],
        "timestamp": ["2024-01-01T00:00:00", "2024-01-09T12:00:00", "2024-01-10T00:00:00", "2024-01-11T00:00:00",
                      "2024-01-05T00:00:00"],
    })
    return jobs, interactions


def test_golden_values(log: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    stats = market_stats(*log)
    assert stats == {
        "users": 3, "jobs": 3, "interactions": 5, "positives": 4, "timeline_days": 10.0,
        "interactions_per_user_mean": 1.667, "interactions_per_user_median": 2.0,
        "interactions_per_job_mean": 1.667, "interactions_per_job_median": 2.0,
        "last_tenth_new_job_share": 0.5,  # after day 9: j2 (posted day 8) and j3 (first seen day 10)
        "cold_last_positive_share": 0.6667,  # u1's j1 and u2's j3 nobody saw before; u3's j1 u1 saw
        "positives_within_13_days": 0.5,  # j1 is 17 and 21 days old at its positives
        "mean_live_catalog": 1.2,  # j1 expired on day 5: live jobs 1, 1, 1, 2, 1
    }


def test_positive_events_lifetime_and_integer_times(log: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    jobs, interactions = log
    views = market_stats(jobs, interactions, positive_events=("view",))
    assert views["positives"] == 1 and views["cold_last_positive_share"] == 1.0  # j2 first seen then
    micros = interactions.assign(timestamp=pd.to_datetime(interactions["timestamp"]).astype("datetime64[us]")
                                 .astype(np.int64))
    assert market_stats(jobs, micros) == market_stats(jobs, interactions)
    forever = market_stats(jobs.drop(columns="expires_at"), interactions, default_lifetime_days=None)
    assert forever["mean_live_catalog"] == 1.8  # 1, 2, 2, 3, 1


def test_format_is_an_aligned_table(log: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    lines = format_stats(market_stats(*log)).splitlines()
    assert len(lines) == 13 and len({len(line) for line in lines}) == 1
    assert lines[9].split()[-1] == "50.0%" and lines[0].split() == ["users", "3"]
