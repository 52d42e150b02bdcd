"""The job-popularity feature (convfm.features.recency.JobPopularity): positives in the window strictly before
t, golden buckets, no leakage from later events, the artifact's last window, live positives, exact ranking."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from convfm.config import DataConfig, ModelConfig
from convfm.data.liveness import MICROS_PER_DAY, job_windows
from convfm.errors import ConfigError
from convfm.features.context import POPULARITY_EDGES, POPULARITY_VOCAB
from convfm.features.recency import JobPopularity
from convfm.features.jobs import JobFeatureExtractor, load_extractor
from convfm.model.network import ConvFM
from convfm.model.ranking import CatalogRanker

DAY = MICROS_PER_DAY
T0 = pd.Timestamp("2024-03-01").value // 1000  # microseconds


POSITIVES = pd.DataFrame({  # j0: five applies on days 1-3, j2 one on day 2, one for a job outside the catalog
    "user_id": ["u1", "u2", "u3", "u4", "u5", "u1", "u2"],
    "job_id": ["j0", "j0", "j0", "j0", "j0", "j2", "gone"],
    "timestamp": T0 + np.array([1, 1, 2, 3, 3, 2, 2]) * DAY,
})


@pytest.fixture
def fitted():
    jobs = pd.DataFrame({
        "job_id": [f"j{i}" for i in range(6)],
        "skills": ["python", "go", "python;sql", "css", "sql", "go;docker"],
        "company": ["a", "b", "a", "c", "b", "c"],
        "posted_at": pd.to_datetime(T0 * 1000 + np.arange(6) * DAY * 1000),
    })
    extractor = JobFeatureExtractor(text_dim=0, history_length=2, popularity_days=2).fit(
        jobs, POSITIVES, None, job_windows(jobs, default_lifetime_days=30.0))
    extractor.set_positives(POSITIVES)
    return extractor


def brute_force(rows: np.ndarray, times: np.ndarray, event_rows: np.ndarray, event_times: np.ndarray,
                window: int) -> list[int]:
    return [int(((event_rows == r) & (event_times < t) & (event_times >= t - window)).sum())
            for r, t in zip(rows, times)]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_counts_equal_a_brute_force_count_with_tied_times(seed):
    rng = np.random.default_rng(seed)
    event_rows, event_times = rng.integers(1, 6, 300), rng.integers(0, 40, 300) * DAY // 4
    popularity = JobPopularity(window_days=3)
    popularity.set(event_rows, event_times)
    rows, times = rng.integers(0, 7, 200), rng.integers(-4, 50, 200) * DAY // 4
    assert popularity.counts(rows, times).tolist() == brute_force(rows, times, event_rows, event_times, 3 * DAY)
    for t in (-DAY, 0, 5 * DAY, 5 * DAY + 1, 9 * DAY, 20 * DAY):  # one time for every row (serving's path)
        expected = brute_force(rows, np.full(len(rows), t), event_rows, event_times, 3 * DAY)
        assert popularity.counts(rows, np.int64(t)).tolist() == expected
    half = len(event_rows) // 2  # adding later events gives what setting them all at once gives
    added = JobPopularity(window_days=3)
    added.set(event_rows[:half], event_times[:half])
    added.add(event_rows[half:], event_times[half:])
    assert added.counts(rows, times).tolist() == popularity.counts(rows, times).tolist()
    assert JobPopularity(3).counts(rows, times).tolist() == [0] * len(rows)
    many_rows, many_times = rng.integers(1, 6, 3000), rng.integers(0, 40, 3000) * DAY // 4
    chunked = JobPopularity(window_days=3)  # events one chunk at a time: some merged, the rest in the small index
    for a in range(0, 3000, 100):
        chunked.add(many_rows[a : a + 100], many_times[a : a + 100])
    assert len(chunked._base.rows) and len(chunked._added.rows)
    assert chunked.counts(rows, times).tolist() == brute_force(rows, times, many_rows, many_times, 3 * DAY)


def test_buckets_golden(fitted):
    recency = fitted.recency_encoder
    rows = np.array([1, 1, 1, 1, 3, 0])  # j0 (catalog row 1); j2 (row 3); the unknown job
    times = T0 + np.array([1, 2, 3.5, 5.5, 3, 3]) * DAY
    combos = recency.table.cat[recency.rows(rows, times.astype(np.int64))]
    names = [f.name for f in fitted.feature_map.fields]
    assert names[-2:] == ["job_age", "job_popularity"]
    labels = [POPULARITY_VOCAB.decode(p) for p in combos[:, 1]]
    # day 1: none before it; day 2: two on day 1; day 3.5: days 2-3 (day 1 left the 2-day window); day 5.5: none
    assert labels[:4] == ["0", "2-3", "2-3", "0"]
    assert labels[4:] == ["1", "0"]  # the unknown row keeps no events (the job outside the catalog is dropped)
    counts = np.array([0, 1, 2, 3, 4, 7, 8, 63, 64, 511, 512, 10**6])
    buckets = np.searchsorted(POPULARITY_EDGES, counts, side="right")
    assert [POPULARITY_VOCAB.values[b] for b in buckets] == ["0", "1", "2-3", "2-3", "4-7", "4-7", "8-15",
                                                              "32-63", "64-127", "256-511", "512+", "512+"]


def test_events_at_or_after_t_never_change_an_examples_features(fitted):
    examples = pd.DataFrame({"user_id": ["u9", "u9"], "job_id": ["j0", "j2"], "label": [1.0, 0.0],
                             "timestamp": T0 + np.array([3, 3]) * DAY})
    before = fitted.example_set(examples).gather(np.arange(2))[0]
    later = pd.DataFrame({"user_id": ["x", "y", "z"], "job_id": ["j0", "j2", "j2"],
                          "timestamp": T0 + np.array([3, 3, 4]) * DAY})  # at t (its own event) and after
    fitted.set_positives(pd.concat([POSITIVES, later], ignore_index=True))
    after = fitted.example_set(examples).gather(np.arange(2))[0]
    torch.testing.assert_close(before.cat, after.cat)
    earlier = later.assign(timestamp=T0 + np.array([2, 2, 2.5]) * DAY)  # the same events before t do count
    fitted.set_positives(pd.concat([POSITIVES, earlier], ignore_index=True))
    assert not torch.equal(fitted.example_set(examples).gather(np.arange(2))[0].cat, before.cat)


def test_artifact_keeps_the_last_window_and_live_positives_count(fitted, tmp_path):
    fitted.save(tmp_path / "ex")
    loaded = load_extractor(tmp_path / "ex")
    assert loaded.feature_map == fitted.feature_map and loaded.popularity_days == 2
    # the data end on day 3: the window [day 1, day 3] stays (day-1 events still count at day 2.5)
    assert sorted(loaded.popularity.times.tolist()) == sorted(fitted.popularity.times.tolist())
    rows, t = np.array([1, 3]), np.int64(T0 + 4 * DAY)
    assert loaded.popularity.counts(rows, t).tolist() == fitted.popularity.counts(rows, t).tolist() == [3, 1]
    assert loaded.popularity.end == fitted.popularity.end == T0 + 3 * DAY
    times = np.array([T0 + 4 * DAY - 1, T0 + 3.5 * DAY, T0 + 3.5 * DAY, T0 + 3 * DAY]).astype(np.int64)
    loaded.add_positives(["j2", "j2", "nope", "j2"], times)
    # the job outside the catalog is not kept; an event at or before the data's last positive is the data's own
    assert loaded.popularity.counts(rows, t).tolist() == [3, 3]
    old = JobPopularity(2)
    old.set(np.array([1, 1]), np.array([0, 10 * DAY]))
    assert old.recent(10 * DAY)[1].tolist() == [10 * DAY]  # older than the window before the end: dropped


def test_fast_ranking_is_exact_and_follows_live_positives(fitted, randomize):
    model = randomize(ConvFM(ModelConfig(embedding_dim=4, conv_filters=3, hidden_dims=(6,)), fitted.feature_map), 7)
    users = fitted.user_side(fitted.user_catalog.take([1, 2, 0]), np.array(["u1", "u2", ""]))
    times = (T0 + np.array([1, 2.5, 9]) * DAY).astype(np.int64)
    fast = CatalogRanker(model, fitted, time=T0).score_all(users, times=times)
    for i, t in enumerate(times):
        reference = CatalogRanker(model, fitted, time=int(t)).full_scores(users.take([i]))
        torch.testing.assert_close(fast[i : i + 1], reference, atol=1e-5, rtol=0)
    now = int(T0 + 10 * DAY)
    ranker = CatalogRanker(model, fitted, time=now)
    quiet = ranker.score_all(users.take([0]))
    fitted.add_positives(["j4"] * 5, np.full(5, now - DAY))  # a burst of applies to j4 (row 5) before now
    ranker.at(now + 1)
    torch.testing.assert_close(ranker.score_all(users.take([0])),
                               CatalogRanker(model, fitted, time=now + 1).full_scores(users.take([0])),
                               atol=1e-5, rtol=0)
    assert not torch.isclose(ranker.score_all(users.take([0]))[0, 5], quiet[0, 5])


def test_popularity_needs_recency():
    with pytest.raises(ConfigError, match="popularity_days.*needs recency"):
        DataConfig(popularity_days=7, recency=False)
    with pytest.raises(ConfigError, match="popularity_days"):
        DataConfig(popularity_days=0)
