"""BatchRanker: many users' top-k in blocks equals the fast path per user, without seen or non-live jobs."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from convfm.model.batch_ranking import OUTPUT_COLUMNS, BatchRanker
from convfm.store.registry import resolve
from tests.serve.test_event_overlay import board  # noqa: F401 - the fixture: a market logged as events, 2 models

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def batch(tiny):
    """Ranked at the newest posting: the synthetic market's jobs have all expired by now."""
    now = BatchRanker.load(resolve(tiny.entry))
    assert not now.live.any()
    return BatchRanker.load(resolve(tiny.entry), at=int(now.ranker.recency.posted.max()))


def test_top_k_per_user_equals_the_fast_path_without_seen_or_expired_jobs(batch):
    extractor, ranker = batch.extractor, batch.ranker
    users = extractor.user_ids[1:41]
    out = batch.recommend(users, k=7)
    assert 50 < batch.live.sum() < len(batch.live) - 1
    assert np.array_equal(batch.ranker._view.rows, np.flatnonzero(batch.live))  # the live jobs alone scanned
    assert list(out.columns) == list(OUTPUT_COLUMNS) and set(out["source"]) == {"model"}
    assert (out.groupby("user_id").size() == 7).all() and out["user_id"].nunique() == 40
    assert set(out["model_version"]) == {"v0001"} and set(out["catalog_version"]) == {0}
    for user, rows in list(out.groupby("user_id", sort=False))[:5]:
        static = extractor.user_catalog.take([extractor.user_rows[user]])
        logits = ranker.score_all(extractor.user_side(static, np.array([user]), times=np.array([batch.at])))[0]
        seen = batch.seen.get(user, np.zeros(0, np.int64))
        expected, values = ranker.top_k(static, 7, seen, batch.live, scores=logits)
        assert rows["job_id"].tolist() == [extractor.job_ids[r] for r in expected]
        np.testing.assert_allclose(rows["score"], torch.sigmoid(torch.as_tensor(values)).numpy(), rtol=1e-5)
        assert rows["rank"].tolist() == list(range(1, 8))
    seen_pairs = {(u, extractor.job_ids[r]) for u in users for r in batch.seen.get(u, [])}
    assert not seen_pairs & set(zip(out["user_id"], out["job_id"]))
    live_ids = {extractor.job_ids[r] for r in np.flatnonzero(batch.live)}
    assert set(out["job_id"]) <= live_ids


def test_a_past_time_leaves_out_jobs_posted_after_it(tiny, batch):
    recency = batch.ranker.recency
    assert recency is not None, "the test market has posting times"
    posted = recency.posted[1:]
    middle = int(np.median(posted))
    past = BatchRanker.load(resolve(tiny.entry), at=middle)
    later = {batch.extractor.job_ids[r] for r in np.flatnonzero(recency.posted > middle)}
    assert later and not past.live[np.flatnonzero(recency.posted > middle)].any()
    out = past.recommend(batch.extractor.user_ids[1:21], k=10, exclude_seen=False)
    assert len(out) and not set(out["job_id"]) & later


def test_unknown_users_get_popular_jobs_and_seen_jobs_stay_with_include_seen(batch):
    out = batch.recommend(["nobody-1", "nobody-2"], k=5)
    assert set(out["source"]) == {"popular"} and (out.groupby("user_id").size() == 5).all()
    assert out[out.user_id == "nobody-1"]["job_id"].tolist() == out[out.user_id == "nobody-2"]["job_id"].tolist()
    user = next(u for u in batch.extractor.user_ids[1:] if len(batch.seen.get(u, ())))
    kept = batch.recommend([user], k=batch.ranker.n_jobs, exclude_seen=False)
    assert {batch.extractor.job_ids[r] for r in batch.seen[user] if batch.live[r]} <= set(kept["job_id"])
    assert batch.recommend([], k=5).empty


def test_an_unknown_user_with_logged_events_gets_popular_jobs_without_them(tiny, batch):
    fresh = BatchRanker.load(resolve(tiny.entry), at=batch.at)
    first = fresh.recommend(["nobody"], k=3)["job_id"].tolist()
    viewed = pd.DataFrame({"user_id": ["viewer"], "job_id": [first[0]], "timestamp": [batch.at - 1]})
    assert fresh.add_seen(viewed) == 1  # a view: seen, no positive, so no history to rank it by
    out = fresh.recommend(["viewer", "nobody"], k=3)
    assert set(out["source"]) == {"popular"}
    viewer = out[out.user_id == "viewer"]["job_id"].tolist()
    assert viewer[:2] == first[1:] and first[0] not in viewer and len(viewer) == 3  # the next popular one after
    assert out[out.user_id == "nobody"]["job_id"].tolist() == first
    kept = fresh.recommend(["viewer"], k=3, exclude_seen=False)["job_id"].tolist()
    assert kept == first


