"""ConvFM: field embeddings -> Conv1D over the field axis, FM second-order term, linear term and deep MLP.

Notation: B batch, F fields (FeatureMap order), Fc/Fm/Fd categorical/multi/dense fields, L list length,
W total dense width, D embedding size, C conv filters, V total vocabulary rows (all vocabs stacked).
``forward`` returns logits; the sigmoid lives in the loss and in serving.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import nn

from convfm.config import ModelConfig
from convfm.fields import PAD, FeatureMap


class LookupPlan(NamedTuple):
    """Which table rows a batch reads: computed once per batch, shared by the embedding and the linear term."""

    unique: Optional[torch.Tensor]  # (U,) distinct global row ids (sparse tables); None: ``index`` is global
    index: torch.Tensor  # (B, Fc + Fm * L) every lookup: its position in ``unique``, or its global row id
    weights: torch.Tensor  # (B, Fm, L) 1 / non-padding count, 0 at padding: mean pooling as a weighted sum


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
        starts, total = {}, 0
        for vocab, size in feature_map.vocab_sizes.items():
            starts[vocab], total = total, total + size
        cat_fields, multi_fields = feature_map.of_kind("categorical"), feature_map.of_kind("multi")
        self.register_buffer("cat_offsets", torch.tensor([starts[f.vocab] for f in cat_fields], dtype=torch.int64))
        self.register_buffer("multi_offsets", torch.tensor([starts[f.vocab] for f in multi_fields], dtype=torch.int64))
        self.table = nn.Embedding(max(total, 1), dim, sparse=sparse)
        nn.init.normal_(self.table.weight, std=0.01)
        dense_widths = [f.width for f in feature_map.of_kind("dense")]
        self.dense_widths = dense_widths
        self.dense = nn.ModuleList(nn.Linear(w, dim, bias=False) for w in dense_widths)

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
        plan = self.plan(cat, multi) if plan is None else plan
        (batch, fc), (fm, length) = cat.shape, multi.shape[1:]
        if plan.unique is None:
            cat_vectors, multi_vectors = self.table(plan.index).split([fc, fm * length], dim=1)  # (B, Fc|Fm*L, dim)
            weighted = multi_vectors.unflatten(1, (fm, length)) * plan.weights.unsqueeze(-1).to(multi_vectors.dtype)
            parts = [cat_vectors, weighted.sum(2)]  # (B, Fc, dim), (B, Fm, dim)
        else:
            rows = self.table(plan.unique)  # (U, dim)
            width = max(length, 1)
            pooled = nn.functional.embedding_bag(  # (B * Fm, dim)
                plan.index[:, fc:].reshape(-1, width), rows, mode="sum",
                per_sample_weights=plan.weights.reshape(-1, width).to(rows.dtype))
            parts = [nn.functional.embedding(plan.index[:, :fc], rows), pooled.view(batch, fm, rows.shape[1])]
        if self.dense_widths:
            chunks = torch.split(dense, self.dense_widths, dim=1)  # each (B, w)
            parts.append(torch.stack([layer(x) for layer, x in zip(self.dense, chunks)], dim=1))  # (B, Fd, dim)
        return torch.cat(parts, dim=1)


class FMInteraction(nn.Module):
    """Second-order FM term: 0.5 * sum_d((sum_f e_f)^2 - sum_f e_f^2) = sum over field pairs <e_i, e_j>."""

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        """emb (B, F, D) -> (B,)."""
        square_of_sum = emb.sum(dim=1).pow(2)  # (B, D)
        sum_of_squares = emb.pow(2).sum(dim=1)  # (B, D)
        return 0.5 * (square_of_sum - sum_of_squares).sum(dim=1)


class FieldConv(nn.Module):
    """Conv1D over the field axis (embedding dims as channels), ReLU, global max-pool over fields."""

    def __init__(self, dim: int, filters: int, kernel_size: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(dim, filters, kernel_size, padding=kernel_size // 2)

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        """emb (B, F, D) -> (B, C)."""
        positions = torch.relu(self.conv(emb.transpose(1, 2)))  # (B, C, F)
        return positions.amax(dim=2)


class DeepHead(nn.Module):
    """MLP over [flattened embeddings, conv features] with BatchNorm/ReLU/Dropout, one logit out."""

    def __init__(self, in_dim: int, hidden_dims: tuple[int, ...], dropout: float) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for width in hidden_dims:
            layers += [nn.Linear(in_dim, width), nn.BatchNorm1d(width), nn.ReLU(), nn.Dropout(dropout)]
            in_dim = width
        layers.append(nn.Linear(in_dim, 1))
        self.mlp = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """features (B, F*D + C) -> (B,)."""
        return self.mlp(features).squeeze(1)


class ConvFM(nn.Module):
    """logit = linear + FM + deep, over the fields of a FeatureMap."""

    def __init__(self, config: ModelConfig, feature_map: FeatureMap) -> None:
        super().__init__()
        if not feature_map.fields:
            raise ValueError("ConvFM needs at least one field")
        self.config, self.feature_map = config, feature_map
        dim, fields = config.embedding_dim, len(feature_map.fields)
        self.register_buffer("field_order", torch.tensor(feature_map.field_axis_order(), dtype=torch.int64))
        self.embedding = FieldEmbedding(feature_map, dim, sparse=config.sparse_embeddings)
        self.linear = FieldEmbedding(feature_map, 1, sparse=config.sparse_embeddings)
        self.bias = nn.Parameter(torch.zeros(()))
        self.fm = FMInteraction()
        self.conv = FieldConv(dim, config.conv_filters, config.conv_kernel_size)
        self.deep = DeepHead(fields * dim + config.conv_filters, config.hidden_dims, config.dropout_rate)

    def field_embeddings(self, cat: torch.Tensor, multi: torch.Tensor, dense: torch.Tensor,
                         plan: Optional[LookupPlan] = None) -> torch.Tensor:
        """cat (B, Fc), multi (B, Fm, L), dense (B, W) -> E (B, F, D) in FeatureMap order."""
        return self.embedding(cat, multi, dense, plan).index_select(1, self.field_order)

    def linear_term(self, cat: torch.Tensor, multi: torch.Tensor, dense: torch.Tensor,
                    plan: Optional[LookupPlan] = None) -> torch.Tensor:
        """First-order term incl. bias -> (B,)."""
        return self.linear(cat, multi, dense, plan).sum(dim=(1, 2)) + self.bias

    def interaction_terms(self, emb: torch.Tensor) -> torch.Tensor:
        """FM + deep parts of the logit from E (B, F, D) -> (B,)."""
        conv = self.conv(emb)  # (B, C)
        deep_in = torch.cat([emb.flatten(1), conv], dim=1)  # (B, F*D + C)
        return self.fm(emb) + self.deep(deep_in)

    def forward(self, cat: torch.Tensor, multi: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        """cat (B, Fc) int64, multi (B, Fm, L) int64, dense (B, W) float -> logits (B,)."""
        plan = self.embedding.plan(cat, multi)  # both tables have the same offsets: one plan per batch
        emb = self.field_embeddings(cat, multi, dense, plan)  # (B, F, D)
        return self.linear_term(cat, multi, dense, plan) + self.interaction_terms(emb)

    @torch.no_grad()
    def pairwise_interactions(self, cat: torch.Tensor, multi: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        """<e_i, e_j> for every field pair, the FM term's parts: (B, F, F), zero diagonal."""
        emb = self.field_embeddings(cat, multi, dense)  # (B, F, D)
        pairs = emb @ emb.transpose(1, 2)  # (B, F, F)
        return pairs - torch.diag_embed(torch.diagonal(pairs, dim1=1, dim2=2))

    def sparse_parameters(self) -> list[nn.Parameter]:
        """Parameters that receive sparse gradients (need SparseAdam); empty unless sparse_embeddings."""
        if not self.config.sparse_embeddings:
            return []
        return [self.embedding.table.weight, self.linear.table.weight]
