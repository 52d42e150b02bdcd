"""RowView: scanning the jobs open now from a kept contiguous copy of their job sides gives the whole catalog's
scores at those rows, and the copy follows the ranker's changes (time moving, jobs replaced) exactly."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from convfm.data.liveness import MICROS_PER_DAY, NEVER
from convfm.model.open_rows import OPEN_SHARE_FOR_VIEW, rows_worth_a_view
from convfm.model.ranking import CatalogRanker

pytestmark = pytest.mark.timeout(120)
T0 = int(pd.Timestamp("2024-04-01").value // 1000)


def users_of(extractor, rows):
    rows = np.asarray(rows)
    return extractor.user_side(extractor.user_catalog.take(rows), np.array(extractor.user_ids)[rows])


def test_only_a_catalog_mostly_closed_is_worth_a_view():
    assert rows_worth_a_view(None) is None
    mask = np.zeros(100, dtype=bool)
    mask[: int(OPEN_SHARE_FOR_VIEW * 100) + 1] = True
    assert rows_worth_a_view(mask) is None  # most jobs open: the full scan copies nothing
    mask[::2] = False
    np.testing.assert_array_equal(rows_worth_a_view(mask), np.flatnonzero(mask))


@pytest.mark.parametrize("n_users", [1, 3])
def test_a_kept_view_scores_its_rows_as_the_whole_catalog_does(served, n_users):
    model, extractor = served
    ranker = CatalogRanker(model, extractor, time=T0)
    assert ranker._match_pairs  # the pair-match terms are part of what is compared
    users = users_of(extractor, np.arange(1, 1 + n_users))
    rows = np.arange(1, ranker.n_jobs, 3)
    whole = ranker.score_all(users)[:, rows]
    torch.testing.assert_close(ranker.score_all(users, rows, kept=True), whole, atol=1e-6, rtol=0)
    view = ranker._view
    torch.testing.assert_close(ranker.score_all(users, rows, kept=True), whole, atol=1e-6, rtol=0)
    assert ranker._view is view  # kept, not gathered again
    other = rows + 1  # other rows altogether: gathered anew
    torch.testing.assert_close(ranker.score_all(users, other, kept=True), ranker.score_all(users)[:, other],
                               atol=1e-6, rtol=0)
    assert ranker._view is not view and ranker._view.serves(other)


def test_jobs_opening_and_closing_keep_the_view_until_an_eighth_of_it_changed(served):
    """A job that opens is appended to the kept view (its pair-match terms from its lists), one that closes
    stays in it, scanned and left out of the answer; past an eighth of the rows asked for, it is gathered anew."""
    model, extractor = served
    ranker = CatalogRanker(model, extractor, time=T0)
    users = users_of(extractor, [1, 2])
    whole = ranker.score_all(users)
    rows = np.arange(1, 161)
    ranker.score_all(users, rows, kept=True)
    view = ranker._view
    for changed in (np.r_[rows[3:], 200, 201, 202], np.r_[rows[5:], 200, 201, 202, 210, 211], rows[10:]):
        torch.testing.assert_close(ranker.score_all(users, changed, kept=True), whole[:, changed], atol=1e-6,
                                   rtol=0)
        assert ranker._view is view  # 5 of 160 closed, 3 opened; then 5 more each: still the same view
    assert len(view.rows) == 165 and set(view.rows) == set(rows) | {200, 201, 202, 210, 211}
    assert view.match_index(ranker)[1].tolist() == [160, 161, 162, 163, 164]  # the appended rows
    fewer = rows[30:]  # 35 of 130 asked for are in the view and closed: over an eighth
    torch.testing.assert_close(ranker.score_all(users, fewer, kept=True), whole[:, fewer], atol=1e-6, rtol=0)
    assert ranker._view is not view and ranker._view.serves(fewer)


def test_the_view_follows_time_and_replaced_jobs(served):
    model, extractor = served
    ranker = CatalogRanker(model, extractor, time=T0)
    users = users_of(extractor, [1, 2])
    rows = np.arange(2, ranker.n_jobs, 2)
    ranker.score_all(users, rows, kept=True)
    view = ranker._view

    replaced = int(rows[3])  # the live catalog replaces one job of the view with other text and skills
    jobs = pd.DataFrame({"job_id": [extractor.job_ids[replaced]], "title": ["Welder"], "description": ["steel"],
                         "skills": ["welding;rigging"], "location": ["Oslo"], "company": ["Fjord Works"],
                         "salary_min": [3e4], "salary_max": [5e4], "job_type": ["contract"],
                         "experience_level": ["junior"]})
    ranker.put_jobs(extractor.put_jobs(jobs, np.full(1, T0, np.int64), np.full(1, NEVER, np.int64)))
    fresh = CatalogRanker(model, extractor, time=T0)
    torch.testing.assert_close(ranker.score_all(users, rows, kept=True), fresh.score_all(users)[:, rows],
                               atol=1e-6, rtol=0)
    assert ranker._view is view  # one row changed: copied into the kept view
    assert view.match_index(ranker)[1].tolist() == [3]  # its lists changed: compared directly, not indexed

    moved = ranker.at(T0 + MICROS_PER_DAY)  # jobs cross a day bucket: their job sides change
    assert 0 < len(np.intersect1d(moved, rows)) <= len(rows) // 4  # patched into the view, not gathered anew
    later = CatalogRanker(model, extractor, time=T0 + MICROS_PER_DAY)
    torch.testing.assert_close(ranker.score_all(users, rows, kept=True), later.score_all(users)[:, rows],
                               atol=1e-6, rtol=0)
    assert ranker._view is view and view.version == ranker.version
    assert view.match_index(ranker)[1].tolist() == [3]  # ages moved, lists did not: no more rows compared directly


def test_the_view_keeps_its_own_copy_of_the_rows(served):
    model, extractor = served
    ranker = CatalogRanker(model, extractor, time=T0)
    users = users_of(extractor, [1])
    rows = np.arange(1, 40)
    first = ranker.score_all(users, rows, kept=True)
    rows[:] = np.arange(41, 80)  # a caller reusing its buffer for other rows
    torch.testing.assert_close(ranker.score_all(users, rows, kept=True), ranker.score_all(users)[:, rows],
                               atol=1e-6, rtol=0)
    assert not torch.equal(first, ranker.score_all(users, rows, kept=True))
