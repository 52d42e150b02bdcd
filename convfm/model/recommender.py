"""The seed document's model API: ``ConvFMJobRecommender`` over user, skills, job, location and company ids.

A thin ConvFM with a fixed five-field FeatureMap whose ids are vocabulary indices (0 padding, 1 unknown);
ids outside a vocabulary score as unknown instead of raising. Real data goes through ``JobFeatureExtractor``
and ``ConvFM``; this class keeps the seed's examples working.
"""
from __future__ import annotations

from typing import Sequence

import torch

from convfm.config import ModelConfig
from convfm.features.fields import PAD, UNK, FeatureMap, FieldSpec
from convfm.model.network import ConvFM


def seed_feature_map(num_users: int, num_jobs: int, num_skills: int, num_locations: int,
                     num_companies: int, max_skills: int) -> FeatureMap:
    """user_id + skills (user side), then job_id, location, company (job side)."""
    return FeatureMap((
        FieldSpec("user_id", "categorical", "user", "user", max(num_users, 2)),
        FieldSpec("skills", "multi", "user", "skill", max(num_skills, 2), max_len=max_skills),
        FieldSpec("job_id", "categorical", "job", "job", max(num_jobs, 2)),
        FieldSpec("location", "categorical", "job", "location", max(num_locations, 2)),
        FieldSpec("company", "categorical", "job", "company", max(num_companies, 2)),
    ))


class ConvFMJobRecommender(ConvFM):
    """ConvFM with the seed document's constructor and ``predict_job_scores``."""

    def __init__(self, num_users: int, num_jobs: int, num_skills: int, num_locations: int, num_companies: int,
                 embedding_dim: int = 64, conv_filters: int = 64, conv_kernel_size: int = 3,
                 dropout_rate: float = 0.2, hidden_dims: Sequence[int] = (128, 64, 32), max_skills: int = 50,
                 sparse_embeddings: bool = False) -> None:
        config = ModelConfig(embedding_dim=embedding_dim, conv_filters=conv_filters,
                             conv_kernel_size=conv_kernel_size, dropout_rate=dropout_rate,
                             hidden_dims=tuple(hidden_dims), sparse_embeddings=sparse_embeddings)
        super().__init__(config, seed_feature_map(num_users, num_jobs, num_skills, num_locations,
                                                  num_companies, max_skills))

    def _index(self, vocab: str, ids: Sequence[int]) -> torch.Tensor:
        size = self.feature_map.vocab_sizes[vocab]
        values = torch.as_tensor(list(ids), dtype=torch.int64)
        return torch.where((values >= 0) & (values < size), values, torch.full_like(values, UNK))

    @torch.no_grad()
    def predict_job_scores(self, user_id: int, job_ids: Sequence[int], skill_ids: Sequence[int],
                           location_id: int, company_id: int) -> dict[int, float]:
        """Probability that ``user_id`` applies to each of ``job_ids`` -> {job_id: score}, in one batch."""
        if len(job_ids) == 0:
            return {}
        n, max_len = len(job_ids), self.feature_map.max_len
        skills = self._index("skill", list(skill_ids)[:max_len])
        multi = torch.full((n, 1, max_len), PAD, dtype=torch.int64)
        multi[:, 0, : len(skills)] = skills
        cat = torch.stack([
            self._index("user", [user_id] * n), self._index("job", job_ids),
            self._index("location", [location_id] * n), self._index("company", [company_id] * n),
        ], dim=1)  # (n, 4) in [user_id, job_id, location, company] order
        dense = torch.zeros((n, 0))
        was_training = self.training
        self.eval()
        scores = torch.sigmoid(self(cat, multi, dense)).tolist()
        self.train(was_training)
        return {job: score for job, score in zip(job_ids, scores)}
