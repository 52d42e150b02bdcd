"""When a job's recency bucket changes (convfm.features.recency): at its next age or days-left change
(``RecencyEncoder.next_changes``) or when events move its count (``JobPopularity.moved``), and at no other time;
the catalog ranker reads only the jobs due (``convfm.model.job_clock``) and stays the model's exact logit."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from convfm.config import ModelConfig
from convfm.data.liveness import ALWAYS, MICROS_PER_DAY, NEVER, job_windows
from convfm.features.jobs import JobFeatureExtractor
from convfm.features.recency import JobPopularity, RecencyEncoder
from convfm.model.network import ConvFM
from convfm.model.ranking import CatalogRanker

DAY = MICROS_PER_DAY
T0 = pd.Timestamp("2024-03-01").value // 1000  # microseconds


def market(seed: int, popular: bool, n: int = 60) -> RecencyEncoder:
    """Jobs posted over 40 days (a few undated), most closing 1-40 days later, and (``popular``) positives over
    those days."""
    rng = np.random.default_rng(seed)
    posted = T0 + rng.integers(0, 40 * DAY, n)
    expires = np.where(rng.random(n) < 0.8, posted + rng.integers(DAY // 2, 40 * DAY, n), NEVER)
    posted[rng.random(n) < 0.1] = ALWAYS
    popularity = JobPopularity(window_days=3)
    popularity.set(rng.integers(0, n, 300), T0 + rng.integers(0, 60 * DAY, 300))
    return RecencyEncoder(posted, expires, expiry=True, popularity=popularity if popular else None)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("popular", [False, True])
def test_a_job_changes_bucket_only_at_its_next_change_or_when_events_move_its_count(seed, popular):
    recency, rows = market(seed, popular), np.arange(60)
    rng = np.random.default_rng(seed + 10)
    t, moves, changes = T0 - 2 * DAY, 0, 0
    while t < T0 + 100 * DAY:
        later = t + int(rng.choice([1, DAY // 24, DAY, 5 * DAY]) * rng.random()) + 1
        following = recency.next_changes(rows, t)
        assert (following > t).all()
        before, after = recency.rows(rows, t), recency.rows(rows, later)
        may = following <= later
        if popular:
            may[recency.popularity.moved(t, later)] = True
        assert not (after != before)[~may].any()  # no other job changed
        changes += int((after != before).sum())
        dated = following != NEVER  # and each job's own next change is one: its bucket differs then
        assert (recency.rows(rows[dated], following[dated]) != before[dated]).all()
        t, moves = later, moves + 1
    assert moves > 100 and changes > 100


def test_next_changes_of_one_job_golden():
    recency = RecencyEncoder(np.array([T0]), np.array([T0 + 10 * DAY]), expiry=True)
    # age edges 1, 2, 4, 8, 15 days; days left fall below 7, 3 and 1 one microsecond after 3, 7 and 9 days
    marks = [int(recency.next_changes(np.array([0]), T0 + k * DAY)[0]) - T0 for k in (0, 1, 2, 3, 4, 8, 10)]
    assert marks == [DAY, 2 * DAY, 3 * DAY + 1, 3 * DAY + 1, 7 * DAY + 1, 9 * DAY + 1, 15 * DAY]
    never = RecencyEncoder(np.array([ALWAYS]), np.array([NEVER]), expiry=True)
    assert never.next_changes(np.array([0]), T0).tolist() == [NEVER]
    recency.hold(np.array([0]), T0 + 2 * DAY)  # held: it moves no more after the hold's time
    assert recency.next_changes(np.array([0]), T0 + 3 * DAY).tolist() == [NEVER]


def test_events_move_the_counts_of_their_jobs_alone():
    popularity = JobPopularity(window_days=2)
    popularity.set(np.array([1, 2, 3]), T0 + np.array([0, 1, 5]) * DAY)
    assert popularity.moved(T0 - DAY, T0 + DAY // 2).tolist() == [1]  # job 1's event enters
    assert popularity.moved(T0 + 2 * DAY + 1, T0 + 3 * DAY + 1).tolist() == [2]  # job 2's leaves
    assert popularity.moved(T0 + 3 * DAY + 1, T0 + 4 * DAY).tolist() == []


def test_the_ranker_reads_only_the_jobs_due_and_stays_exact(randomize, monkeypatch):
    jobs = pd.DataFrame({"job_id": [f"j{i}" for i in range(6)],
                         "skills": ["python", "go", "python;sql", "css", "sql", "go;docker"],
                         "posted_at": pd.to_datetime((T0 + np.arange(6) * DAY) * 1000)})
    positives = pd.DataFrame({"user_id": ["u1", "u2", "u1"], "job_id": ["j0", "j0", "j2"],
                              "timestamp": T0 + np.array([1, 2, 2]) * DAY})
    extractor = JobFeatureExtractor(text_dim=0, history_length=2, popularity_days=2).fit(
        jobs, positives, None, job_windows(jobs, default_lifetime_days=30.0))
    extractor.set_positives(positives)
    model = randomize(ConvFM(ModelConfig(embedding_dim=4, conv_filters=3, hidden_dims=(6,)),
                             extractor.feature_map), 3)
    users = extractor.user_side(extractor.user_catalog.take([1, 0]), np.array(["u1", ""]))
    start = int(T0 + 6.5 * DAY)
    ranker = CatalogRanker(model, extractor, time=start)
    assert ranker._clock.soonest == int(T0 + 7 * DAY)  # ages reach edges (the positives left the window on day 4)
    reads = []
    real = ranker.recency.rows
    monkeypatch.setattr(ranker.recency, "rows", lambda rows, t: reads.append(len(rows)) or real(rows, t))
    for hour in (1, 6, 11):  # before then: nothing read, the time moves, the scores stay exact
        t = start + hour * DAY // 24
        assert len(ranker.at(t)) == 0 and ranker.time == t and not reads
        reference = CatalogRanker(model, extractor, time=t).full_scores(users)
        torch.testing.assert_close(ranker.score_all(users), reference, atol=1e-5, rtol=0)
        reads.clear()  # the reference rankers read
    assert ranker.at(int(T0 + 7 * DAY)).tolist() == [4, 6]  # the span's end: j3 turns 4 days old, j5 2 days
    assert reads == [2]  # those two read, not every job
    extractor.add_positives(["j5"], np.array([T0 + 7 * DAY - 1]))  # a logged positive: j5's count moved
    assert ranker.at(int(T0 + 7 * DAY) + 1).tolist() == [6] and reads == [2, 1]  # its row alone read
    torch.testing.assert_close(ranker.score_all(users),
                               CatalogRanker(model, extractor, time=int(T0 + 7 * DAY) + 1).full_scores(users),
                               atol=1e-5, rtol=0)
