"""CatalogRanker: the precomputed fast path equals the model's forward; top-k, filters, explanations."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from convfm.data.batching import join_batches, table_tensors
from convfm.config import ModelConfig
from convfm.model.network import ConvFM
from convfm.model.ranking import CatalogRanker

pytestmark = pytest.mark.timeout(120)


def users_of(extractor, n: int = 5):
    """The first ``n`` catalog users with every user-side field (their history after the data's end)."""
    return extractor.user_side(extractor.user_catalog.take(np.arange(n)), np.array(extractor.user_ids[:n]))


@pytest.mark.parametrize("kernel", [1, 3, 5, 7])
def test_fast_path_equals_forward_on_random_models(tiny, randomize, kernel):
    extractor = tiny.data.extractor
    config = ModelConfig(embedding_dim=6, conv_filters=5, conv_kernel_size=kernel, hidden_dims=(12, 7, 4))
    model = randomize(ConvFM(config, extractor.feature_map), seed=kernel)
    ranker = CatalogRanker(model, extractor)
    users = users_of(extractor)
    fast, full = ranker.score_all(users), ranker.full_scores(users)
    assert fast.shape == (5, len(extractor.job_catalog))
    assert full.abs().max() > 1.0  # the check is not vacuous
    torch.testing.assert_close(fast, full, atol=1e-5, rtol=0)
    rows = np.array([3, 1, 3, 40])
    for i in range(len(full)):  # one user: its side broadcast over the jobs' rows as they are (2-D, not 3-D)
        torch.testing.assert_close(ranker.score_all(users.take([i])), full[i : i + 1], atol=1e-5, rtol=0)
        torch.testing.assert_close(ranker.score_all(users.take([i]), rows), full[i : i + 1, rows], atol=1e-5, rtol=0)


def test_one_user_in_steps_of_any_size_and_no_user_at_all(tiny, randomize, monkeypatch):
    extractor = tiny.data.extractor
    model = ConvFM(ModelConfig(embedding_dim=6, conv_filters=5, hidden_dims=(12, 7)), extractor.feature_map)
    ranker = CatalogRanker(randomize(model, seed=3), extractor)
    users = users_of(extractor, 2)
    full = ranker.full_scores(users)
    assert ranker.n_jobs % 8  # steps of 8 jobs end with a shorter one
    for elements in (1, 8 * ranker.job_width, 1 << 20):  # steps of 1 job, of 8, the whole catalog in one
        monkeypatch.setattr("convfm.model.ranking.ONE_USER_ELEMENTS", elements)
        torch.testing.assert_close(ranker.score_all(users.take([1])), full[1:2], atol=1e-5, rtol=0)
    nobody = users.take(np.arange(0))
    assert ranker.score_all(nobody).shape == (0, ranker.n_jobs)
    assert ranker.score_all(nobody, np.array([3, 1])).shape == (0, 2)


def test_fast_path_follows_a_deep_head_with_an_extra_hidden_layer(tiny, randomize):
    """A DeepHead edited to LayerNorm after each BatchNorm: the ranker's split runs the new layer too."""
    extractor = tiny.data.extractor
    model = ConvFM(ModelConfig(embedding_dim=6, conv_filters=5, hidden_dims=(12, 7)), extractor.feature_map)
    layers = [[layer, nn.LayerNorm(layer.num_features)] if isinstance(layer, nn.BatchNorm1d) else [layer]
              for layer in model.deep.mlp]
    model.deep.mlp = nn.Sequential(*(layer for group in layers for layer in group))
    ranker = CatalogRanker(randomize(model, seed=11), extractor)
    users = users_of(extractor)
    torch.testing.assert_close(ranker.score_all(users), ranker.full_scores(users), atol=1e-5, rtol=0)


def test_ranker_refuses_a_deep_head_it_cannot_split(tiny):
    """A LayerNorm on the MLP's input mixes user and job columns: no exact split, so no ranker."""
    extractor = tiny.data.extractor
    model = ConvFM(ModelConfig(embedding_dim=6, conv_filters=5, hidden_dims=(12,)), extractor.feature_map)
    model.deep.mlp = nn.Sequential(nn.LayerNorm(model.deep.mlp[0].in_features), *model.deep.mlp)
    with pytest.raises(ValueError, match="DeepHead cannot be split by input columns: its first layer is LayerNorm"):
        CatalogRanker(model, extractor)


def test_fast_path_equals_forward_on_trained_model_and_cold_start_profile(tiny):
    extractor = tiny.data.extractor
    ranker = CatalogRanker(tiny.model, extractor)
    profile = extractor.user_side(extractor.transform_users(pd.DataFrame(
        {"user_id": ["nobody"], "skills": ["python;sql;docker"], "location": ["Remote"], "experience_level": ["senior"]})),
        np.array(["nobody"]))
    for users in (users_of(extractor, 8), profile):
        torch.testing.assert_close(ranker.score_all(users), ranker.full_scores(users), atol=1e-5, rtol=0)


def test_score_pairs_and_job_subsets_match_score_all(tiny):
    ranker = CatalogRanker(tiny.model, tiny.data.extractor)
    users = users_of(tiny.data.extractor, 3)
    everything = ranker.score_all(users)
    rows = np.array([5, 1, 17, 5, 200])
    torch.testing.assert_close(ranker.score_all(users, rows), everything[:, rows], atol=1e-6, rtol=0)
    user_index = np.array([0, 2, 1, 1, 0])
    pairs = ranker.score_pairs(users, user_index, rows)
    torch.testing.assert_close(pairs, everything[user_index, rows], atol=1e-6, rtol=0)


def test_top_k_matches_argsort_of_full_forward(tiny):
    ranker = CatalogRanker(tiny.model, tiny.data.extractor)
    user = users_of(tiny.data.extractor, 2).take([1])
    full = ranker.full_scores(user)[0].numpy()
    full[0] = -np.inf  # the unknown-job row is never recommended
    rows, logits = ranker.top_k(user, 10)
    expected = np.argsort(-full, kind="stable")[:10]
    np.testing.assert_allclose(logits, full[expected], atol=1e-5)
    assert list(rows) == list(expected) or np.allclose(full[rows], full[expected], atol=1e-5)


def test_top_k_honours_exclusions_and_candidate_mask(tiny):
    ranker = CatalogRanker(tiny.model, tiny.data.extractor)
    user = users_of(tiny.data.extractor, 1)
    best, _ = ranker.top_k(user, 5)
    rows, _ = ranker.top_k(user, 5, exclude=set(best[:3].tolist()))
    assert not set(rows) & set(best[:3]) and len(rows) == 5
    mask = np.zeros(ranker.n_jobs, dtype=bool)
    mask[[0, 3, 4, 9]] = True
    rows, _ = ranker.top_k(user, 10, candidate_mask=mask)
    assert sorted(rows) == [3, 4, 9]  # row 0 stays out even when the mask lets it in
    assert len(ranker.top_k(user, 10, candidate_mask=np.zeros(ranker.n_jobs, dtype=bool))[0]) == 0


def test_explain_names_user_job_pairs_and_matching_skills(tiny):
    extractor = tiny.data.extractor
    ranker = CatalogRanker(tiny.model, extractor)
    users = users_of(extractor, 20)
    location = [f.name for f in ranker.user_map.of_kind("categorical")].index("user_location")
    companies = [f.name for f in ranker.user_map.of_kind("multi")].index("history_companies")
    known = (users.cat[:, location] > 1) & (users.multi[:, companies] > 1).any(1)
    user = users.take([np.flatnonzero(known)[0]])  # the first user with a known location and a history
    rows, _ = ranker.top_k(user, 5)
    assert len(ranker.explainer.explain(user, rows)) == 5
    jobs = ranker.job_table(np.arange(ranker.n_jobs))
    local = jobs.cat[:, [f.name for f in ranker.job_map.of_kind("categorical")].index("job_location")]
    rows = np.r_[rows, np.flatnonzero(local == user.cat[0, location])[:3]]  # + 3 jobs in the user's location
    assert len(rows) > 5
    explanations = ranker.explainer.explain(user, rows)
    user_fields = {f.name for f in extractor.feature_map.of_side("user").fields}
    job_fields = {f.name for f in extractor.feature_map.of_side("job").fields}
    skill_names = extractor.vocabs["skill"].values
    pairs = tiny.model.pairwise_interactions(
        *join_batches([table_tensors(user), table_tensors(ranker.job_table(rows[:1]))]))[0]
    cited = profiles = 0
    categorical = [f.name for f in extractor.feature_map.of_kind("categorical")]
    for e, row in zip(explanations, rows):
        assert e["interactions"] and all(x["user_field"] in user_fields and x["job_field"] in job_fields
                                         for x in e["interactions"])
        user_skills = {skill_names[i - 2] for i in user.multi[0, 0] if i > 1}
        job_skills = {skill_names[i - 2] for i in extractor.job_catalog.multi[row, 0] if i > 1}
        assert set(e["matching_skills"]) == user_skills & job_skills
        # the skill-match term's part of the logit, cited only where a skill is shared
        with torch.no_grad():
            term = tiny.model.skill_match.term(0, torch.as_tensor(user.multi[:1, 0]),
                                                  torch.as_tensor(extractor.job_catalog.multi[row : row + 1, 0]))
        if e["matching_skills"]:
            assert e["skill_match"] == pytest.approx(float(term), abs=1e-6) and e["skill_match"] != 0
        else:
            assert e["skill_match"] is None and float(term) == 0
        # the history-match terms' part, from the model's forward over this (user, job) row
        cat, multi, _ = join_batches([table_tensors(user), table_tensors(ranker.job_table(np.array([row])))])
        with torch.no_grad():
            history = float(tiny.model.history_match(cat, multi)[0])
        assert (e["history_match"] is None) == (history == 0)
        cited += e["history_match"] is not None
        if history:
            assert e["history_match"] == pytest.approx(history, abs=1e-6)
        with torch.no_grad():  # the profile-match terms' part: the job in the user's location or at their level
            profile = float(tiny.model.profile_match(cat, multi)[0])
        assert e["profile_match"] == (pytest.approx(profile, abs=1e-6) if profile else None)
        same = [cat[0, categorical.index(f"user_{v}")] == cat[0, categorical.index(f"job_{v}")] > 1
                for v in ("location", "experience")]  # known (past PAD/UNK) and equal
        assert any(same) == (profile != 0)
        profiles += any(same)
    assert cited and profiles  # this user's recent jobs, and its profile, share something with these jobs
    # the reported value is the model's own pairwise FM term for that field pair
    names = [f.name for f in extractor.feature_map.fields]
    top = explanations[0]["interactions"][0]
    value = pairs[names.index(top["user_field"]), names.index(top["job_field"])]
    assert top["value"] == pytest.approx(float(value), abs=1e-5)
