"""The pair-match terms (ModelConfig.skill_match, history_match, profile_match): golden overlap features, and the
fast ranking paths (every job for a batch of users, chosen rows and pairs, a catalog grown after the indexes were
built) equal to the model's own forward."""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

from convfm.config import ModelConfig
from convfm.features.fields import FeatureMap, FieldSpec
from convfm.features.jobs import JobFeatureExtractor
from convfm.model.network import ConvFM
from convfm.model.pair_match import HISTORY_PAIRS, PROFILE_PAIRS, SKILL_PAIRS, PairMatch
from convfm.model.ranking import CatalogRanker


def skill_fields(size: int = 10) -> tuple[FieldSpec, ...]:
    return (FieldSpec("user_skills", "multi", "user", "skill", size, max_len=4),
            FieldSpec("job_skills", "multi", "job", "skill", size, max_len=4))


def test_overlap_golden_and_both_paths_agree():
    match = PairMatch.build(FeatureMap(skill_fields()), SKILL_PAIRS, "jaccard")
    assert PairMatch.build(FeatureMap(skill_fields()[:1]), SKILL_PAIRS, "jaccard") is None  # both fields or none
    with torch.no_grad():
        match.weight.copy_(torch.tensor([1.0, 0.0]))  # the term is the Jaccard overlap
    users = torch.tensor([[2, 3, 4, 0], [2, 1, 0, 0]])  # {2, 3, 4}; {2, unknown}
    jobs = torch.tensor([[3, 4, 5, 6], [1, 7, 0, 0], [2, 0, 0, 0]])  # {3, 4, 5, 6}; {unknown, 7}; {2}
    every = match.term(0, users[:, None], jobs[None])  # users (U, 1) x jobs (1, N): the catalog path
    # 2 shared of 5 / none of 5 / 1 of 3; 0 of 3 (unknown skills never match) / 0 of 3 / 1 of 2
    torch.testing.assert_close(every, torch.tensor([[0.4, 0.0, 1 / 3], [0.0, 0.0, 0.5]]))
    pairs = match.term(0, users[[0, 0, 0, 1, 1, 1]], jobs[[0, 1, 2, 0, 1, 2]])  # the pairwise path
    torch.testing.assert_close(pairs, every.flatten())
    multi = torch.stack([users[[0, 1]], jobs[[0, 2]]], dim=1)  # (B, Fm, L): the forward's path
    torch.testing.assert_close(match(torch.zeros((2, 0), dtype=torch.int64), multi), torch.tensor([0.4, 0.5]))
    twice = match.term(0, torch.tensor([[2, 2, 3, 0]]), torch.tensor([[2, 5, 0, 0]]))  # a skill listed twice
    torch.testing.assert_close(twice, torch.tensor([2 / 3]))  # counts twice: 2 shared of 3 + 2 - 2 listed


def test_history_shares_golden():
    """The user's recent jobs against a job: the share of their companies (a categorical job field) and of
    their skills (a list) the job has, repeats counted, beside log1p of the count."""
    fields = (FieldSpec("history_companies", "multi", "user", "company", 9, max_len=4),
              FieldSpec("history_skills", "multi", "user", "skill", 10, max_len=4),
              FieldSpec("job_skills", "multi", "job", "skill", 10, max_len=4),
              FieldSpec("company", "categorical", "job", "company", 9))
    match = PairMatch.build(FeatureMap(fields), HISTORY_PAIRS, "share")
    assert [(p.user, p.job, p.job_kind) for p in match.pairs] == [("history_skills", "job_skills", "multi"),
                                                                  ("history_companies", "company", "categorical")]
    with torch.no_grad():
        match.weight.copy_(torch.tensor([1.0, 0.0, 2.0, 0.5]))
    cat = torch.tensor([[5], [7], [1]])  # the job's company: seen twice, never, unknown
    history_companies = torch.tensor([[5, 5, 6, 0], [5, 5, 6, 0], [1, 1, 0, 0]])
    history_skills = torch.tensor([[2, 3, 0, 0], [4, 0, 0, 0], [0, 0, 0, 0]])
    job_skills = torch.tensor([[3, 8, 0, 0], [3, 8, 0, 0], [2, 0, 0, 0]])
    multi = torch.stack([history_companies, history_skills, job_skills], dim=1)  # (B, Fm, L)
    expected = torch.tensor([1.0 * 1 / 2 + 2.0 * 2 / 3 + 0.5 * float(np.log1p(2)), 0.0, 0.0])
    torch.testing.assert_close(match(cat, multi), expected)


