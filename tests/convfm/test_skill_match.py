"""The skill-match term (ModelConfig.skill_match): golden overlap features, and the fast ranking paths (every job
for a batch of users, chosen pairs) equal to the model's own forward."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from convfm.config import ModelConfig
from convfm.features.fields import FeatureMap, FieldSpec
from convfm.features.jobs import JobFeatureExtractor
from convfm.model.network import ConvFM, SkillMatch
from convfm.model.ranking import CatalogRanker


def test_overlap_golden_and_both_paths_agree():
    fields = (FieldSpec("user_skills", "multi", "user", "skill", 10, max_len=4),
              FieldSpec("job_skills", "multi", "job", "skill", 10, max_len=4))
    match = SkillMatch(FeatureMap(fields))
    assert not SkillMatch.applies(FeatureMap(fields[:1]))  # a term is built only where both lists exist
    with torch.no_grad():
        match.weight.copy_(torch.tensor([1.0, 0.0]))  # the term is the Jaccard overlap
    users = torch.tensor([[2, 3, 4, 0], [2, 1, 0, 0]])  # {2, 3, 4}; {2, unknown}
    jobs = torch.tensor([[3, 4, 5, 6], [1, 7, 0, 0], [2, 0, 0, 0]])  # {3, 4, 5, 6}; {unknown, 7}; {2}
    every = match.term(users[:, None], jobs[None])  # users (U, 1) x jobs (1, N): the catalog path
    # 2 shared of 5 / none of 5 / 1 of 3; 0 of 3 (unknown skills never match) / 0 of 3 / 1 of 2
    torch.testing.assert_close(every, torch.tensor([[0.4, 0.0, 1 / 3], [0.0, 0.0, 0.5]]))
    pairs = match.term(users[[0, 0, 0, 1, 1, 1]], jobs[[0, 1, 2, 0, 1, 2]])  # the pairwise path
    torch.testing.assert_close(pairs, every.flatten())
    multi = torch.stack([users[[0, 1]], jobs[[0, 2]]], dim=1)  # (B, Fm, L): the forward's path
    torch.testing.assert_close(match(multi), torch.tensor([0.4, 0.5]))
    twice = match.term(torch.tensor([[2, 2, 3, 0]]), torch.tensor([[2, 5, 0, 0]]))  # a skill listed twice
    torch.testing.assert_close(twice, torch.tensor([0.25]))  # counts once: 1 shared of 3 + 2 - 1 listed


def test_the_inverted_index_adds_the_term_only_where_a_skill_is_shared():
    fields = (FieldSpec("user_skills", "multi", "user", "skill", 10, max_len=4),
              FieldSpec("job_skills", "multi", "job", "skill", 10, max_len=4))
    match = SkillMatch(FeatureMap(fields))
    with torch.no_grad():
        match.weight.copy_(torch.tensor([1.0, 2.0]))
    jobs = torch.tensor([[0, 0, 0, 0], [3, 4, 5, 6], [1, 7, 0, 0], [2, 0, 0, 0], [2, 3, 3, 0]])
    users = torch.tensor([[2, 3, 4, 0], [2, 1, 0, 0], [1, 1, 0, 0]])  # the last: only unknown skills
    index, sizes = match.index([jobs[:2], jobs[2:]])  # built in chunks
    logits = torch.full((3, 5), 0.5)
    match.add_shared(logits, users, index, sizes, skip=torch.tensor([1]))
    expected = 0.5 + match.term(users[:, None], jobs[None])
    expected[:, 1] = 0.5  # a skipped (stale) row gets nothing
    torch.testing.assert_close(logits, expected)
    assert (logits[2] == 0.5).all()  # no known skill: nothing touched


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
    with monkeypatch.context() as patch:  # the previous release wrote no skill_match key
        patch.setattr(ModelConfig, "to_dict", lambda self: {k: v for k, v in to_dict(self).items()
                                                             if k != "skill_match"})
        saved = save_model_dir(tmp_path / "old", model, extractor)
    assert "skill_match" not in (saved / "model_config.json").read_text()
    loaded = load_model_dir(saved)
    assert loaded.model.config.skill_match is False and loaded.model.skill_match is None
    assert ConvFM(ModelConfig(), extractor.feature_map).skill_match is not None  # new models have the term


def test_jobs_put_after_the_index_was_built_score_their_new_skills(extractor, randomize):
    """The live catalog: rows replaced or appended after the inverted index was built are stale there and scored
    from their new lists, so the fast path still equals the forward over the grown catalog."""
    from convfm.data.liveness import NEVER

    model = randomize(ConvFM(ModelConfig(embedding_dim=4, conv_filters=3, hidden_dims=(6,), skill_match=True),
                             extractor.feature_map), 3)
    with torch.no_grad():
        model.skill_match.weight.copy_(torch.tensor([2.0, 1.0]))
    ranker = CatalogRanker(model, extractor)
    users = extractor.user_side(extractor.user_catalog.take(np.arange(1, 7)), np.array([f"u{i}" for i in range(6)]))
    ranker.score_all(users)  # builds the index
    jobs = pd.DataFrame({"job_id": ["j3", "new1", "new2"], "company": ["c1"] * 3,
                         "skills": ["s0;s1;s2;s3", "s4;s5", "s0;s11"]})
    rows = extractor.put_jobs(jobs, np.zeros(3, np.int64), np.full(3, NEVER, np.int64))
    ranker.put_jobs(rows)
    assert len(ranker._skills[2]) == 3  # kept, its three rows stale
    torch.testing.assert_close(ranker.score_all(users), ranker.full_scores(users), atol=1e-5, rtol=0)
