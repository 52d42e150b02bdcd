"""The skill-match term: a pair feature of the user's and the job's skill lists, which per-side embeddings miss.

Notation as in ``convfm.model.network``: B batch, Fm multi fields, L list length, U users, N jobs.
"""
from __future__ import annotations

from typing import Iterable, Optional

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
        self.vocab = max(multi[i].size for i in self.columns)
        self.weight = nn.Parameter(torch.zeros(2))

    @staticmethod
    def applies(feature_map: FeatureMap) -> bool:
        names = {f.name for f in feature_map.of_kind("multi")}
        return all(n in names for n in NAMES)

    def lists(self, multi: torch.Tensor, left: bool) -> torch.Tensor:
        """multi (R, Fm, L) -> the user's (left) or the job's skill ids (R, L)."""
        return multi[:, self.columns[0 if left else 1]]

    @staticmethod
    def sizes(lists: torch.Tensor) -> torch.Tensor:
        """Skills per list (unknown ones included), (..., L) -> (...) float."""
        return (lists != PAD).sum(-1).float()

    def value(self, shared: torch.Tensor, size_a: torch.Tensor, size_b: torch.Tensor) -> torch.Tensor:
        """The term from shared counts and list sizes (broadcastable floats)."""
        union = (size_a + size_b - shared).clamp(min=1)
        return self.weight[0] * shared / union + self.weight[1] * torch.log1p(shared)

    def term(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """The logit term of user lists ``a`` and job lists ``b`` (..., L) broadcast on their leading dims ->
        (...): for pairs, batches and a few catalog rows (every element compared). Whole catalogs go through
        ``index`` and ``add_shared``. A skill listed twice by the user counts once, as the index counts it."""
        earlier = torch.ones(a.shape[-1], a.shape[-1], dtype=torch.bool, device=a.device).tril(-1)  # (L, L) j < i
        first = ~((a[..., :, None] == a[..., None, :]) & earlier).any(-1)  # (..., L) first listing of its skill
        known = (a > UNK) & first
        shared = ((a[..., :, None] == b[..., None, :]) & known[..., :, None]).any(-1).sum(-1).float()
        return self.value(shared, self.sizes(a), self.sizes(b))

    def index(self, chunks: Iterable[torch.Tensor]) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
        """Job lists, in row chunks (n, L) -> an inverted index, (starts (V + 1,), job rows (nnz,)): the rows
        of skill s are ``rows[starts[s]:starts[s + 1]]``, and the lists' sizes (N,). Built once per catalog, a
        chunk at a time (a 1M x 50 id array would take 400 MB)."""
        skills, rows, sizes, offset = [], [], [], 0
        for lists in chunks:
            ids = lists.sort(dim=1).values
            known = (ids > UNK) & torch.cat([ids.new_ones((len(ids), 1), dtype=torch.bool),
                                             ids[:, 1:] != ids[:, :-1]], dim=1)  # each known skill once per job
            skills.append(ids[known])
            rows.append((torch.arange(len(ids), device=ids.device)[:, None] + offset).expand_as(ids)[known])
            sizes.append(self.sizes(lists))
            offset += len(ids)
        skills, rows = torch.cat(skills), torch.cat(rows)
        order = torch.sort(skills, stable=True).indices
        starts = torch.cat([skills.new_zeros(1), torch.bincount(skills, minlength=self.vocab).cumsum(0)])
        return (starts, rows[order]), torch.cat(sizes)

    def add_shared(self, logits: torch.Tensor, a: torch.Tensor, index: tuple[torch.Tensor, torch.Tensor],
                   sizes: torch.Tensor, skip: Optional[torch.Tensor] = None) -> None:
        """Adds the term of user lists ``a`` (U, L) against the first N indexed rows to ``logits`` (U, N), in
        place. Each user reads the rows of its own skills, O(their jobs), not U x N x L comparisons, and only the
        rows sharing a skill are touched: the term is 0 elsewhere. Rows in ``skip`` (stale index rows) get
        nothing here."""
        starts, rows = index
        width, size_a = logits.shape[1], self.sizes(a)
        for u, ids in enumerate(a):
            ids = torch.unique(ids[ids > UNK]).tolist()
            if not ids:
                continue
            counts = torch.bincount(torch.cat([rows[starts[s] : starts[s + 1]] for s in ids]), minlength=width)
            counts = counts[:width]
            if skip is not None:
                counts[skip[skip < width]] = 0
            hit = counts.nonzero().squeeze(1)
            logits[u, hit] += self.value(counts[hit].float(), size_a[u], sizes[hit])

    def forward(self, multi: torch.Tensor) -> torch.Tensor:
        """multi (B, Fm, L) -> (B,)."""
        return self.term(multi[:, self.columns[0]], multi[:, self.columns[1]])
