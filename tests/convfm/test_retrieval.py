"""RetrievalIndex: recall against the exact ranking, exact reranked scores, incremental indexing, exclusions."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from convfm.data.liveness import MICROS_PER_DAY
from convfm.features.fields import EncodedTable
from convfm.model.ranking import CatalogRanker
from convfm.model.retrieval import RetrievalIndex

pytestmark = pytest.mark.timeout(180)


def users_of(extractor, n: int) -> EncodedTable:
    """The first ``n`` catalog users (row 0: the unknown user, with no id or history) with every user field."""
    return extractor.user_side(extractor.user_catalog.take(np.arange(n)), np.array(extractor.user_ids[:n]))


def mixed_ranker(tiny, jobs: int, seed: int = 0) -> CatalogRanker:
    """A ranker over ``jobs`` synthetic rows, each field drawn from a random real job (benchmarks/retrieval.py)."""
    from benchmarks.retrieval import mixed_catalog

    base = CatalogRanker(tiny.model, tiny.data.extractor)
    return CatalogRanker(tiny.model, tiny.data.extractor, jobs=mixed_catalog(base, jobs, seed))


@pytest.fixture(scope="module")
def big(tiny):
    """3,000 synthetic jobs of the tiny model and their index (r = 16, M = 400)."""
    ranker = mixed_ranker(tiny, 3000)
    return ranker, RetrievalIndex(ranker, dims=16, fit_rows=400)


def test_recall_at_10_against_the_exact_ranking(tiny, big):
    """Recall@10 of 30 candidates out of 3,000 (1%): random candidates would find 0.01 of the exact top-10.
    Measured 1.0 (30 users, each 1.0); with r = 1 the same protocol measured 0.59 and with r = 8 0.80, so the
    bound (the issue's 0.95) fails when the index loses what ranks jobs."""
    ranker, index = big
    users = users_of(tiny.data.extractor, 30)
    exact = ranker.score_all(users).clone()  # (U, N)
    exact[:, 0] = -torch.inf
    truth = torch.topk(exact, 10, dim=1).indices.numpy()
    recall = [len(set(index.top_k(users.take([u]), 10, count=30)[0]) & set(truth[u])) / 10 for u in range(30)]
    assert np.mean(recall) >= 0.9, recall


def test_reranked_scores_are_the_models_exact_logits(tiny, big):
    ranker, index = big
    user = users_of(tiny.data.extractor, 3).take([2])
    rows, logits = index.top_k(user, 10, count=50)
    assert len(rows) == 10 and 0 not in rows
    assert list(logits) == sorted(logits, reverse=True)
    np.testing.assert_allclose(logits, ranker.score_all(user)[0][rows].numpy(), atol=1e-6)
    np.testing.assert_allclose(logits, ranker.full_scores(user, rows)[0].numpy(), atol=1e-5)  # the model's forward


def test_with_every_row_a_candidate_the_result_is_the_exact_top_k(tiny, big):
    ranker, index = big
    user = users_of(tiny.data.extractor, 5).take([4])
    rows, logits = index.top_k(user, 10, count=ranker.n_jobs)
    exact_rows, exact_logits = ranker.top_k(user, 10)
    np.testing.assert_allclose(logits, exact_logits, atol=1e-6)
    assert set(rows) == set(exact_rows)


def extended(ranker: CatalogRanker, bigger: CatalogRanker) -> None:
    """Grow ``ranker``'s catalog to ``bigger``'s (its first rows the same), as a live catalog appends jobs."""
    ranker.jobs, ranker.job_side, ranker.n_jobs = bigger.jobs, bigger.job_side, bigger.n_jobs


def test_incremental_add_equals_an_index_rebuilt_with_the_same_projection(tiny):
    full = mixed_ranker(tiny, 1200, seed=3)
    first = CatalogRanker(tiny.model, tiny.data.extractor, jobs=full.jobs.take(np.arange(801)))
    index = RetrievalIndex(first, dims=6, fit_rows=200)
    with pytest.raises(ValueError, match="extend it before indexing"):
        index.add([900])
    extended(first, full)
    with pytest.raises(ValueError, match="rows 801..1200 of the ranker's catalog are not indexed"):
        index.add(np.arange(801, 1000))
    index.add(np.arange(801, 1201))
    rebuilt = RetrievalIndex(full, fit_rows=200, projection=index.projection)
    assert len(index) == len(rebuilt) == 1201
    torch.testing.assert_close(index.coords, rebuilt.coords, atol=1e-5, rtol=0)
    assert torch.equal(index.blocked, rebuilt.blocked)
    user = users_of(tiny.data.extractor, 2).take([1])
    rows, _ = index.top_k(user, 10, count=1201)
    assert set(rows) == set(full.top_k(user, 10)[0])  # the new rows compete like the old ones


def test_moving_in_time_reindexes_the_jobs_whose_age_bucket_changed(tiny):
    extractor = tiny.data.extractor
    recency = extractor.recency_encoder
    assert recency is not None, "the tiny market has job ages: this test needs them"
    start = int(np.median(recency.posted))
    later = start + 5 * MICROS_PER_DAY
    index = RetrievalIndex(CatalogRanker(tiny.model, extractor, time=start), dims=6, fit_rows=100)
    before = index.coords.clone()
    changed = index.at(later)
    rebuilt = RetrievalIndex(CatalogRanker(tiny.model, extractor, time=later), fit_rows=100,
                             projection=index.projection)
    assert 0 < len(changed) < len(index) and not torch.allclose(before[changed], index.coords[changed])
    torch.testing.assert_close(index.coords, rebuilt.coords, atol=1e-5, rtol=0)


def test_excluded_removed_and_masked_rows_are_never_returned(tiny, big):
    ranker, index = big
    user = users_of(tiny.data.extractor, 2).take([1])
    best, _ = index.top_k(user, 30, count=200)
    removed, excluded, masked = best[:5], best[5:10], best[10:15]
    mask = np.ones(ranker.n_jobs, dtype=bool)
    mask[masked] = False
    index.remove(removed)
    try:
        rows, _ = index.top_k(user, 30, count=200, exclude=excluded, candidate_mask=mask)
        assert not set(rows) & set(best[:15]) and len(rows) == 30 and 0 not in rows
        only = np.zeros(ranker.n_jobs, dtype=bool)
        only[np.r_[0, best[:8]]] = True  # of these only rows 5..7 are allowed: 0 never, 0..4 removed
        rows, _ = index.top_k(user, 10, count=10, exclude=best[5:7], candidate_mask=only)
        assert list(rows) == [best[7]]
    finally:
        index.unblock(removed)
    assert set(index.top_k(user, 30, count=200)[0]) == set(best)


def test_bad_arguments_name_the_problem(big):
    ranker, index = big
    user = users_of(ranker.extractor, 1)
    with pytest.raises(ValueError, match=r"count \(5\) must be at least k \(10\)"):
        index.top_k(user, 10, count=5)
    with pytest.raises(ValueError, match="candidate_mask has 3 rows, the index 3001"):
        index.top_k(user, 10, candidate_mask=np.ones(3, dtype=bool))
    with pytest.raises(ValueError, match="dims must be in"):
        RetrievalIndex(ranker, dims=100_000)


def test_best_first_gives_equal_logits_to_the_lower_row():
    """Two copies of one job score alike: the full scan and the rerank of candidates both put the lower row first,
    and a tie at the k-th place goes to it too."""
    from convfm.model.top_k import best_first

    logits = torch.tensor([1.0, 3.0, 2.0, 3.0, 2.0, 0.5])
    rows, values = best_first(logits, 3)
    assert rows.tolist() == [1, 3, 2] and values.tolist() == [3.0, 3.0, 2.0]
    assert best_first(logits, 3, np.array([10, 9, 8, 7, 6, 5]))[0].tolist() == [7, 9, 6]  # catalog rows decide
    assert best_first(logits, 0)[0].tolist() == [] and best_first(logits, 10)[0].tolist() == [1, 3, 2, 4, 0, 5]
