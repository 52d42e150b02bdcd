"""Explanations credit only informative fields: never a value missing for the user or the job, nor a job field
with one value over the whole catalog; and they are computed only when a request asks for them."""
from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from convfm.config import DataConfig, ModelConfig
from convfm.data.prepare import prepare_data
from convfm.features.context import HISTORY_FIELDS
from convfm.features.fields import field_columns
from convfm.model.network import ConvFM
from convfm.model.ranking import CatalogRanker
from convfm.store.artifacts import save_model_dir
from serve.schemas import RecommendRequest
from serve.replies import why_line
from serve.scorer import Scorer

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def market(market_dir, tmp_path_factory, randomize):
    """The session market with the salary columns present but empty and one job type for every job, and a
    randomized ConvFM whose embeddings of missing values are made the largest (no salary, no history: the
    activity of a user without one, the unknown user id), so an explanation that credited them would name them."""
    out = tmp_path_factory.mktemp("no_salary_market")
    for name in ("users", "interactions"):
        shutil.copy(market_dir / f"{name}.csv", out)
    jobs = pd.read_csv(market_dir / "jobs.csv")
    jobs["salary_min"], jobs["salary_max"], jobs["job_type"] = np.nan, np.nan, "full_time"
    jobs.to_csv(out / "jobs.csv", index=False)
    data = prepare_data(DataConfig(path=str(out)))
    fmap = data.extractor.feature_map
    model = randomize(ConvFM(ModelConfig(embedding_dim=8, conv_filters=8, hidden_dims=(16, 8)), fmap), seed=3)
    dense = [f.name for f in fmap.of_kind("dense")]
    embedding = model.embedding
    with torch.no_grad():
        for name in ("salary", "activity"):
            embedding.dense[dense.index(name)].weight.mul_(20)
        unknown_user = int(embedding.cat_offsets[[f.name for f in fmap.of_kind("categorical")].index("user_id")]) + 1
        embedding.table.weight[unknown_user].mul_(20)
    return data, model


def profile_user(extractor):
    """A cold-start user: a profile, an id the model does not know, no history."""
    static = extractor.transform_users(pd.DataFrame({"user_id": ["newcomer"], "skills": ["python;sql;docker"],
                                                     "location": ["Remote"], "experience_level": ["senior"]}))
    return extractor.user_side(static, np.array(["newcomer"]))


def credited(explanations) -> set[tuple[str, str]]:
    return {(x["user_field"], x["job_field"]) for e in explanations for x in e["interactions"]}


def test_no_salary_no_history_and_unknown_ids_are_never_credited(market, tmp_path):
    data, model = market
    extractor = data.extractor
    ranker = CatalogRanker(model, extractor)
    _, salary = field_columns(ranker.job_map.fields)["salary"]
    assert ranker.job_table(np.arange(1, ranker.n_jobs)).dense[:, salary][:, 2].all()  # there, and always missing
    newcomer = profile_user(extractor)
    rows, _ = ranker.top_k(newcomer, 30)
    pairs = credited(ranker.explainer.explain(newcomer, rows))
    assert pairs and not {u for u, _ in pairs} & {*HISTORY_FIELDS, "user_id"}
    assert not {j for _, j in pairs} & {"salary", "job_type"}
    users = extractor.history.users[:20]
    known = extractor.user_side(extractor.user_catalog.take([extractor.user_rows[u] for u in users]), users)
    pairs = set()
    for i in range(len(users)):
        rows, _ = ranker.top_k(known.take([i]), 10)
        pairs |= credited(ranker.explainer.explain(known.take([i]), rows))
    assert "activity" in {u for u, _ in pairs}  # a user with a history: the same boosted field counts
    assert not {j for _, j in pairs} & {"salary", "job_type"}
    # the service's one-line why says the same
    scorer = Scorer.load(save_model_dir(tmp_path / "model", model, extractor))
    [result] = scorer.recommend_many([RecommendRequest(profile={"skills": ["python"]}, k=20, explain=True)])
    assert result["items"] and not any("salary" in i["why"] or "activity" in i["why"] for i in result["items"])


def test_the_constant_job_field_rule(market):
    """A field flagged constant is exactly one with the same encoded value for every job (row 0 aside)."""
    data, model = market
    base = CatalogRanker(model, data.extractor)
    names = [f.name for f in base.job_map.fields]

    def constant(ranker: CatalogRanker) -> set[str]:
        return {n for n, same in zip(names, ranker.explainer.constant_job_fields()) if same}

    assert {"salary", "job_type"} <= constant(base) and not {"job_id", "job_skills", "job_location"} & constant(base)
    jobs = base.job_table(np.arange(base.n_jobs))
    location = [f.name for f in base.job_map.of_kind("categorical")].index("job_location")
    jobs.cat[2:, location] = jobs.cat[1, location]  # row 0, the unknown job (padding), differs: it does not count
    one_place = CatalogRanker(model, data.extractor, jobs=jobs)
    assert constant(one_place) == constant(base) | {"job_location"}
    user = profile_user(data.extractor)
    explanations = one_place.explainer.explain(user, np.arange(1, 30))
    assert "job_location" not in {j for _, j in credited(explanations)}
    assert not any("location" in e["matching"] for e in explanations)  # "same location" holds for every job


def test_no_informative_pair_left_means_no_interactions_and_no_pair_in_the_why(market):
    data, model = market
    base = CatalogRanker(model, data.extractor)
    clones = CatalogRanker(model, data.extractor, jobs=base.job_table(np.r_[0, np.ones(base.n_jobs - 1, dtype=int)]))
    for e in clones.explainer.explain(profile_user(data.extractor), [1, 2, 3]):
        assert e["interactions"] == [] and " x " not in why_line(e)
        assert e["skill_match"] is None and e["history_match"] is None  # nor a pair term of a constant field
        assert e["profile_match"] is None
    assert clones.explainer.constant_job_fields().all()


def test_explanations_only_when_asked(tiny):
    scorer = Scorer.load(tiny.entry / "v0001")
    user = tiny.data.frames["train"]["user_id"].iloc[0]
    plain, explained = scorer.recommend_many([RecommendRequest(user_id=user, k=5),
                                              RecommendRequest(user_id=user, k=5, explain=True)])
    assert [i["job_id"] for i in plain["items"]] == [i["job_id"] for i in explained["items"]]
    assert not any("why" in i or "explanation" in i for i in plain["items"])
    assert all(i["why"] and "interactions" in i["explanation"] for i in explained["items"])


def test_the_why_cites_only_what_raised_the_score():
    """A term that lowered the score is no reason to recommend the job ("like your recent jobs (-0.0189)")."""
    lowered = {"similar_to": None, "history_match": -0.0189, "matching_skills": ["sql"], "skill_match": -0.2,
               "matching": {}, "profile_match": -0.1,
               "interactions": [{"user_field": "user_id", "job_field": "job_text", "value": -0.3}]}
    assert why_line(lowered) == "matching skills: sql"
    raised = {**lowered, "history_match": 0.4, "skill_match": 0.25, "profile_match": 0.1,
              "interactions": [{"user_field": "user_id", "job_field": "job_text", "value": 0.3}]}
    assert why_line(raised) == ("like your recent jobs (+0.4); matching skills: sql (+0.25); fits your profile "
                            "(+0.1); user id x job text (+0.3)")
