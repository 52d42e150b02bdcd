"""The skill-match term: a pair feature of the user's and the job's skill lists, which per-side embeddings miss.

Notation as in ``convfm.model.network``: B batch, Fm multi fields, L list length, U users, N jobs.
"""
from __future__ import annotations

import torch
from torch import nn

from convfm.features.fields import PAD, UNK, FeatureMap


NAMES = ("user_skills", "job_skills")


class SkillMatch(nn.Module):
    """A learned logit term w . [Jaccard overlap, log1p(shared count)] of the user's and the job's skill lists
    (two multi-valued fields over one vocabulary): a pair feature, which pooled per-side embeddings miss. Unknown
    skills (UNK) never match; padding is no skill. Built only for feature maps with both fields (``applies``)."""

    def __init__(self, feature_map: FeatureMap) -> None:
        super().__init__()
        multi = feature_map.of_kind("multi")
        names = [f.name for f in multi]
        self.columns = tuple(names.index(n) for n in NAMES)  # in the (B, Fm, L) multi tensor
        self.length = max(multi[i].max_len for i in self.columns)
        self.vocab = max(multi[i].size for i in self.columns)
        self.weight = nn.Parameter(torch.zeros(2))

    @staticmethod
    def applies(feature_map: FeatureMap) -> bool:
        names = {f.name for f in feature_map.of_kind("multi")}
        return all(n in names for n in NAMES)

    def lists(self, multi: torch.Tensor, left: bool) -> torch.Tensor:
        """multi (R, Fm, L) -> the user's (left) or the job's skill ids (R, max_len), padded to one length."""
        ids = multi[:, self.columns[0 if left else 1]]  # (R, L)
        return nn.functional.pad(ids, (0, self.length - ids.shape[1]))

    def _shared(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Known ids of ``a`` found in ``b``: (..., L) lists broadcast on their leading dims -> (...)."""
        if a.dim() == 3 and a.shape[1] == 1 and b.dim() == 3 and b.shape[0] == 1:  # users (U, 1) x jobs (1, n)
            hot = torch.zeros(a.shape[0], self.vocab, dtype=torch.bool, device=a.device)
            hot.scatter_(1, a[:, 0], a[:, 0] > UNK)  # (U, V): the user's known skills
            return hot[:, b[0]].sum(-1)  # (U, n, L) -> (U, n)
        return ((a[..., :, None] == b[..., None, :]) & (a > UNK)[..., :, None]).any(-1).sum(-1)

    def term(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """The logit term of user lists ``a`` and job lists ``b`` (..., L) -> (...)."""
        shared = self._shared(a, b).float()
        union = ((a != PAD).sum(-1) + (b != PAD).sum(-1)).float() - shared
        return self.weight[0] * shared / union.clamp(min=1) + self.weight[1] * torch.log1p(shared)

    def forward(self, multi: torch.Tensor) -> torch.Tensor:
        """multi (B, Fm, L) -> (B,)."""
        return self.term(multi[:, self.columns[0]], multi[:, self.columns[1]])
