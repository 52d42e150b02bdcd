"""Growing a served catalog in place (the live catalog): ``JobFeatureExtractor.put_jobs`` encodes new jobs with
the fitted vocabularies and ``CatalogRanker.put_jobs`` computes only their job sides; the result scores as a ranker
built from scratch on the grown catalog (to float32 rounding) and as the model's own forward."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from convfm.data.liveness import MICROS_PER_DAY, NEVER
from convfm.features.fields import UNK
from convfm.model.ranking import CatalogRanker

pytestmark = pytest.mark.timeout(120)
T0 = int(pd.Timestamp("2024-04-01").value // 1000)


def new_jobs(ids: list[str], seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "job_id": ids, "title": [f"Senior Data Engineer {i}" for i in ids],
        "description": ["Build pipelines with python and sql on spark."] * len(ids),
        "skills": ["python;sql;spark"] * len(ids), "location": rng.choice(["Berlin", "Boston", "Nowhere"], len(ids)),
        "company": ["North Labs"] * len(ids), "salary_min": rng.uniform(3e4, 6e4, len(ids)),
        "salary_max": rng.uniform(6e4, 9e4, len(ids)), "job_type": ["full_time"] * len(ids),
        "experience_level": ["senior"] * len(ids)})


def users_of(extractor, n: int = 4):
    return extractor.user_side(extractor.user_catalog.take(np.arange(n)), np.array(extractor.user_ids[:n]))


def put(extractor, ranker, jobs: pd.DataFrame, posted: int) -> np.ndarray:
    rows = extractor.put_jobs(jobs, np.full(len(jobs), posted, np.int64), np.full(len(jobs), NEVER, np.int64))
    ranker.put_jobs(rows)
    return rows


def test_grown_ranker_scores_exactly_as_one_built_on_the_grown_catalog(served):
    model, extractor = served
    ranker = CatalogRanker(model, extractor, time=T0)
    n = ranker.n_jobs
    existing = extractor.job_ids[5]
    jobs = pd.concat([new_jobs(["new-1", "new-2", "new-3"]), new_jobs([existing], seed=1)], ignore_index=True)
    rows = put(extractor, ranker, jobs, T0 - 2 * MICROS_PER_DAY)
    assert rows.tolist() == [n, n + 1, n + 2, 5]  # new ids appended, a known id replaced in place
    assert ranker.n_jobs == len(extractor.job_ids) == n + 3 and extractor.job_rows["new-2"] == n + 1
    job_id_column = [f.name for f in extractor.feature_map.of_side("job").of_kind("categorical")].index("job_id")
    assert (extractor.job_catalog.cat[n:, job_id_column] == UNK).all()  # the unknown-id slot ...
    assert extractor.job_catalog.cat[5, job_id_column] > UNK  # ... and a known id keeps its trained row
    # enough new jobs to outgrow the doubled buffers once more
    put(extractor, ranker, new_jobs([f"bulk-{i}" for i in range(2 * n)], seed=2), T0 - 40 * MICROS_PER_DAY)
    fresh = CatalogRanker(model, extractor, time=T0)
    users = users_of(extractor)
    grown = ranker.score_all(users)
    assert grown.shape == (4, 3 * n + 3)
    # equal up to float32 rounding: a side pass over 4 rows and one over the whole catalog may take different
    # matmul kernels (measured: at most 2.4e-7 on logits up to ~8, one unit in the last place)
    torch.testing.assert_close(grown, fresh.score_all(users), atol=1e-6, rtol=0)
    rows = np.r_[np.arange(n - 3, n + 6), [5]]
    torch.testing.assert_close(grown[:, rows], ranker.full_scores(users, rows), atol=1e-5, rtol=0)
    later = T0 + 30 * MICROS_PER_DAY  # recency buckets of old and new rows move on together
    ranker.at(later)
    fresh.at(later)
    torch.testing.assert_close(ranker.score_all(users), fresh.score_all(users), atol=1e-6, rtol=0)


def test_new_jobs_change_scores_through_their_content(served):
    """Two new jobs with different content score differently (the id is unknown; the fields are not)."""
    model, extractor = served
    ranker = CatalogRanker(model, extractor, time=T0)
    jobs = new_jobs(["a", "b"])
    jobs.loc[1, ["title", "skills", "location", "job_type"]] = ["Nurse", "ehr;cpr", "Boston", "internship"]
    rows = put(extractor, ranker, jobs, T0)
    scores = ranker.score_all(users_of(extractor))[:, rows]
    assert (scores[:, 0] - scores[:, 1]).abs().min() > 1e-4


def test_a_ranker_over_a_given_catalog_refuses_to_grow(served):
    model, extractor = served
    jobs = CatalogRanker(model, extractor, time=T0).job_table(np.arange(10))  # every job field, recency too
    ranker = CatalogRanker(model, extractor, jobs=jobs)
    with pytest.raises(ValueError, match="put_jobs: this ranker scores a catalog given at construction"):
        ranker.put_jobs(np.array([1]))


def test_explanations_see_the_grown_catalog(served):
    """Which job fields vary over the catalog (explain credits only those) is recomputed after put_jobs."""
    model, extractor = served
    ranker = CatalogRanker(model, extractor, time=T0)
    ranker.explainer.explain(users_of(extractor, 1), [1, 2])  # caches the catalog's constant fields
    company = [f.name for f in ranker.job_map.fields].index("company")
    assert not ranker.explainer.constant_job_fields()[company]
    put(extractor, ranker, new_jobs(extractor.job_ids[1:]), T0)  # every job now at the same company
    assert ranker.explainer.constant_job_fields()[company]
    np.testing.assert_array_equal(ranker.explainer.constant_job_fields(),
                                  CatalogRanker(model, extractor, time=T0).explainer.constant_job_fields())
