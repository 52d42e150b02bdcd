"""BatchRanker over the live catalog (no Ray): a job upserted through ``CatalogStore.append`` is ranked as the
model scores it, a replaced job keeps its row, an expired one leaves, one posted after the run's time stays out,
the version applied is the one pinned, and the retrieval index and the popularity fallback hold the new jobs."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from convfm.model.batch_ranking import BatchRanker
from convfm.store.live_catalog import CONTENT_FIELDS, CatalogStore
from convfm.store.registry import resolve

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def at(tiny) -> int:
    """The newest posting time: the synthetic market's jobs have all expired by now."""
    return int(BatchRanker.load(resolve(tiny.entry)).ranker.recency.posted.max())


@pytest.fixture(scope="module")
def plain(tiny, at) -> BatchRanker:
    return BatchRanker.load(resolve(tiny.entry), at=at)


def copy_of(tiny, job_id: str, new_id: str, posted_at: int, expires_at: int | None = None) -> dict:
    """A live-catalog record with the content of the market's job ``job_id`` under ``new_id``."""
    jobs = pd.read_csv(tiny.market / "jobs.csv").set_index("job_id")
    row = jobs.loc[job_id]
    fields = {f: (str(row[f]).split(";") if f == "skills" else (None if pd.isna(row[f]) else row[f]))
              for f in CONTENT_FIELDS}
    return {"job_id": new_id, **fields, "posted_at": posted_at, "expires_at": expires_at}


def top_user_and_job(plain: BatchRanker) -> tuple[str, str]:
    user = plain.extractor.user_ids[7]
    return user, plain.recommend([user], k=1)["job_id"].iloc[0]


def test_a_new_job_is_ranked_as_the_model_scores_it_and_the_version_is_recorded(tiny, plain, at, tmp_path):
    user, best = top_user_and_job(plain)
    store = CatalogStore(tmp_path / "live")
    store.append([copy_of(tiny, best, "live-copy", posted_at=at - 10)], now=at - 10)
    batch = BatchRanker.load(resolve(tiny.entry), at=at, catalog=store)
    assert batch.catalog_version == 1 and batch.ranker.n_jobs == plain.ranker.n_jobs + 1
    out = batch.recommend([user], k=5)
    assert "live-copy" in out["job_id"].tolist() and set(out["catalog_version"]) == {1}
    row = batch.extractor.job_rows["live-copy"]
    static = batch.extractor.user_catalog.take([batch.extractor.user_rows[user]])
    users = batch.extractor.user_side(static, np.array([user]), times=np.array([at]))
    exact = torch.sigmoid(batch.ranker.full_scores(users, np.array([row])))[0, 0].item()  # the model's forward
    assert out.set_index("job_id").loc["live-copy", "score"] == pytest.approx(exact, rel=1e-4)
    assert set(plain.recommend([user], k=5)["catalog_version"]) == {0}


def test_an_upsert_replaces_its_row_and_an_expiry_up_to_the_run_time_removes_the_job(tiny, plain, at, tmp_path):
    user, best = top_user_and_job(plain)
    other = plain.recommend([user], k=2)["job_id"].iloc[1]
    store = CatalogStore(tmp_path / "live")
    store.append([copy_of(tiny, other, best, posted_at=at - 10)], now=at - 10)  # best takes other's content
    replaced = BatchRanker.load(resolve(tiny.entry), at=at, catalog=store)
    assert replaced.ranker.n_jobs == plain.ranker.n_jobs and list(replaced.job_ids) == list(plain.job_ids)
    scores = {v.job_id: v.score for v in replaced.recommend([user], k=plain.ranker.n_jobs).itertuples()}
    assert scores[best] != pytest.approx(plain.recommend([user], k=1)["score"].iloc[0], rel=1e-3)
    store.append(expire=[best], now=at + 1)  # expires after the run's time: still live at it
    assert best in set(BatchRanker.load(resolve(tiny.entry), at=at, catalog=store).recommend(
        [user], k=plain.ranker.n_jobs)["job_id"])
    store.append(expire=[best], now=at)  # expired at the run's time
    gone = BatchRanker.load(resolve(tiny.entry), at=at, catalog=store)
    assert gone.catalog_version == 3 and not gone.live[gone.extractor.job_rows[best]]
    assert best not in gone.recommend([user], k=plain.ranker.n_jobs)["job_id"].tolist()
    assert best not in gone.recommend(["nobody"], k=plain.ranker.n_jobs)["job_id"].tolist()
    pinned = BatchRanker.load(resolve(tiny.entry), at=at, catalog=store, catalog_version=2)
    assert pinned.catalog_version == 2 and best in set(pinned.recommend([user], k=plain.ranker.n_jobs)["job_id"])