def test_profile_match_golden():
    """Two single values of one vocabulary (the user's location, the job's): 1 where they are equal and known."""
    fields = (FieldSpec("user_location", "categorical", "user", "location", 6),
              FieldSpec("user_experience", "categorical", "user", "experience_level", 4),
              FieldSpec("job_location", "categorical", "job", "location", 6),
              FieldSpec("job_experience", "categorical", "job", "experience_level", 4))
    match = PairMatch.build(FeatureMap(fields), PROFILE_PAIRS, "jaccard")
    assert [(p.user, p.user_kind, p.job, p.job_kind) for p in match.pairs] == [
        ("user_location", "categorical", "job_location", "categorical"),
        ("user_experience", "categorical", "job_experience", "categorical")]
    with torch.no_grad():
        match.weight.copy_(torch.tensor([1.0, 0.0, 0.0, 2.0]))  # location: equality; level: 2 log1p(shared)
    cat = torch.tensor([[4, 2, 4, 2], [4, 3, 5, 2], [1, 0, 1, 0]])  # both equal; neither; unknown and padding
    torch.testing.assert_close(match(cat, torch.zeros((3, 0, 1), dtype=torch.int64)),
                               torch.tensor([1 + 2 * np.log(2), 0.0, 0.0], dtype=torch.float32))
    users, jobs = match.user_lists(cat, cat[:, :0, None]), match.job_lists(cat, cat[:, :0, None])
    assert [tuple(t.shape) for t in users + jobs] == [(3, 1)] * 4
    every = match.term(0, users[0][:, None], jobs[0][None])  # the catalog path: 1 where the locations are equal
    torch.testing.assert_close(every, torch.tensor([[1.0, 0, 0], [1, 0, 0], [0, 0, 0]]))


def test_the_inverted_index_adds_the_term_only_where_a_value_is_shared():
    match = PairMatch.build(FeatureMap(skill_fields()), SKILL_PAIRS, "jaccard")
    with torch.no_grad():
        match.weight.copy_(torch.tensor([1.0, 2.0]))
    jobs = torch.tensor([[0, 0, 0, 0], [3, 4, 5, 6], [1, 7, 0, 0], [2, 0, 0, 0], [2, 3, 3, 0]])
    users = torch.tensor([[2, 3, 4, 0], [2, 1, 2, 0], [1, 1, 0, 0]])  # a skill twice; only unknown skills
    index, sizes = match.index([jobs[:2], jobs[2:]])  # built in chunks
    logits = torch.full((3, 5), 0.5)
    match.add_shared(0, logits, users, index, sizes, skip=torch.tensor([1]))
    expected = 0.5 + match.term(0, users[:, None], jobs[None])
    expected[:, 1] = 0.5  # a skipped (stale) row gets nothing
    torch.testing.assert_close(logits, expected)
    assert (logits[2] == 0.5).all()  # no known skill: nothing touched
    wide = torch.cat([jobs, torch.tensor([[9, 0, 0, 0]]).expand(40, 4)])  # few rows shared: the sparse path
    index, sizes = match.index([wide])
    logits = torch.full((3, 45), 0.5)
    match.add_shared(0, logits, users, index, sizes, skip=torch.tensor([1]))
    expected = 0.5 + match.term(0, users[:, None], wide[None])
    expected[:, 1] = 0.5
    torch.testing.assert_close(logits, expected)


