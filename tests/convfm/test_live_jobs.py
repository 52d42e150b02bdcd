"""LiveJobs folds a run of live-catalog deltas into one put: the catalog, its times and the model's scores end
exactly as applying the deltas one at a time leaves them, whatever the deltas hold (jobs upserted again, with
and without times, closed and reopened, expired before and after their upsert, ids it does not hold)."""
from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import torch

from convfm.data.liveness import MICROS_PER_DAY as DAY
from convfm.model.ranking import CatalogRanker
from convfm.store import live_jobs
from convfm.store.live_catalog import Delta
from convfm.store.live_jobs import LiveJobs, delta_runs

pytestmark = pytest.mark.timeout(120)
TITLES, SKILLS = ["data engineer", "nurse", "driver", ""], ["python", "sql", "care", "logistics", "excel"]


def random_deltas(rng: np.random.Generator, model_ids: list[str], start: int, count: int) -> list[Delta]:
    """``count`` deltas an hour apart over model jobs and new ones, times drawn from a few values so that an
    upsert often repeats the posting a job has."""
    pool = model_ids + [f"new-{i}" for i in range(12)]
    deltas = []
    for version in range(1, count + 1):
        now = start + version * DAY // 24
        times = [None, None, start - 5 * DAY, start, now - 2 * DAY, now + DAY // 2]
        upsert = []
        for job_id in rng.choice(pool, size=rng.integers(0, 5)):
            expires = [None, None, now + 3 * DAY, now - DAY][rng.integers(4)]
            upsert.append({"job_id": str(job_id), "title": TITLES[rng.integers(len(TITLES))],
                           "skills": list(rng.choice(SKILLS, size=rng.integers(0, 3), replace=False)),
                           "location": ["Berlin", None][rng.integers(2)], "company": f"c{rng.integers(3)}",
                           "salary_min": [None, 40000.0][rng.integers(2)],
                           "posted_at": times[rng.integers(len(times))], "expires_at": expires})
        if rng.random() < 0.1:
            upsert.append({"job_id": "  "})  # blank: left out
        expire = {str(j): now - int(rng.integers(0, 2)) * DAY for j in rng.choice(pool + ["unheld"],
                                                                                size=rng.integers(0, 3))}
        deltas.append(Delta(version, now, tuple(upsert), expire))
    return deltas


def applied(tiny, deltas: list[list[Delta]], at: int) -> tuple[LiveJobs, object, CatalogRanker]:
    """A copy of the tiny model's catalog after ``deltas``, each inner list given to one ``apply``."""
    extractor = copy.deepcopy(tiny.data.extractor)
    ranker = CatalogRanker(tiny.model, extractor, time=at)
    live = LiveJobs.of_model(ranker.n_jobs, tiny.data.config.to_dict())
    for run in deltas:
        live.apply(run, extractor, ranker.put_jobs)
    return live, extractor, ranker


@pytest.mark.parametrize("seed,fold", [(0, 10_000), (1, 10_000), (2, 4)])
def test_a_folded_run_of_deltas_leaves_what_applying_them_one_by_one_does(tiny, monkeypatch, seed, fold):
    monkeypatch.setattr(live_jobs, "FOLDED_UPSERTS", fold)  # 4: many runs, a job upserted across several
    extractor = tiny.data.extractor
    at = int(extractor.recency_encoder.posted.max())
    deltas = random_deltas(np.random.default_rng(seed), list(extractor.job_ids[1:16]), at - 3 * DAY, 60)
    one_by_one = applied(tiny, [[d] for d in deltas], at)
    folded = applied(tiny, [deltas], at)
    (live_a, jobs_a, ranker_a), (live_b, jobs_b, ranker_b) = one_by_one, folded
    assert jobs_a.job_ids == jobs_b.job_ids and len(jobs_a.job_ids) > len(extractor.job_ids)
    for name, array in jobs_a.job_catalog.arrays().items():
        np.testing.assert_array_equal(array, jobs_b.job_catalog.arrays()[name], err_msg=name)
    for name in ("posted", "expires"):
        np.testing.assert_array_equal(getattr(live_a, name), getattr(live_b, name), err_msg=name)
        np.testing.assert_array_equal(getattr(jobs_a.recency_encoder, name), getattr(jobs_b.recency_encoder, name))
    assert live_a.version == live_b.version == 60 and live_a.last_posted == live_b.last_posted
    for when in (at, at + 2 * DAY):
        np.testing.assert_array_equal(live_a.open_at(None, when), live_b.open_at(None, when))
    users = extractor.user_side(extractor.user_catalog.take(np.arange(1, 6)), np.array(extractor.user_ids[1:6]))
    torch.testing.assert_close(ranker_a.score_all(users), ranker_b.score_all(users), atol=1e-6, rtol=0)


def test_an_expire_then_an_upsert_without_times_in_one_run_keeps_the_job_closed(tiny):
    """A daily re-sync of a board's file after an ``expire``: the job stays closed, folded or not."""
    extractor = tiny.data.extractor
    at = int(extractor.recency_encoder.posted.max())
    job = extractor.job_ids[3]
    deltas = [Delta(1, at, (), {job: at}), Delta(2, at + 1, ({"job_id": job, "title": "resync"},))]
    for runs in ([[d] for d in deltas], [deltas]):
        live, jobs, _ = applied(tiny, runs, at)
        row = jobs.job_rows[job]
        assert live.expires[row] <= at and not live.open_at(None, at + DAY)[row]
        assert jobs.recency_encoder.posted[row] == tiny.data.extractor.recency_encoder.posted[row]


def test_runs_hold_at_most_the_folded_upserts_or_one_delta():
    deltas = [Delta(v, 0, tuple({"job_id": str(i)} for i in range(n))) for v, n in enumerate([3, 2, 9, 0, 1], 1)]
    assert [[d.version for d in run] for run in delta_runs(deltas, 5)] == [[1, 2], [3], [4, 5]]
    assert delta_runs([], 5) == []


def test_a_job_posted_ahead_opens_at_its_posting_when_nothing_expires(tiny):
    extractor = copy.deepcopy(tiny.data.extractor)
    at = int(extractor.recency_encoder.posted.max())
    ranker = CatalogRanker(tiny.model, extractor, time=at)
    live = LiveJobs(ranker.n_jobs, lifetime_days=None)
    early = {"job_id": "early", "title": "nurse", "posted_at": at - DAY}
    ahead = {"job_id": "ahead", "title": "driver", "posted_at": at + DAY}
    live.apply([Delta(1, at, (ahead,)), Delta(2, at, (early,))], extractor, ranker.put_jobs)
    row = extractor.job_rows["ahead"]
    assert live.last_posted == at + DAY and (live.expires == live_jobs.NEVER).all()
    assert not live.open_at(None, at)[row] and live.open_at(None, at)[extractor.job_rows["early"]]
    assert live.open_at(None, at + DAY) is None  # every row open: no second pass over them


@pytest.mark.parametrize("seed", [0, 1])
def test_training_folds_the_deltas_into_the_table_that_reading_them_one_by_one_builds(tiny, seed):
    """``jobs_after`` (training on the event log) folds its deltas too: the same table, row order included."""
    from convfm.store.live_catalog import jobs_after

    jobs = pd.read_csv(tiny.market / "jobs.csv", parse_dates=["posted_at", "expires_at"])
    jobs.loc[::7, "expires_at"] = pd.NaT  # some without an expiry: the lifetime closes them when expired
    start = int(jobs["posted_at"].max().value // 1000)
    deltas = random_deltas(np.random.default_rng(seed), list(jobs["job_id"].iloc[:15]), start, 60)
    folded, counts = jobs_after(jobs, deltas, 30.0)
    one_by_one = jobs
    for delta in deltas:
        one_by_one, _ = jobs_after(one_by_one, [delta], 30.0)
    pd.testing.assert_frame_equal(folded, one_by_one, check_dtype=False)  # (a chain of concats makes objects)
    assert counts["added"] == len(folded) - len(jobs) > 0 and counts["replaced"] > 0 and counts["expired"] > 0
