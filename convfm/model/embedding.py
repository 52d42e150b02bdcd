"""ConvFM's field embedding: the table lookups of a batch, and the L2 penalty of the rows they read.

Notation: B batch, Fc/Fm/Fd categorical/multi/dense fields, L list length, W total dense width, dim the
table width (D for the embedding, 1 for the first-order weights), V total vocabulary rows (all vocabs stacked),
U distinct rows a batch reads.

The penalty (``TrainConfig.embedding_l2``) covers only the rows a batch reads, as CTR libraries regularize
embeddings: a row's gradient stays zero unless the batch looks it up, so sparse gradients stay sparse and DDP
all-reduces nothing extra. It comes from the same lookups as the field vectors, never from a second pass.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import nn

from convfm.features.extra_fields import is_extra_number
from convfm.features.fields import PAD, UNK, FeatureMap
from convfm.features.job_fields import ID_FIELDS


class IdDropout(nn.Module):
    """Training only: each id, categorical or list entry of an id vocabulary (the vocabularies of
    ``ID_FIELDS``: users and jobs, so also the history's jobs), reads its vocabulary's unknown row with
    probability ``rate``. An id with no training example reads the unknown row (``fit_vocabularies``), as most
    users and jobs of a later period do on a job board: this is what trains that row."""

    def __init__(self, feature_map: FeatureMap, rate: float) -> None:
        super().__init__()
        self.rate = rate
        vocabs = {f.vocab for f in feature_map.fields if f.name in ID_FIELDS and f.kind != "dense"}
        for kind in ("categorical", "multi"):  # derived from the feature map: not saved with the weights
            reads = [f.vocab in vocabs for f in feature_map.of_kind(kind)]
            self.register_buffer(f"{kind}_ids", torch.tensor(reads, dtype=torch.bool), persistent=False)

    def forward(self, cat: torch.Tensor, multi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cat (B, Fc), multi (B, Fm, L) local ids -> the same with dropped ids set to UNK (as is in eval)."""
        if not self.training or self.rate == 0:
            return cat, multi
        return self._drop(cat, self.categorical_ids), self._drop(multi, self.multi_ids[:, None])

    def _drop(self, ids: torch.Tensor, fields: torch.Tensor) -> torch.Tensor:
        if not fields.any():  # no id field of this kind: draw nothing, so such a model trains as without it
            return ids
        drop = (torch.rand(ids.shape, device=ids.device) < self.rate) & fields & (ids != PAD)
        return torch.where(drop, torch.full_like(ids, UNK), ids)


class LookupPlan(NamedTuple):
    """Which table rows a batch reads: computed once per batch, shared by the embedding and the linear term."""

    unique: Optional[torch.Tensor]  # (U,) distinct global row ids (sparse tables); None: ``index`` is global
    index: torch.Tensor  # (B, Fc + Fm * L) every lookup: its position in ``unique``, or its global row id
    weights: torch.Tensor  # (B, Fm, L) 1 / non-padding count, 0 at padding: mean pooling as a weighted sum

    def counted(self) -> torch.Tensor:
        """(B, Fc + Fm * L): 1 for each lookup that reaches the output (every categorical one, each
        non-padding list entry), 0 for padding entries: the lookups the L2 penalty sums over."""
        entries = (self.weights > 0).flatten(1).to(torch.float32)  # (B, Fm * L)
        return torch.cat([entries.new_ones(len(self.index), self.index.shape[1] - entries.shape[1]), entries], 1)


class Lookup(NamedTuple):
    """One FieldEmbedding pass."""

    fields: torch.Tensor  # (B, Fc + Fm + Fd, dim), grouped by kind
    squares: Optional[torch.Tensor]  # () sum of ||row||^2 over the counted lookups; None unless asked


class FieldEmbedding(nn.Module):
    """All categorical and multi-valued fields share one (V, dim) table, offset per vocabulary.

    Fields naming the same vocabulary (user and job skills) share rows. ``dim=1`` gives the linear term's
    per-value weights. Multi-valued fields are mean-pooled over their non-padding entries.

    Two lookup paths, each the faster one for its gradient (``benchmarks/step_profile.py``):
    - dense: one gather of every lookup (~37k at batch 1024), then weighted pooling; the gradient is the whole
      (V, dim) table either way, and its zero-fill dominates.
    - sparse: the batch's ~3k distinct rows are read once and every lookup indexes those (lists pooled by
      ``embedding_bag``), so the sparse gradient holds U rows: nothing for SparseAdam to coalesce or DDP to
      all-reduce twice, and the (B, Fm, L, dim) tensor of list entries is never built.
    """

    def __init__(self, feature_map: FeatureMap, dim: int, sparse: bool = False) -> None:
        super().__init__()
        self.spans: dict[str, tuple[int, int]] = {}  # vocabulary -> (first row, size) in the stacked table
        total = 0
        for vocab, size in feature_map.vocab_sizes.items():
            self.spans[vocab], total = (total, size), total + size
        cat_fields, multi_fields = feature_map.of_kind("categorical"), feature_map.of_kind("multi")
        starts = {vocab: start for vocab, (start, _) in self.spans.items()}
        self.register_buffer("cat_offsets", torch.tensor([starts[f.vocab] for f in cat_fields], dtype=torch.int64))
        self.register_buffer("multi_offsets", torch.tensor([starts[f.vocab] for f in multi_fields], dtype=torch.int64))
        self.table = nn.Embedding(max(total, 1), dim, sparse=sparse)
        nn.init.normal_(self.table.weight, std=0.01)
        dense_widths = [f.width for f in feature_map.of_kind("dense")]
        self.dense_widths = dense_widths
        self.dense = nn.ModuleList(nn.Linear(w, dim, bias=False) for w in dense_widths)
        for field, layer in zip(feature_map.of_kind("dense"), self.dense):
            if is_extra_number(field):  # as the table's rows: at Linear's default (~0.7 for 2 inputs) three noise
                nn.init.normal_(layer.weight, std=0.01)  # numbers cost 0.03 ROC-AUC on a real-shaped log

    @torch.no_grad()
    def load_grown(self, published: "FieldEmbedding") -> None:
        """Warm start: ``published``'s rows, each to its value's index here, and its dense projections. Each of its
        vocabularies is the start of this one's (``Vocabulary.extended``), but stacked vocabularies start later
        when one before them grew; the rows of new values keep their initialisation."""
        for vocab, (start, size) in published.spans.items():
            mine, room = self.spans[vocab]
            if room < size:
                raise ValueError(f"vocabulary {vocab!r}: {room} rows here, {size} in the published table")
            self.table.weight[mine : mine + size] = published.table.weight[start : start + size]
        self.dense.load_state_dict(published.dense.state_dict())

    def plan(self, cat: torch.Tensor, multi: torch.Tensor) -> LookupPlan:
        """cat (B, Fc), multi (B, Fm, L) local ids -> the batch's LookupPlan."""
        ids = torch.cat([cat + self.cat_offsets, (multi + self.multi_offsets[:, None]).flatten(1)], dim=1)
        present = (multi != PAD).to(torch.float32)  # (B, Fm, L)
        weights = present / present.sum(2, keepdim=True).clamp(min=1.0)  # (B, Fm, L)
        if not self.table.sparse:
            return LookupPlan(None, ids, weights)
        unique, inverse = torch.unique(ids, return_inverse=True)  # (U,), (B, Fc + Fm * L)
        return LookupPlan(unique, inverse, weights)

    def forward(self, cat: torch.Tensor, multi: torch.Tensor, dense: torch.Tensor,
                plan: Optional[LookupPlan] = None) -> torch.Tensor:
        """cat (B, Fc), multi (B, Fm, L), dense (B, W) -> (B, Fc + Fm + Fd, dim), grouped by kind."""
        return self.lookup(cat, multi, dense, plan).fields

    def lookup(self, cat: torch.Tensor, multi: torch.Tensor, dense: torch.Tensor,
               plan: Optional[LookupPlan] = None, squares: bool = False) -> Lookup:
        """``forward``'s field vectors and, with ``squares``, the sum of ||row||^2 over every counted lookup
        (a row read k times counts k times), from the rows this pass read."""
        plan = self.plan(cat, multi) if plan is None else plan
        (batch, fc), (fm, length) = cat.shape, multi.shape[1:]
        total = None
        if plan.unique is None:
            vectors = self.table(plan.index)  # (B, Fc + Fm * L, dim)
            cat_vectors, multi_vectors = vectors.split([fc, fm * length], dim=1)  # (B, Fc|Fm*L, dim)
            weighted = multi_vectors.unflatten(1, (fm, length)) * plan.weights.unsqueeze(-1).to(multi_vectors.dtype)
            parts = [cat_vectors, weighted.sum(2)]  # (B, Fc, dim), (B, Fm, dim)
            if squares:
                total = (vectors.pow(2).sum(-1) * plan.counted()).sum()
        else:
            rows = self.table(plan.unique)  # (U, dim)
            width = max(length, 1)
            pooled = nn.functional.embedding_bag(  # (B * Fm, dim)
                plan.index[:, fc:].reshape(-1, width), rows, mode="sum",
                per_sample_weights=plan.weights.reshape(-1, width).to(rows.dtype))
            parts = [nn.functional.embedding(plan.index[:, :fc], rows), pooled.view(batch, fm, rows.shape[1])]
            if squares:  # each distinct row once, times how often the batch read it
                counted = plan.counted().flatten().to(rows.dtype)
                reads = rows.new_zeros(len(rows)).index_add_(0, plan.index.flatten(), counted)  # (U,)
                total = (reads * rows.pow(2).sum(-1)).sum()
        if self.dense_widths:
            chunks = torch.split(dense, self.dense_widths, dim=1)  # each (B, w)
            parts.append(torch.stack([layer(x) for layer, x in zip(self.dense, chunks)], dim=1))  # (B, Fd, dim)
        return Lookup(torch.cat(parts, dim=1), total)