@pytest.mark.parametrize("overlap", ["jaccard", "share"])
def test_a_categorical_job_field_adds_each_jobs_term_by_its_value(overlap):
    """``add_shared_values`` (a user's term per value, gathered at the jobs' values) against every entry compared:
    jobs with no value (PAD) or an unknown one, a value listed twice, a skipped row, a user with no known value."""
    fields = (FieldSpec("history_companies", "multi", "user", "company", 6, max_len=3),
              FieldSpec("company", "categorical", "job", "company", 6))
    match = PairMatch.build(FeatureMap(fields), HISTORY_PAIRS, overlap)
    with torch.no_grad():
        match.weight.copy_(torch.tensor([1.5, 0.75]))
    jobs = torch.tensor([[2], [3], [0], [1], [3], [2], [5]])  # PAD at row 2, UNK at row 3
    users = torch.tensor([[2, 2, 3], [5, 1, 0], [1, 1, 0]])  # 2 twice; 5 and unknown; unknown only
    logits = torch.full((3, 7), 0.5)
    match.add_shared_values(0, logits, users, jobs[:, 0], skip=torch.tensor([1]))
    expected = 0.5 + match.term(0, users[:, None], jobs[None])
    expected[:, 1] = 0.5  # a skipped (stale) row gets nothing
    torch.testing.assert_close(logits, expected)
    assert (logits[:, 2:4] == 0.5).all() and (logits[2] == 0.5).all()  # no value, an unknown one; no known value
    assert logits[0, 0] == logits[0, 5] > logits[0, 4] > 0.5 and logits[1, 6] > 0.5  # 2 (twice) above 3 (once)
    short = torch.full((3, 4), 0.5)  # the logits cover the first 4 jobs only
    match.add_shared_values(0, short, users, jobs[:, 0])
    torch.testing.assert_close(short, 0.5 + match.term(0, users[:, None], jobs[None, :4]))


@pytest.fixture
def extractor():
    rng = np.random.default_rng(0)
    skills = [f"s{i}" for i in range(12)]
    pick = lambda n: ";".join(rng.choice(skills, size=n, replace=False))  # noqa: E731
    jobs = pd.DataFrame({"job_id": [f"j{i}" for i in range(40)], "company": [f"c{i % 5}" for i in range(40)],
                         "skills": [pick(rng.integers(1, 6)) for _ in range(40)]})
    users = pd.DataFrame({"user_id": [f"u{i}" for i in range(6)],
                          "skills": [pick(rng.integers(0, 5)) for _ in range(6)]})
    interactions = pd.DataFrame({"user_id": ["u0", "u1"], "job_id": ["j0", "j1"]})
    return JobFeatureExtractor(text_dim=0, history_length=0).fit(jobs, interactions, users)


def test_fast_ranking_equals_the_forward_with_the_skill_term(extractor, randomize):
    """Profile skills only (no history): every job, chosen rows, chosen pairs."""
    model = randomize(ConvFM(ModelConfig(embedding_dim=4, conv_filters=3, hidden_dims=(6,), skill_match=True),
                             extractor.feature_map), 3)
    with torch.no_grad():
        model.skill_match.weight.copy_(torch.tensor([2.0, 1.0]))  # large enough to move the ranking
    ranker = CatalogRanker(model, extractor)
    users = extractor.user_side(extractor.user_catalog.take(np.arange(1, 7)), np.array([f"u{i}" for i in range(6)]))
    full = ranker.full_scores(users)
    torch.testing.assert_close(ranker.score_all(users), full, atol=1e-5, rtol=0)
    user_index, job_rows = np.repeat(np.arange(6), 5), np.tile([1, 7, 13, 22, 40], 6)
    torch.testing.assert_close(ranker.score_pairs(users, user_index, job_rows), full[user_index, job_rows],
                               atol=1e-5, rtol=0)
    rows = np.array([3, 1, 17, 40])
    torch.testing.assert_close(ranker.score_all(users, job_rows=rows), full[:, rows], atol=1e-5, rtol=0)
    without = ConvFM(ModelConfig(embedding_dim=4, conv_filters=3, hidden_dims=(6,), skill_match=False),
                     extractor.feature_map)
    without.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("skill_match")})
    assert not torch.allclose(CatalogRanker(without.eval(), extractor).score_all(users), full)  # the term matters


