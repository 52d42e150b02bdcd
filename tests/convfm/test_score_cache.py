"""ScoreCache: a user's kept catalog scan equals a fresh scan after time moves and the catalog grows, and only the
rows the ranker's change log names are rescored; budget, eviction and the change log's horizon."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from convfm.data.liveness import MICROS_PER_DAY, NEVER
from convfm.model import ranking
from convfm.model.ranking import CatalogRanker
from convfm.model.score_cache import ScoreCache, user_key

pytestmark = pytest.mark.timeout(120)
T0 = int(pd.Timestamp("2024-04-01").value // 1000)


def users_of(extractor, rows):
    rows = np.asarray(rows)
    return extractor.user_side(extractor.user_catalog.take(rows), np.array(extractor.user_ids)[rows])


def new_jobs(ids: list[str]) -> pd.DataFrame:
    return pd.DataFrame({"job_id": ids, "title": ["Data Engineer"] * len(ids), "description": ["sql"] * len(ids),
                         "skills": ["python;sql"] * len(ids), "location": ["Berlin"] * len(ids),
                         "company": ["North Labs"] * len(ids), "salary_min": [4e4] * len(ids),
                         "salary_max": [7e4] * len(ids), "job_type": ["full_time"] * len(ids),
                         "experience_level": ["senior"] * len(ids)})


def test_kept_scans_stay_exact_as_time_moves_and_the_catalog_grows(served):
    model, extractor = served
    ranker = CatalogRanker(model, extractor, time=T0)
    cache = ScoreCache(ranker, 1 << 20)
    users = users_of(extractor, [1, 2, 3])
    first = cache.scores(users)
    torch.testing.assert_close(first, ranker.score_all(users), atol=0, rtol=0)
    assert cache.info() == {"entries": 3, "budget_mib": 1, "hits": 0, "misses": 3, "rescored_rows": 0}
    torch.testing.assert_close(cache.scores(users), first, atol=0, rtol=0)  # nothing changed: kept as they are
    assert cache.stats["hits"] == 3 and cache.stats["rescored_rows"] == 0

    ranker.at(T0 + 3 * MICROS_PER_DAY)  # some jobs cross a day bucket: their sides, and scores, change
    moved = ranker.changed_since(0)
    assert 0 < len(moved) < ranker.n_jobs
    later = cache.scores(users)
    # to float32 rounding: a pass over a few rows and one over the catalog may take different matmul kernels
    torch.testing.assert_close(later, ranker.score_all(users), atol=1e-6, rtol=0)
    assert (later != first).any()
    assert cache.stats["rescored_rows"] == 3 * len(moved)  # those rows alone were scored again

    grown = extractor.put_jobs(new_jobs(["new-1", "new-2"]), np.full(2, T0, np.int64), np.full(2, NEVER, np.int64))
    ranker.put_jobs(grown)
    after = cache.scores(users)
    assert after.shape == (3, ranker.n_jobs)
    fresh = CatalogRanker(model, extractor, time=ranker.time)
    torch.testing.assert_close(after, fresh.score_all(users), atol=1e-6, rtol=0)  # as a ranker built from scratch
    assert cache.stats["hits"] == 9 and cache.stats["misses"] == 3


def test_a_user_with_other_inputs_is_another_entry(served):
    model, extractor = served
    ranker = CatalogRanker(model, extractor, time=T0)
    cache = ScoreCache(ranker, 1 << 20)
    user = users_of(extractor, [1])
    other = users_of(extractor, [1])
    other.multi[0, 0, 0] = other.multi[0, 0, 0] + 1  # one history or skill entry differs
    assert user_key(user, 0) != user_key(other, 0)
    cache.scores(user)
    torch.testing.assert_close(cache.scores(other), ranker.score_all(other), atol=0, rtol=0)
    assert cache.stats == {"hits": 0, "misses": 2, "rescored_rows": 0}


def test_budget_evicts_the_least_recently_used_and_zero_keeps_nothing(served):
    model, extractor = served
    ranker = CatalogRanker(model, extractor, time=T0)
    cache = ScoreCache(ranker, 2 * 4 * ranker.n_jobs)  # room for two users
    a, b, c = (users_of(extractor, [i]) for i in (1, 2, 3))
    for user in (a, b, a, c):  # a used again, so b is the oldest when c arrives
        cache.scores(user)
    assert len(cache) == 2
    cache.scores(a)
    cache.scores(b)
    assert cache.stats["hits"] == 2 and cache.stats["misses"] == 4
    off = ScoreCache(ranker, 0)
    torch.testing.assert_close(off.scores(a), ranker.score_all(a), atol=0, rtol=0)
    off.scores(a)
    assert len(off) == 0 and off.stats["misses"] == 2
    with pytest.raises(ValueError, match="budget_bytes must be >= 0"):
        ScoreCache(ranker, -1)


def test_an_entry_older_than_the_change_log_is_scanned_anew(served, monkeypatch):
    monkeypatch.setattr(ranking, "CHANGES_KEPT", 2)
    model, extractor = served
    ranker = CatalogRanker(model, extractor, time=T0)
    cache = ScoreCache(ranker, 1 << 20)
    user = users_of(extractor, [1])
    cache.scores(user)
    ranker.at(T0 + 200 * MICROS_PER_DAY)  # a real move first, so the scores differ
    for rows in ([1], [2]):  # two more (logged as changes; the sides stay): the first falls out of a log of two
        ranker._changed(np.array(rows))
    assert ranker.version == 3 and ranker.changed_since(0) is None and ranker.changed_since(1).tolist() == [1, 2]
    torch.testing.assert_close(cache.scores(user), ranker.score_all(user), atol=0, rtol=0)
    assert cache.stats == {"hits": 0, "misses": 2, "rescored_rows": 0}


def test_the_change_log_holds_no_more_rows_than_the_catalog(served):
    """Past a catalog's worth of rows a fresh scan costs less than replaying them: older changes are dropped (and
    a kept scan that would rescore over a quarter of the catalog is scanned anew)."""
    model, extractor = served
    ranker = CatalogRanker(model, extractor, time=T0)
    everything = np.arange(ranker.n_jobs)
    ranker._changed(everything[:5])
    ranker._changed(everything)
    assert ranker.changed_since(0) is None and len(ranker.changed_since(1)) == ranker.n_jobs
    cache = ScoreCache(ranker, 1 << 20)
    user = users_of(extractor, [1])
    cache.scores(user)
    ranker._changed(everything[: ranker.n_jobs // 2])
    cache.scores(user)
    assert cache.stats == {"hits": 0, "misses": 2, "rescored_rows": 0}


def test_a_scan_of_the_open_rows_is_kept_rescored_where_it_changed_and_widened_when_asked(served):
    """With ``rows`` (the jobs open now) a miss scans those alone (NaN elsewhere); a later change is rescored only
    where it touches them, and a request for the whole catalog (``include_expired``) scans it anew."""
    model, extractor = served
    ranker = CatalogRanker(model, extractor, time=T0)
    cache = ScoreCache(ranker, 1 << 20)
    users = users_of(extractor, [1, 2])
    rows = np.arange(1, ranker.n_jobs, 2)
    first = cache.scores(users, rows)
    torch.testing.assert_close(first[:, rows], ranker.score_all(users)[:, rows], atol=1e-6, rtol=0)
    closed = np.setdiff1d(np.arange(ranker.n_jobs), rows)
    assert torch.isnan(first[:, closed]).all()
    torch.testing.assert_close(cache.scores(users, rows), first, atol=0, rtol=0, equal_nan=True)
    assert cache.stats == {"hits": 2, "misses": 2, "rescored_rows": 0}

    ranker.at(T0 + 3 * MICROS_PER_DAY)
    moved = ranker.changed_since(0)
    assert 0 < len(np.intersect1d(moved, rows)) < len(moved)
    later = cache.scores(users, rows)
    torch.testing.assert_close(later[:, rows], ranker.score_all(users)[:, rows], atol=1e-6, rtol=0)
    assert cache.stats["rescored_rows"] == 2 * len(np.intersect1d(moved, rows))  # not the closed rows moved

    everything = cache.scores(users)  # over a quarter of the catalog never scored: scanned anew
    torch.testing.assert_close(everything, ranker.score_all(users), atol=1e-6, rtol=0)
    assert cache.stats["misses"] == 4
    off = ScoreCache(ranker, 0)
    torch.testing.assert_close(off.scores(users, rows)[:, rows], everything[:, rows], atol=1e-6, rtol=0)