def test_a_job_posted_after_the_run_time_stays_out(tiny, plain, at, tmp_path):
    user, best = top_user_and_job(plain)
    store = CatalogStore(tmp_path / "live")
    store.append([copy_of(tiny, best, "later", posted_at=at + 1), copy_of(tiny, best, "sooner", posted_at=at)],
                 now=at)
    batch = BatchRanker.load(resolve(tiny.entry), at=at, catalog=store)
    everything = batch.recommend([user, "nobody"], k=batch.ranker.n_jobs, exclude_seen=False)
    assert "later" not in set(everything["job_id"]) and "sooner" in set(everything["job_id"])
    batch.ranker.recency = None  # as for a model without posting times: the live catalog's own times still count
    live = batch._live_rows()
    assert not live[batch.extractor.job_rows["later"]] and live[batch.extractor.job_rows["sooner"]]
    assert "later" in set(BatchRanker.load(resolve(tiny.entry), at=at + 1, catalog=store).recommend(
        [user], k=batch.ranker.n_jobs)["job_id"])


def test_new_jobs_are_in_the_retrieval_index_and_last_in_the_popularity_fallback(tiny, plain, at, tmp_path):
    user, best = top_user_and_job(plain)
    store = CatalogStore(tmp_path / "live")
    store.append([copy_of(tiny, best, "live-copy", posted_at=at - 10)], now=at - 10)
    exact = BatchRanker.load(resolve(tiny.entry), at=at, catalog=store)
    retrieval = BatchRanker.load(resolve(tiny.entry), at=at, retrieval_candidates=30, catalog=store)
    assert len(retrieval.index) == exact.ranker.n_jobs == plain.ranker.n_jobs + 1
    users = [user, *plain.extractor.user_ids[1:11], "stranger"]
    want, got = exact.recommend(users, 10), retrieval.recommend(users, 10)
    assert "live-copy" in want[want.user_id == user]["job_id"].tolist()
    pd.testing.assert_frame_equal(got.drop(columns=["score", "job_id"]), want.drop(columns=["score", "job_id"]))
    np.testing.assert_allclose(got["score"], want["score"], atol=1e-6)
    # a job in its place, or one of equal score: the copy and its job differ by float rounding alone (7e-9)
    scores = dict(zip(zip(want.user_id, want.job_id), want.score))
    swapped = (got["job_id"] != want["job_id"]).to_numpy()
    np.testing.assert_allclose([scores[key] for key in zip(got.user_id[swapped], got.job_id[swapped])],
                               want["score"][swapped], atol=1e-6)
    popular = exact.recommend(["stranger"], k=exact.ranker.n_jobs)
    assert popular.set_index("job_id").loc["live-copy", "score"] == 0.0  # not the fitted prior of unknown ids


def test_the_ray_data_actor_applies_the_pinned_version(tiny, plain, at, tmp_path):
    """No Ray: the actor class called as Ray Data would, with the live store and version the driver pinned."""
    from batch.recommend import Recommender

    user, best = top_user_and_job(plain)
    store = CatalogStore(tmp_path / "live")
    store.append(expire=[best], now=at - 1)
    store.append([copy_of(tiny, best, best, posted_at=at - 10)], now=at - 1)  # re-opened by version 2
    users = pd.DataFrame({"user_id": [user]})
    first = Recommender(str(tiny.entry), at, 3, True, None, live_store=str(tmp_path / "live"), catalog_version=1)
    second = Recommender(str(tiny.entry), at, 3, True, None, live_store=str(tmp_path / "live"), catalog_version=2)
    out_first, out_second = first(users), second(users)
    assert set(out_first["catalog_version"]) == {1} and best not in out_first["job_id"].tolist()
    assert set(out_second["catalog_version"]) == {2} and out_second["job_id"].iloc[0] == best
