"""History and recency features (convfm.features.context): read strictly before each example's time, golden
buckets, the extractor's artifacts, and exact fast ranking at request time."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from convfm.config import ModelConfig
from convfm.data.liveness import MICROS_PER_DAY, job_windows
from convfm.features.context import AGE_VOCAB, EXPIRY_VOCAB, UserHistory, history_states
from convfm.features.fields import PAD, UNK
from convfm.features.jobs import JobFeatureExtractor, load_extractor
from convfm.model.network import ConvFM
from convfm.model.ranking import CatalogRanker

DAY = MICROS_PER_DAY
T0 = pd.Timestamp("2024-03-01").value // 1000  # microseconds


@pytest.fixture
def market():
    jobs = pd.DataFrame({
        "job_id": [f"j{i}" for i in range(8)],
        "skills": ["python;sql", "go;docker", "python", "react;css", "sql;airflow", "python;ml", "go", "css"],
        "location": ["berlin", "paris", "berlin", "rome", "berlin", "paris", "rome", "berlin"],
        "company": ["a", "b", "a", "c", "b", "a", "c", "d"],
        "posted_at": pd.to_datetime(T0 * 1000 + np.arange(8) * DAY * 1000),
        "expires_at": pd.to_datetime(T0 * 1000 + (np.arange(8) + 20) * DAY * 1000),
    })
    positives = pd.DataFrame({  # (user, job, time): u1 applies to j0, j2, j5 on days 8, 9, 12; u2 once
        "user_id": ["u1", "u1", "u1", "u2"],
        "job_id": ["j0", "j2", "j5", "j3"],
        "timestamp": T0 + np.array([8, 9, 12, 10]) * DAY,
    })
    return jobs, positives


@pytest.fixture
def fitted(market):
    jobs, positives = market
    extractor = JobFeatureExtractor(text_dim=0, history_length=3).fit(
        jobs, positives, None, job_windows(jobs, default_lifetime_days=30.0))
    extractor.history = UserHistory.from_frame(positives)
    return extractor


def test_history_counts_positives_strictly_before_t(market):
    history = UserHistory.from_frame(market[1])
    users = np.array(["u1", "u1", "u1", "u1", "u2", "nobody"])
    times = T0 + np.array([8, 8.5, 9, 100, 11, 50]) * DAY
    start, count, total = history.states(users, times.astype(np.int64))
    assert total.tolist() == count.tolist()
    assert count.tolist() == [0, 1, 1, 3, 1, 0]  # a positive at exactly t is not history
    assert history.recent(start, count, 2).tolist() == [["", ""], ["j0", ""], ["j0", ""], ["j5", "j2"],
                                                       ["j3", ""], ["", ""]]
    empty = UserHistory.empty().states(np.array(["u1"]), np.array([T0]))
    assert [x.tolist() for x in empty] == [[0], [0], [0]]
    state, _, _, _ = history_states(history, users, times.astype(np.int64))
    assert state[1] == state[2] and state[0] == state[5]  # one row per distinct (user, count); empty shared
    assert len(set(state.tolist())) == 4


@pytest.mark.parametrize("seed", range(5))
def test_history_counts_equal_a_brute_force_count_with_tied_times(seed):
    """states() against counting each query's user's events before t one by one: many events share a time, and
    queries fall on event times, between them, before all and after all."""
    rng = np.random.default_rng(seed)
    users = rng.choice(["a", "b", "c", "d"], size=60)
    times = rng.integers(0, 12, size=60) * 10  # 12 distinct times, many ties
    history = UserHistory(users, rng.choice(["j1", "j2", "j3"], size=60), times)
    query_users = rng.choice(["a", "b", "c", "d", "nobody"], size=200)
    query_times = rng.integers(-5, 125, size=200)
    query_times[:20] = times[:20]  # exactly on an event's time: that event is not before t
    _, count, _ = history.states(query_users, query_times)
    expected = [int(((users == u) & (times < t)).sum()) for u, t in zip(query_users, query_times)]
    assert count.tolist() == expected


def test_history_fields_share_the_job_vocabularies(fitted):
    names = [f.name for f in fitted.feature_map.fields]
    assert names.index("history_jobs") < names.index("job_id") < names.index("job_age")
    spec = {f.name: f for f in fitted.feature_map.fields}
    assert (spec["history_jobs"].vocab, spec["history_companies"].vocab) == ("job", "company")
    assert spec["history_skills"].vocab == "skill" and spec["history_jobs"].max_len == 3
    examples = pd.DataFrame({"user_id": ["u1"], "job_id": ["j7"], "label": [1.0],
                             "timestamp": [T0 + 13 * DAY]})
    batch, _ = fitted.example_set(examples).gather(np.arange(1))
    multi_names = [f.name for f in fitted.feature_map.of_kind("multi")]
    lists = {name: batch.multi[0, i].tolist() for i, name in enumerate(multi_names)}
    job = fitted.vocabs["job"]
    assert lists["history_jobs"][:3] == [job.index("j5"), job.index("j2"), job.index("j0")]  # most recent first
    company = fitted.vocabs["company"]
    assert lists["history_companies"][:3] == [company.index("a")] * 3
    skill = fitted.vocabs["skill"]
    assert lists["history_skills"][0] == skill.index("python")  # in all three jobs: the most frequent
    dense = dict(zip([f.name for f in fitted.feature_map.of_kind("dense")], [batch.dense[0]]))
    assert batch.dense[0, -2:].tolist() == pytest.approx([np.log1p(3) / np.log1p(100), 0.0])
    assert "activity" in [f.name for f in fitted.feature_map.of_kind("dense")] and dense


def test_events_after_t_never_change_an_examples_features(fitted, market):
    """The leakage test: shuffle and rewrite every positive after t; features at t stay the same."""
    _, positives = market
    examples = pd.DataFrame({"user_id": ["u1", "u1", "u2"], "job_id": ["j2", "j6", "j4"],
                             "label": [1.0, 0.0, 0.0], "timestamp": T0 + np.array([9, 9, 10]) * DAY})
    before = fitted.example_set(examples).gather(np.arange(3))[0]
    changed = positives.copy()
    later = changed["timestamp"] >= T0 + 9 * DAY  # at or after every example's time
    changed.loc[later, "job_id"] = ["j7", "j1", "j4"]  # other jobs ...
    changed.loc[later, "timestamp"] = changed.loc[later, "timestamp"].to_numpy()[::-1] + DAY  # ... at other times
    after = fitted.example_set(examples, history=UserHistory.from_frame(changed)).gather(np.arange(3))[0]
    length = max(before.multi.shape[2], after.multi.shape[2])  # batches trim lists to the longest one used
    pad = lambda multi: torch.nn.functional.pad(multi, (0, length - multi.shape[2]))  # noqa: E731
    torch.testing.assert_close(pad(before.multi), pad(after.multi))
    torch.testing.assert_close((before.cat, before.dense), (after.cat, after.dense))
    # and the feature does change when an event before t changes (the test can fail)
    earlier = positives.assign(job_id=["j7", "j2", "j5", "j3"])
    moved = fitted.example_set(examples, history=UserHistory.from_frame(earlier)).gather(np.arange(3))[0]
    assert not torch.equal(moved.multi, before.multi)


def test_a_positive_is_never_in_its_own_history(fitted, market):
    _, positives = market
    examples = positives.assign(label=1.0)
    batch = fitted.example_set(examples).gather(np.arange(len(examples)))[0]
    position = [f.name for f in fitted.feature_map.of_kind("multi")].index("history_jobs")
    for i, job in enumerate(examples["job_id"]):
        assert fitted.vocabs["job"].index(job) not in batch.multi[i, position].tolist()


def test_age_and_expiry_buckets_golden(fitted):
    recency = fitted.recency_encoder
    rows = np.array([1, 1, 1, 1, 0])  # j0 posted T0 (expires T0 + 20d); row 0: the unknown job
    times = T0 + np.array([0.5, 3, 25, -2, 3]) * DAY
    combos = recency.table.cat[recency.rows(rows, times.astype(np.int64))]
    ages = [AGE_VOCAB.decode(a) for a in combos[:, 0]]
    expiry = [EXPIRY_VOCAB.decode(e) for e in combos[:, 1]]
    assert ages == ["<1d", "2-4d", "15-31d", "<1d", None]  # before posting counts as new; unknown -> UNK
    assert expiry == ["15-31d", "15-31d", "expired", "15-31d", None]
    assert combos[4].tolist() == [UNK, UNK]


def test_extractor_round_trips_history_and_recency(fitted, tmp_path):
    fitted.save(tmp_path / "ex")
    loaded = load_extractor(tmp_path / "ex")
    assert loaded.feature_map == fitted.feature_map
    assert loaded.history.jobs.tolist() == ["j0", "j2", "j5", "j3"]
    np.testing.assert_array_equal(loaded.recency_encoder.posted, fitted.recency_encoder.posted)
    latest = fitted.history.latest(2)  # saving keeps each user's latest history_length positives ...
    assert latest.jobs.tolist() == ["j2", "j5", "j3"]
    after = np.array([np.iinfo(np.int64).max] * 2)
    assert latest.states(np.array(["u1", "u2"]), after)[2].tolist() == [3, 1]  # ... and the true activity


def test_history_off_and_no_calendar_give_the_static_fields(market):
    jobs, positives = market
    plain = JobFeatureExtractor(text_dim=0, history_length=0).fit(jobs, positives)
    names = [f.name for f in plain.feature_map.fields]
    assert not [n for n in names if n.startswith("history") or n in ("activity", "job_age")]


def test_a_user_known_only_by_two_past_jobs_is_scored_from_them(fitted, randomize):
    model = randomize(ConvFM(ModelConfig(embedding_dim=4, conv_filters=3, hidden_dims=(6,)), fitted.feature_map), 3)
    ranker = CatalogRanker(model, fitted, time=T0 + 13 * DAY)
    unknown = fitted.user_catalog.take([0])
    recent = np.array([["j2", "j0", ""]], dtype=object)
    with_history = fitted.user_side(unknown, np.array(["new"]), recent=recent)
    without = fitted.user_side(unknown, np.array(["new"]))
    assert with_history.multi[0].any() and not without.multi[0, -4:].any()
    assert not torch.allclose(ranker.score_all(with_history), ranker.score_all(without))


def test_fast_ranking_is_exact_at_each_users_time(fitted, randomize):
    model = randomize(ConvFM(ModelConfig(embedding_dim=4, conv_filters=3, hidden_dims=(6,)), fitted.feature_map), 5)
    users = fitted.user_side(fitted.user_catalog.take([1, 2, 0]), np.array(["u1", "u2", ""]))
    ranker = CatalogRanker(model, fitted, time=T0)
    times = (T0 + np.array([1, 4, 30]) * DAY).astype(np.int64)
    fast = ranker.score_all(users, times=times)
    for i, t in enumerate(times):
        reference = CatalogRanker(model, fitted, time=int(t)).full_scores(users.take([i]))
        torch.testing.assert_close(fast[i : i + 1], reference, atol=1e-5, rtol=0)
    assert not torch.allclose(fast[0], CatalogRanker(model, fitted, time=T0).score_all(users)[0])  # time matters
    ranker.at(int(times[2]))  # moving the precomputed sides gives the same scores as building them there
    torch.testing.assert_close(ranker.score_all(users), CatalogRanker(model, fitted, time=int(times[2])).score_all(users))


def test_users_sharing_a_time_are_scored_in_steps_sized_by_their_count(fitted, randomize, monkeypatch):
    """A day-granular log puts many events at one time: their user sides go through in one group, whose steps are
    sized by its users (they were sized by the 5 fields of a side: 51 times too large at 256 users, 3x slower)."""
    model = randomize(ConvFM(ModelConfig(embedding_dim=4, conv_filters=3, hidden_dims=(6,)), fitted.feature_map), 5)
    rows, ids = [1, 2, 0, 1, 2, 0, 1], np.array(["u1", "u2", ""] * 2 + ["u1"])
    users = fitted.user_side(fitted.user_catalog.take(rows), ids)
    ranker = CatalogRanker(model, fitted, time=T0)
    asked = []
    chunk = CatalogRanker._chunk
    monkeypatch.setattr(CatalogRanker, "_chunk", lambda self, n: asked.append(n) or chunk(self, n))
    times = np.array([T0 + DAY] * 6 + [T0 + 2 * DAY], dtype=np.int64)
    fast = ranker.score_all(users, times=times)
    assert sorted(asked) == [1, 6]
    torch.testing.assert_close(fast[:1], CatalogRanker(model, fitted, time=T0 + DAY).score_all(users.take([0])))


def test_request_sized_lookups_agree_with_the_bulk_path():
    """At most FEW_IDS ids skip pandas (a dict for catalog rows, a binary search over the sorted users); both
    paths give the same rows for known, unknown, empty and non-string ids."""
    from convfm.features.base import FEW_IDS, UNKNOWN_ROW, RowIndex

    rng = np.random.default_rng(0)
    known = [f"u{i}" for i in rng.permutation(50)]
    history = UserHistory(np.array(known), np.array([f"j{i}" for i in range(50)]), np.arange(50))
    index = RowIndex(["", *known])
    queries = np.array([*rng.choice(known, 20), "u999", "", "None", "u1 ", "U1", "a", "zzz", None], dtype=object)
    bulk = np.concatenate([queries] * (FEW_IDS // len(queries) + 1))  # past FEW_IDS: the pandas path
    assert len(queries) <= FEW_IDS < len(bulk)
    np.testing.assert_array_equal(history._positions(queries), history._positions(bulk)[: len(queries)])
    np.testing.assert_array_equal(index.rows(queries), index.rows(bulk)[: len(queries)])
    assert (history._positions(queries)[20:] == -1).all() and (index.rows(queries)[20:] == UNKNOWN_ROW).all()
    assert [history.users[p] for p in history._positions(queries[:20])] == list(queries[:20])