def test_logged_events_before_the_run_time_count_as_seen(tiny, batch):
    fresh = BatchRanker.load(resolve(tiny.entry), at=batch.at)
    user = fresh.extractor.user_ids[5]
    first = fresh.recommend([user], k=3)["job_id"].tolist()
    later = pd.DataFrame({"user_id": [user], "job_id": [first[1]], "timestamp": [batch.at + 1]})
    assert fresh.add_seen(later) == 0 and fresh.recommend([user], k=3)["job_id"].tolist() == first
    logged = pd.DataFrame({"user_id": [user, user], "job_id": [first[0], "not-a-job"], "timestamp": [batch.at - 1] * 2})
    assert fresh.add_seen(logged) == 1
    now = fresh.recommend([user], k=3)["job_id"].tolist()
    assert first[0] not in now and now[:2] == first[1:]


def test_the_event_log_is_read_after_what_the_models_seen_pairs_hold(board, monkeypatch):
    import convfm.model.batch_ranking as batch_ranking

    read, real = [], batch_ranking.interactions_frame
    monkeypatch.setattr(batch_ranking, "interactions_frame", lambda log, names: read.append(names) or real(log, names))
    marked, plain = (BatchRanker.load(resolve(board.entry, v), at=int(pd.Timestamp.now("UTC").value // 1000))
                     for v in ("v0002", "v0001"))
    assert marked.add_logged(board.log) == len(board.later) < plain.add_logged(board.log)
    assert read == [board.names[board.trained:], board.names]  # the later segments; all for a model without a mark
    for user, job in board.later:  # the same seen jobs either way: the model's own, then the log's
        assert marked.extractor.job_rows[job] in marked.seen[user]
        ids = [{model.extractor.job_ids[r] for r in model.seen[user]} for model in (marked, plain)]
        assert ids[0] == ids[1]


def test_users_the_user_catalog_lacks_are_ranked_from_their_stored_history(board):
    ranker = BatchRanker.load(resolve(board.entry, "v0003"), at=board.after)  # split by global time: held out
    user, applied = next(iter(board.newcomers.items()))
    assert user not in ranker.extractor.user_rows
    out = ranker.recommend([user, "nobody"], k=100)
    ranked = out[out.user_id == user]
    assert set(ranked["source"]) == {"model"} and not set(ranked["job_id"]) & set(applied)
    assert set(out[out.user_id == "nobody"]["source"]) <= {"popular"}


def test_with_a_retrieval_index_the_rows_are_the_exact_ones(tiny, batch):
    """``retrieval_candidates`` 30 (of 300 jobs): the same rows as the full scan, seen and non-live jobs left out
    before the candidate scan; unknown users keep the popular jobs."""
    retrieval = BatchRanker.load(resolve(tiny.entry), at=batch.at, retrieval_candidates=30)
    assert batch.index is None and len(retrieval.index) == batch.ranker.n_jobs
    users = batch.extractor.user_ids[1:21] + ["stranger"]
    for exclude_seen in (True, False):
        want, got = batch.recommend(users, 10, exclude_seen), retrieval.recommend(users, 10, exclude_seen)
        pd.testing.assert_frame_equal(got.drop(columns="score"), want.drop(columns="score"))
        np.testing.assert_allclose(got["score"], want["score"], rtol=1e-5)


def test_the_ray_data_actor_and_the_cli_pass_retrieval_candidates_on(tiny, batch, capsys):
    """No Ray: the actor class called as Ray Data would, and ``--retrieval-candidates`` refused before any work."""
    from batch.recommend import Recommender
    from convfm.cli.main import main

    users = pd.DataFrame({"user_id": batch.extractor.user_ids[1:6]})
    actor = Recommender(str(tiny.entry), batch.at, 5, True, None, retrieval_candidates=25)
    assert actor.ranker.retrieval_candidates == 25 and actor.ranker.index is not None
    pd.testing.assert_frame_equal(actor(users).drop(columns="score"),
                                  batch.recommend(users["user_id"].tolist(), 5).drop(columns="score"))
    for bad in ("-1", "1000001"):
        assert main(["recommend-batch", "--model", str(tiny.entry), "--users", "none.parquet", "--out", "nowhere",
                     "--retrieval-candidates", bad]) == 2
        assert f"--retrieval-candidates: must be in [0, 1000000], got {bad}" in capsys.readouterr().err