def test_a_model_saved_before_the_term_existed_loads_without_it(extractor, tmp_path, monkeypatch):
    from convfm.store.artifacts import load_model_dir, save_model_dir

    model = ConvFM(ModelConfig(embedding_dim=4, conv_filters=3, hidden_dims=(6,), skill_match=False),
                   extractor.feature_map)
    to_dict = ModelConfig.to_dict
    with monkeypatch.context() as patch:  # earlier releases wrote no skill_match / history_match key
        patch.setattr(ModelConfig, "to_dict", lambda self: {k: v for k, v in to_dict(self).items()
                                                             if not k.endswith("_match")})
        saved = save_model_dir(tmp_path / "old", model, extractor)
    assert "_match" not in (saved / "model_config.json").read_text()
    loaded = load_model_dir(saved)
    assert loaded.model.config.skill_match is False and loaded.model.skill_match is None
    assert loaded.model.config.history_match is False and loaded.model.config.profile_match is False
    assert ConvFM(ModelConfig(), extractor.feature_map).skill_match is not None  # new models have the term


def test_every_pair_term_on_a_job_market_model_and_a_catalog_grown_after_the_indexes(tiny, randomize):
    """The tiny job-market model has both terms (profile skills; recent jobs' skills, companies, locations).
    The fast paths equal its forward, also after the live catalog replaced and appended rows once the inverted
    indexes were built: those rows are stale there and scored from their new lists."""
    from convfm.data.liveness import NEVER
    from convfm.store.artifacts import load_model_dir

    loaded = load_model_dir(tiny.model_dir)
    model, extractor = randomize(loaded.model, 5), loaded.extractor
    assert [p.job for p in model.history_match.pairs] == ["job_skills", "company", "job_location"]
    assert [p.job for p in model.profile_match.pairs] == ["job_location", "job_experience"]
    with torch.no_grad():
        for match in model.pair_matches():
            match.weight.mul_(10)  # large enough to move the ranking
    ranker = CatalogRanker(model, extractor)
    users = extractor.user_side(extractor.user_catalog.take(np.arange(1, 9)), np.array(extractor.user_ids[1:9]))
    assert (users.multi[:, [p.user_column for p in model.history_match.pairs]] > 1).any()  # histories to match
    full = ranker.full_scores(users)
    torch.testing.assert_close(ranker.score_all(users), full, atol=1e-4, rtol=0)
    rows = np.array([3, 1, 17, 40])
    torch.testing.assert_close(ranker.score_all(users, job_rows=rows), full[:, rows], atol=1e-4, rtol=0)
    user_index, job_rows = np.repeat(np.arange(8), 4), np.tile(rows, 8)
    torch.testing.assert_close(ranker.score_pairs(users, user_index, job_rows), full[user_index, job_rows],
                               atol=1e-4, rtol=0)
    old = extractor.job_ids[3]
    jobs = pd.DataFrame({"job_id": [old, "new1", "new2"], "company": ["North Labs"] * 3,
                         "skills": ["python;sql", "docker", "python;docker"], "location": ["Berlin"] * 3})
    put = extractor.put_jobs(jobs, np.zeros(3, np.int64), np.full(3, NEVER, np.int64))
    ranker.put_jobs(put)
    assert len(ranker._match_index[1]) == 3  # kept, its three rows stale
    torch.testing.assert_close(ranker.score_all(users), ranker.full_scores(users), atol=1e-4, rtol=0)
    without = ConvFM(dataclasses.replace(model.config, history_match=False), extractor.feature_map)
    without.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("history_match")})
    assert not torch.allclose(CatalogRanker(without.eval(), extractor).score_all(users), ranker.score_all(users))
