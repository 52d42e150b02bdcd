"""Pair-match terms: learned logit terms on what a user's field and a job's field share (the skills the user
lists; the skills, companies and locations of the user's recent jobs; the user's own location and experience
level), pair features that pooled per-side embeddings miss.

Notation as in ``convfm.model.network``: B batch, Fc categorical / Fm multi fields, L list length, U users, N jobs.
"""
from __future__ import annotations

from typing import Iterable, NamedTuple, Optional, Sequence

import torch
from torch import nn

from convfm.features.fields import PAD, UNK, FeatureMap

SKILL_PAIRS = (("user_skills", "job_skills"),)
HISTORY_PAIRS = (("history_skills", "job_skills"), ("history_companies", "company"),
                 ("history_locations", "job_location"))
PROFILE_PAIRS = (("user_location", "job_location"), ("user_experience", "job_experience"))
OVERLAPS = ("jaccard", "share")


class Pair(NamedTuple):
    """A user field and a job field over one vocabulary, and where the two sit in the model's inputs."""

    user: str
    job: str
    user_kind: str  # "multi" or "categorical" (a list of one value)
    user_column: int  # in the (B, Fm, L) multi tensor, or in the (B, Fc) cat tensor
    job_kind: str
    job_column: int


class PairMatch(nn.Module):
    """sum over pairs p of w_p . [overlap, log1p(shared)]: ``shared`` counts the user's known entries (UNK never
    matches, PAD is no entry) found among the job's, with multiplicity (a company three recent jobs had counts
    three times). ``overlap`` is "jaccard", shared / (|a| + |b| - shared), at most 1 (a set the user states,
    such as skills; for two single values, whether they are equal), or "share", shared / |a| (the share of the
    user's recent jobs' values the job has). Built over the pairs whose fields the feature map holds
    (``build``)."""

    def __init__(self, pairs: Sequence[Pair], overlap: str, vocab: int) -> None:
        super().__init__()
        if overlap not in OVERLAPS:
            raise ValueError(f"overlap must be one of {OVERLAPS}, got {overlap!r}")
        self.pairs, self.overlap, self.vocab = tuple(pairs), overlap, vocab
        self.weight = nn.Parameter(torch.zeros(2 * len(self.pairs)))  # (2P,): [overlap, log1p(shared)] per pair

    @staticmethod
    def build(feature_map: FeatureMap, names: Sequence[tuple[str, str]], overlap: str) -> Optional["PairMatch"]:
        """The term over the pairs of ``names`` whose two fields ``feature_map`` holds, over one vocabulary
        (each side multi-valued or categorical); None when no pair is there."""
        fields = {kind: {f.name: (i, f) for i, f in enumerate(feature_map.of_kind(kind))}
                  for kind in ("multi", "categorical")}
        where = {name: (kind, *found[name]) for kind, found in fields.items() for name in found}
        pairs, vocab = [], 0
        for user, job in names:
            if user not in where or job not in where:
                continue
            (user_kind, u, user_spec), (job_kind, j, job_spec) = where[user], where[job]
            if user_spec.vocab != job_spec.vocab:
                continue
            pairs.append(Pair(user, job, user_kind, u, job_kind, j))
            vocab = max(vocab, user_spec.size, job_spec.size)
        return PairMatch(pairs, overlap, vocab) if pairs else None

    def user_lists(self, cat: torch.Tensor, multi: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """cat (R, Fc), multi (R, Fm, L) -> each pair's user list: (R, L), or (R, 1) for a categorical field."""
        return tuple(_list(cat, multi, p.user_kind, p.user_column) for p in self.pairs)

    def job_lists(self, cat: torch.Tensor, multi: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """cat (R, Fc), multi (R, Fm, L) -> each pair's job list: (R, L), or (R, 1) for a categorical field."""
        return tuple(_list(cat, multi, p.job_kind, p.job_column) for p in self.pairs)

    @staticmethod
    def sizes(lists: torch.Tensor) -> torch.Tensor:
        """Entries per list (unknown ones included), (..., L) -> (...) float."""
        return (lists != PAD).sum(-1).float()

    def value(self, pair: int, shared: torch.Tensor, size_a: torch.Tensor, size_b: torch.Tensor) -> torch.Tensor:
        """Pair ``pair``'s term from shared counts and list sizes (broadcastable floats)."""
        if self.overlap == "jaccard":
            overlap = (shared / (size_a + size_b - shared).clamp(min=1)).clamp(max=1)
        else:
            overlap = shared / size_a.clamp(min=1)
        return self.weight[2 * pair] * overlap + self.weight[2 * pair + 1] * torch.log1p(shared)

    def term(self, pair: int, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Pair ``pair``'s term of user lists ``a`` and job lists ``b`` (..., L) broadcast on their leading dims
        -> (...): for pairs, batches and a few catalog rows (every entry compared). Whole catalogs go through
        ``index`` and ``add_shared``."""
        shared = ((a[..., :, None] == b[..., None, :]) & (a > UNK)[..., :, None]).any(-1).sum(-1).float()
        return self.value(pair, shared, self.sizes(a), self.sizes(b))

    def forward(self, cat: torch.Tensor, multi: torch.Tensor) -> torch.Tensor:
        """cat (B, Fc), multi (B, Fm, L) -> (B,)."""
        users, jobs = self.user_lists(cat, multi), self.job_lists(cat, multi)
        return sum(self.term(p, a, b) for p, (a, b) in enumerate(zip(users, jobs)))

    def index(self, chunks: Iterable[torch.Tensor]) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
        """Job lists, in row chunks (n, L) -> an inverted index, (starts (V + 1,), job rows (nnz,)): the rows
        holding value v are ``rows[starts[v]:starts[v + 1]]``, and the lists' sizes (N,). Built once per catalog
        and job field, a chunk at a time (a 1M x 50 id array would take 400 MB)."""
        values, rows, sizes, offset = [], [], [], 0
        for lists in chunks:
            ids = lists.sort(dim=1).values
            known = (ids > UNK) & torch.cat([ids.new_ones((len(ids), 1), dtype=torch.bool),
                                             ids[:, 1:] != ids[:, :-1]], dim=1)  # each known value once per job
            values.append(ids[known])
            rows.append((torch.arange(len(ids), device=ids.device)[:, None] + offset).expand_as(ids)[known])
            sizes.append(self.sizes(lists))
            offset += len(ids)
        values, rows = torch.cat(values), torch.cat(rows)
        order = torch.sort(values, stable=True).indices
        starts = torch.cat([values.new_zeros(1), torch.bincount(values, minlength=self.vocab).cumsum(0)])
        return (starts, rows[order]), torch.cat(sizes)

    def add_shared(self, pair: int, logits: torch.Tensor, a: torch.Tensor, index: tuple[torch.Tensor, torch.Tensor],
                   sizes: torch.Tensor, skip: Optional[torch.Tensor] = None) -> None:
        """Adds pair ``pair``'s term of user lists ``a`` (U, L) against the first N indexed rows to ``logits``
        (U, N), in place. Each user reads the rows of its own values, O(their jobs), not U x N x L comparisons;
        when those rows are few, only they are touched (the term is 0 elsewhere), else one dense pass adds it.
        Rows in ``skip`` (stale index rows) get nothing here."""
        starts, rows = index
        width, size_a = logits.shape[1], self.sizes(a)
        for u, ids in enumerate(a):
            ids, repeats = torch.unique(ids[ids > UNK], return_counts=True)
            if not len(ids):
                continue
            found = [rows[starts[v] : starts[v + 1]] for v in ids.tolist()]
            lengths = [len(f) for f in found]
            weights = torch.repeat_interleave(repeats.float(), torch.tensor(lengths, device=a.device))
            counts = torch.bincount(torch.cat(found), weights=weights, minlength=width)[:width]
            if skip is not None and len(skip):
                counts[skip[skip < width]] = 0
            if sum(lengths) * 4 > width:  # most jobs share a value: dense passes beat gathering the hits
                n = min(width, len(sizes))  # rows past the index: none counted (all in skip)
                logits[u, :n] += self.value(pair, counts[:n], size_a[u], sizes[:n])  # 0 where nothing is shared
            else:
                hit = counts.nonzero().squeeze(1)
                logits[u].index_add_(0, hit, self.value(pair, counts[hit], size_a[u], sizes[hit]))

    def add_shared_values(self, pair: int, logits: torch.Tensor, a: torch.Tensor, values: torch.Tensor,
                          skip: Optional[torch.Tensor] = None) -> None:
        """``add_shared`` for a categorical job field, read from its value per job (N,) instead of an index (one
        value per job: a few values hold most jobs, so an index would touch most rows anyway). A job's term
        depends on its value alone (a list of one: size 1; a job with none shares nothing, term 0), so each
        user's term per value (V,) is gathered at the jobs' values: two passes over the jobs, not seven (the
        four categorical pairs of a 10k scan: ~0.33 -> ~0.26 ms, one thread)."""
        width, size_a = min(logits.shape[1], len(values)), self.sizes(a)  # rows past the values: all in skip
        values = values[:width]
        for u, ids in enumerate(a):
            ids = ids[ids > UNK]
            if not len(ids):
                continue
            shared = torch.bincount(ids, minlength=self.vocab).float()  # (V,)
            term = self.value(pair, shared, size_a[u], shared.new_ones(()))[values]  # (N,), 0 where nothing is shared
            if skip is not None and len(skip):
                term[skip[skip < width]] = 0
            logits[u, :width] += term


def _list(cat: torch.Tensor, multi: torch.Tensor, kind: str, column: int) -> torch.Tensor:
    """One field's values as lists: multi (R, Fm, L) -> (R, L), or cat (R, Fc) -> (R, 1)."""
    return multi[:, column] if kind == "multi" else cat[:, column : column + 1]
