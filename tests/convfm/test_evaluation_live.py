"""convfm.evaluation.live: live candidates, skips, each baseline's ranks, coverage and age on hand-built data.

Catalog a..e (codes 0..4), live windows in days: a [0, 10), b [2, 20), c [5, 8), d always (no posted_at), e [12, 30).
"""
import math

import numpy as np
import pandas as pd
import pytest

from convfm.data.liveness import ALWAYS, MICROS_PER_DAY, NEVER, JobWindows
from convfm.evaluation.live import (
    _candidates,
    catalog_windows,
    evaluate_live,
    mean_live_jobs,
    newest_scorer,
    oracle_scorer,
    popularity_scorer,
    recent_popularity_scorer,
    select_events,
)
from convfm.evaluation.metrics import PopularityBaseline

DAY = MICROS_PER_DAY
CATALOG = np.array(["a", "b", "c", "d", "e"], dtype=object)
WINDOWS = JobWindows(CATALOG, np.array([0, 2 * DAY, 5 * DAY, ALWAYS, 12 * DAY]),
                     np.array([10 * DAY, 20 * DAY, 8 * DAY, NEVER, 30 * DAY]))


def _frame() -> pd.DataFrame:
    """The split: u1 applies to b at day 6, u2 to e at 15 (and saw a at 14), u3 to c after it expired, u4 to a job
    outside the catalog, u5 to a at day 1 when the only other live job (d) is one u5 already saw."""
    return pd.DataFrame({
        "user_id": ["u1", "u2", "u3", "u4", "u5", "u2"],
        "job_id": ["b", "e", "c", "zzz", "a", "a"],
        "label": [1.0, 1.0, 1.0, 1.0, 1.0, 0.0],
        "timestamp": np.array([6, 15, 9, 3, 1, 14]) * DAY,
    })


def _seen() -> pd.DataFrame:
    other = pd.DataFrame({"user_id": ["u1", "u5"], "job_id": ["a", "d"]})  # from other splits
    return pd.concat([_frame()[["user_id", "job_id"]], other], ignore_index=True)


def _events(max_events: int = 10):
    return select_events(_frame(), _seen(), CATALOG, WINDOWS, max_events, seed=0)


def _fixed(row: list[float]):
    """A scorer giving every user the same score per catalog job (a test double for a method)."""
    values = np.array(row, dtype=np.float64)
    return lambda users, times, codes: np.broadcast_to(values[codes], (len(users), len(codes)))


class LookupOracle:
    """Test double for PreparedData.oracle: true probabilities from a (user, job) table, 0 elsewhere."""

    def __init__(self, table: dict[tuple[str, str], float]) -> None:
        self.table = table

    def score(self, user_ids: np.ndarray, job_ids: np.ndarray, times: np.ndarray) -> np.ndarray:
        return np.array([[self.table.get((u, j), 0.0) for j in row] for u, row in zip(user_ids, job_ids)])


def test_events_skip_and_count_what_cannot_be_ranked():
    events = _events()
    assert events.users.tolist() == ["u1", "u2"] and events.codes.tolist() == [1, 4]
    assert events.times.tolist() == [6 * DAY, 15 * DAY]
    assert events.skipped == {"not_in_catalog": 1, "not_live": 1, "no_candidates": 1}
    assert events.positives == 5
    assert mean_live_jobs(events, WINDOWS) == pytest.approx((4 + 3) / 2)  # {a, b, c, d} at 6, {b, d, e} at 15


def test_candidates_are_live_and_unseen():
    events = _events()
    # u1 at 6: live a b c d, minus a (seen) and b (the positive); u2 at 15: live b d e, minus e (and a, not live)
    assert _candidates(events, WINDOWS.live(events.times), 0, 2).astype(int).tolist() == [[0, 0, 1, 1, 0], [0, 1, 0, 1, 0]]
    assert _candidates(events, WINDOWS.live(events.times[1:2]), 1, 2).astype(int).tolist() == [[0, 1, 0, 1, 0]]


def test_max_events_is_a_seeded_sample_in_time_order():
    one = _events(max_events=1)
    assert len(one.times) == 1 and one.skipped == _events().skipped
    assert one.users.tolist() == _events(max_events=1).users.tolist()  # same seed, same sample


