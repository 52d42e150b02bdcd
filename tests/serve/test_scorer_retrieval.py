"""Scorer with a retrieval index (``ServeConfig.retrieval_candidates``), no Ray: on the tiny model it answers as
the exact full scan does (30 candidates of 300 jobs), with filters that leave few jobs, seen jobs left out, and
after the live catalog posts new jobs and expires old ones."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from convfm.features.context import now_micros
from convfm.store.live_catalog import CONTENT_FIELDS, Delta
from serve.live_catalog import apply_deltas
from serve.schemas import RecommendRequest
from serve.scorer import Scorer

pytestmark = pytest.mark.timeout(120)
CANDIDATES = 30  # of 300 jobs: a tenth, so the index has to find the top-10


def scorers(tiny) -> tuple[Scorer, Scorer]:
    """(exact full scan, retrieve-then-rerank) over the same model, each with its own catalog."""
    return Scorer.load(tiny.entry / "v0001"), Scorer.load(tiny.entry / "v0001", retrieval_candidates=CANDIDATES)


@pytest.fixture(scope="module")
def pair(tiny) -> tuple[Scorer, Scorer]:
    return scorers(tiny)


def requests_of(tiny, **fields) -> list[RecommendRequest]:
    """Eight users of the training data, a cold-start profile and an id the model never saw with a history."""
    users = list(tiny.data.frames["train"]["user_id"].value_counts().index[:8])
    history = list(tiny.data.extractor.job_ids[1:4])
    bodies = [{"user_id": u} for u in users] + [{"profile": {"skills": ["python", "sql"], "location": "remote"}},
                                                {"user_id": "newcomer", "history": history}]
    return [RecommendRequest.model_validate({"k": 10, **body, **fields}) for body in bodies]


def assert_same_answers(exact: Scorer, retrieval: Scorer, requests: list[RecommendRequest]) -> list[list[str]]:
    """Both scorers give the same job ids, in order, with the same scores -> the job ids per request. Two jobs
    whose scores differ by float rounding alone (a posted copy of a job: 7e-9 apart) may come in either order: the
    full scan and the rerank round differently."""
    out = []
    for request, want, got in zip(requests, exact.recommend_many(requests), retrieval.recommend_many(requests)):
        assert sorted(i["job_id"] for i in got["items"]) == sorted(i["job_id"] for i in want["items"]), request
        assert [i["score"] for i in got["items"]] == pytest.approx([i["score"] for i in want["items"]], abs=1e-6)
        scores = {i["job_id"]: i["score"] for i in want["items"]}
        for g, w in zip(got["items"], want["items"]):  # each job at its place, or one of equal score
            assert g["job_id"] == w["job_id"] or scores[g["job_id"]] == pytest.approx(w["score"], abs=1e-6), request
        out.append([i["job_id"] for i in got["items"]])
    return out


def test_the_index_is_built_at_load_and_serves_the_exact_top_k(tiny, pair):
    exact, retrieval = pair
    assert exact.index is None and len(retrieval.index) == retrieval.n_jobs == 301
    answers = assert_same_answers(exact, retrieval, requests_of(tiny))
    assert all(len(ids) == 10 for ids in answers)


def test_filters_that_leave_few_jobs_still_give_k_valid_results(tiny, pair):
    """A location filter that keeps a few dozen jobs, most of them outside the unfiltered candidates: the mask
    applies before the candidate scan, so k of the jobs that pass come back, the exact ones."""
    exact, retrieval = pair
    locations = [v for v in exact.filter_values["location"] if v]
    location = max(set(locations), key=locations.count)
    passing = {exact.extractor.job_ids[r] for r in np.flatnonzero(exact.filter_values["location"] == location)}
    assert 20 <= len(passing) <= 150, len(passing)
    every = {"exclude_seen": False}  # jobs seen would leave fewer than k for the heaviest users, and jobs closed
    kept = {"include_expired": True}  # at the data's end (the 2024 market is read then: ModelJobs.time) too
    answers = assert_same_answers(exact, retrieval, requests_of(tiny, k=20, filters={"location": location, **kept},
                                                                **every))
    unfiltered = [[i["job_id"] for i in r["items"]]
                  for r in exact.recommend_many(requests_of(tiny, k=CANDIDATES, filters=kept, **every))]
    for ids, before in zip(answers, unfiltered):
        assert len(ids) == 20 and set(ids) <= passing
    assert any(len(set(ids) - set(before)) > 10 for ids, before in zip(answers, unfiltered))  # filled from outside
    requests = requests_of(tiny, k=20, filters={"location": location, **kept})
    answers = assert_same_answers(exact, retrieval, requests)
    seen = {exact.extractor.job_ids[r] for r in exact.seen[requests[0].user_id]}
    assert seen & passing and answers[0] and not set(answers[0]) & seen  # exclude_seen holds with the index too


def test_posted_and_expired_jobs_through_the_live_catalog(tiny):
    """Jobs posted through a delta are indexed and compete (copies of a user's best jobs come back); jobs expired
    are left out; with ``include_expired`` they come back; the answers stay the exact ones throughout."""
    exact, retrieval = scorers(tiny)  # changed in place: their own
    requests = requests_of(tiny)
    best = assert_same_answers(exact, retrieval, requests)[0]
    frame = pd.read_csv(tiny.market / "jobs.csv").set_index("job_id")
    now = now_micros()
    copies = tuple({"job_id": f"copy-{j}", **_content(frame.loc[j]), "posted_at": now, "expires_at": None}
                   for j in best[:3])
    for scorer in (exact, retrieval):
        apply_deltas(scorer, [Delta(1, now, upsert=copies, expire={j: now - 1 for j in best[3:6]})])
    assert len(retrieval.index) == retrieval.n_jobs == 304
    answers = assert_same_answers(exact, retrieval, requests)
    assert {c["job_id"] for c in copies} & set(answers[0]) and not set(best[3:6]) & set(answers[0])
    with_expired = requests_of(tiny, filters={"include_expired": True})
    assert set(best[3:6]) & set(assert_same_answers(exact, retrieval, with_expired)[0])


def _content(job: pd.Series) -> dict:
    """A jobs.csv row as a posting's content fields (skills a list, missing values None)."""
    def plain(field: str):
        value = job[field]
        if field == "skills":
            return [s for s in str(value).split(";") if s] if isinstance(value, str) else []
        return None if not isinstance(value, str) and np.isnan(value) else value

    return {f: plain(f) for f in CONTENT_FIELDS}