def test_without_a_calendar_the_whole_catalog_is_live():
    whole = catalog_windows(CATALOG, None)
    events = select_events(_frame(), _seen(), CATALOG, whole, 10, seed=0)
    assert events.users.tolist() == ["u5", "u1", "u3", "u2"]  # time order: days 1, 6, 9, 15
    assert events.skipped == {"not_in_catalog": 1, "not_live": 0, "no_candidates": 0}
    with pytest.raises(ValueError, match="windows cover 5 jobs, the catalog 2"):
        catalog_windows(CATALOG[:2], WINDOWS)


def test_fixed_scores_rank_coverage_and_age():
    # u1: b (3) vs c (4), d (1) -> rank 2; u2: e (2) vs b (3), d (1) -> rank 2
    got = evaluate_live(_events(), WINDOWS, {"m": _fixed([5, 3, 4, 1, 2])}, k=2)["m"]
    assert got["hr@2"] == 1.0 and got["mrr"] == 0.5 and got["ndcg@2"] == pytest.approx(1 / math.log2(3))
    # top-2: u1 c, b; u2 b, e -> 3 of the 5 jobs live at day 6 or 15; ages 1, 4 (day 6) and 13, 3 (day 15)
    assert got["coverage@2"] == pytest.approx(3 / 5)
    assert got["mean_age_days"] == pytest.approx((1 + 4 + 13 + 3) / 4)
    assert got["events"] == 2


def test_ties_are_fair_in_ranks_and_broken_by_catalog_order_in_top_k():
    got = evaluate_live(_events(), WINDOWS, {"flat": _fixed([0, 0, 0, 0, 0])}, k=1)["flat"]
    assert got["mrr"] == pytest.approx(0.5)  # 1 + 0.5 * 2 ties for both events
    assert got["coverage@1"] == pytest.approx(1 / 5)  # b is first in catalog order for both events
    assert got["mean_age_days"] == pytest.approx((4 + 13) / 2)


def test_newest_first_and_jobs_without_posted_at_rank_oldest():
    got = evaluate_live(_events(), WINDOWS, {"newest": newest_scorer(WINDOWS)}, k=3)["newest"]
    assert got["mrr"] == pytest.approx((1 / 2 + 1) / 2)  # u1: c (5) above b (2); u2: e (12) is the newest
    # top-3: u1 c, b, d; u2 e, b, d: d has no age
    assert got["mean_age_days"] == pytest.approx((1 + 4 + 3 + 13) / 4)
    assert got["coverage@3"] == pytest.approx(4 / 5)


def test_recent_popularity_counts_positives_of_the_seven_days_before_t():
    positives = pd.DataFrame({"job_id": ["c", "c", "b", "d", "b", "d", "e", "zzz"],
                              "timestamp": np.array([1, 3, 5.5, 8, 9, 14, 15, 10]) * DAY})
    scorer = recent_popularity_scorer(positives, CATALOG)
    events = _events()
    # [-1, 6): c 2, b 1; [8, 15): d 2 (day 8 counts), b 1, e 0 (day 15 is not before t)
    assert scorer(events.users, events.times, np.arange(5)).tolist() == [[0, 1, 2, 0, 0], [0, 1, 0, 2, 0]]
    got = evaluate_live(events, WINDOWS, {"recent": scorer})["recent"]
    assert got["mrr"] == pytest.approx((1 / 2 + 1 / 3) / 2)


def test_popularity_and_oracle_scorers():
    train = pd.DataFrame({"user_id": ["x"] * 4, "job_id": ["b", "b", "c", "d"], "label": [1, 1, 0, 0]})
    popularity = popularity_scorer(PopularityBaseline(smoothing=0.0).fit(train), CATALOG)
    assert popularity(np.array(["u"]), np.array([0]), np.array([1, 2, 0])).tolist() == [[1.0, 0.0, 0.5]]
    oracle = oracle_scorer(LookupOracle({("u1", "b"): 0.9, ("u2", "b"): 0.8, ("u2", "e"): 0.1}), CATALOG)
    got = evaluate_live(_events(), WINDOWS, {"popularity": popularity, "oracle": oracle}, k=1)
    assert got["popularity"]["mrr"] == pytest.approx((1 + 1 / 2) / 2)  # b (1.0) first; e (prior .5) below b
    assert got["oracle"]["mrr"] == pytest.approx((1 + 1 / 2) / 2)
    assert got["oracle"]["hr@1"] == 0.5


def test_a_scorer_of_the_wrong_shape_is_refused():
    with pytest.raises(ValueError, match=r"bad: scores of shape \(1, 5\), expected \(2, 5\)"):
        evaluate_live(_events(), WINDOWS, {"bad": lambda users, times, codes: np.zeros((1, 5))})
