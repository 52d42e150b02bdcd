"""ConvFM: field embeddings -> Conv1D over the field axis, FM second-order term, linear term and deep MLP.

Notation: B batch, F fields (FeatureMap order), Fc/Fm/Fd categorical/multi/dense fields, L list length,
W total dense width, D embedding size, C conv filters;
for a field axis cut in two groups: R rows of one group, Fg its fields, H1 width of the first MLP layer,
Pm conv positions whose window crosses the cut.
``forward`` returns logits; the sigmoid lives in the loss and in serving. ``PairMatch`` terms add pair features:
what the user's skills, or the user's recent jobs, share with the job. The field embedding (the table
lookups, and the L2 penalty of the rows a batch reads) is ``convfm.model.embedding``.

Each part also says how its output splits over a field axis cut in two groups (``side`` / ``combine``;
``DeepHead.split``) and ``ConvFM.split`` composes them, so ranking (``convfm.model.ranking``) precomputes the job
group once per catalog without re-deriving any part's math; ``tests/convfm/test_model.py`` checks every split
against its part's forward.
"""
from __future__ import annotations

import functools
from typing import NamedTuple, Optional, Sequence, Union

import torch
from torch import nn

from convfm.config import ModelConfig
from convfm.errors import ConfigError
from convfm.features.extra_fields import history_pairs, shared_pairs
from convfm.features.fields import FeatureMap
from convfm.model.embedding import FieldEmbedding, IdDropout, LookupPlan
from convfm.model.pair_match import HISTORY_PAIRS, PROFILE_PAIRS, SKILL_PAIRS, PairMatch


class FMSide(NamedTuple):
    """One field group's share of the FM term, per row."""

    within: torch.Tensor  # (R,) the pairs inside the group
    total: torch.Tensor  # (R, D) sum of the group's embeddings: the cross pairs are <total_left, total_right>


class FMInteraction(nn.Module):
    """Second-order FM term: 0.5 * sum_d((sum_f e_f)^2 - sum_f e_f^2) = sum over field pairs <e_i, e_j>.

    Over two field groups it is the pairs inside each group plus <sum of one, sum of the other>.
    """

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        """emb (B, F, D) -> (B,)."""
        return self.side(emb).within

    def side(self, emb: torch.Tensor) -> FMSide:
        """emb (R, Fg, D), one group's fields -> its FMSide."""
        total = emb.sum(dim=1)  # (R, D)
        sum_of_squares = emb.pow(2).sum(dim=1)  # (R, D)
        return FMSide(0.5 * (total.pow(2) - sum_of_squares).sum(dim=1), total)

    @staticmethod
    def combine(left: FMSide, right: FMSide) -> torch.Tensor:
        """Two groups' sides, broadcast on their leading dims -> the FM term (...). Every left row against every
        right row ((1, D) x (n, D), or (U, 1, D) x (1, n, D): a catalog scan) takes the cross pairs as one matrix
        product, not a (U, n, D) temporary summed (one user's 10k scan: 0.31 -> 0.08 ms)."""
        a, b = left.total, right.total
        if (a.dim() == b.dim() == 2 and len(a) == 1) or (a.dim() == b.dim() == 3 and a.shape[1] == b.shape[0] == 1):
            shape = torch.broadcast_shapes(left.within.shape, right.within.shape)  # (n,) or (U, n)
            cross = a.reshape(-1, a.shape[-1]) @ b.reshape(-1, b.shape[-1]).T  # (1 or U, n)
            return cross.view(shape).add_(left.within).add_(right.within)
        return left.within + right.within + (a * b).sum(-1)

    @staticmethod
    def pairs(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
        """The terms the FM sums, <e_i, e_j>: left (..., Fl, D), right (..., Fr, D) -> (..., Fl, Fr)."""
        return left @ right.transpose(-1, -2)


class ConvSide(NamedTuple):
    """One field group's share of the conv features, per row; None where the group has no such position."""

    inside: Optional[torch.Tensor]  # (R, C) max after ReLU over the positions that see only this group
    crossing: Optional[tuple[torch.Tensor, ...]]  # Pm x (R, C) pre-activations where the window crosses the cut
    # (left: + bias), one contiguous tensor per position: a scan reads each in one stream (over a strided
    # (R, Pm, C) view the conv step of a 100k-job scan took ~25% longer, docs/SERVING.md)


class FieldConv(nn.Module):
    """Conv1D over the field axis (embedding dims as channels), ReLU, global max-pool over fields.

    Before the ReLU the conv is affine in E: over a field axis cut in two, a position whose window sees one
    group depends on that group alone, and each of the kernel - 1 positions around the cut is the sum of the
    two groups' shares (each computed with the other group zero, the bias counted once).
    """

    def __init__(self, dim: int, filters: int, kernel_size: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(dim, filters, kernel_size, padding=kernel_size // 2)

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        """emb (B, F, D) -> (B, C)."""
        positions = torch.relu(self.conv(emb.transpose(1, 2)))  # (B, C, F)
        return positions.amax(dim=2)

    def side(self, group: torch.Tensor, cut: int, fields: int, left: bool) -> ConvSide:
        """group (R, Fg, D): fields [0, cut) (``left``) or [cut, fields) of the field axis -> its ConvSide."""
        padded = group.new_zeros(group.shape[0], fields, group.shape[2])  # (R, F, D), the other group zero
        padded[:, slice(0, cut) if left else slice(cut, fields)] = group
        positions = self.conv(padded.transpose(1, 2))  # (R, C, F), bias included
        half = self.conv.kernel_size[0] // 2
        inside = [p for p in range(fields) if (p + half < cut if left else p - half >= cut)]
        crossing = [p for p in range(fields) if cut - half <= p < cut + half]
        bias = 0 if left else self.conv.bias  # the left group carries the bias
        shares = tuple((positions[:, :, p] - bias).contiguous() for p in crossing) or None  # Pm x (R, C)
        return ConvSide(torch.relu(positions[:, :, inside]).amax(2) if inside else None, shares)

    @staticmethod
    def combine(left: ConvSide, right: ConvSide) -> torch.Tensor:
        """Two groups' sides, broadcast on their leading dims -> the conv features (..., C). The max over the
        crossing positions is taken before the ReLU (it commutes with max), and no ReLU is needed beside an
        inside piece (already >= 0): a scan's widest tensors then take one pass each, not four, and every step
        after the first writes in place (a fresh tensor per op made the exact scan up to 20% slower; SERVING.md)."""
        inside = [t for t in (left.inside, right.inside) if t is not None]
        if left.crossing is None:
            return functools.reduce(torch.maximum, inside)
        shares = list(zip(left.crossing, right.crossing))  # Pm x ((..., C), (..., C))
        out = torch.add(*shares[0])  # (..., C), the broadcast shape: every later step writes into it
        for a, b in shares[1:]:
            out.clamp_(min=a + b)  # in place: max
        for piece in inside:
            out.clamp_(min=piece)
        return out if inside else out.relu_()


class Affine(NamedTuple):
    """x -> x @ weight.T + bias: a Linear with whatever affine layer followed it folded in."""

    weight: torch.Tensor  # (out, in)
    bias: torch.Tensor  # (out,)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, in) -> (N, out)."""
        return torch.addmm(self.bias, x, self.weight.T)


def _folded(layers: list[nn.Module], i: int) -> tuple[Affine, int]:
    """``layers[i]`` (a Linear) with an eval-mode BatchNorm1d right after it folded in -> (Affine, next index)."""
    linear = layers[i]
    weight = linear.weight.detach()
    bias = linear.bias.detach() if linear.bias is not None else weight.new_zeros(weight.shape[0])
    norm = layers[i + 1] if i + 1 < len(layers) else None
    if not isinstance(norm, nn.BatchNorm1d):
        return Affine(weight, bias), i + 1
    if norm.running_var is None or not norm.affine:
        raise ValueError(f"DeepHead layer {i + 1}: BatchNorm1d without running statistics or affine "
                         "parameters cannot be folded")
    scale = norm.weight.detach() / torch.sqrt(norm.running_var + norm.eps)  # (out,)
    return Affine(weight * scale[:, None], (bias - norm.running_mean) * scale + norm.bias.detach()), i + 2


class HeadSplit:
    """An eval-mode DeepHead with its input cut into column blocks x = [x_0, x_1, ...]:
    ``forward(x) == finish(sum_i partial(i, x_i))``. The first Linear (and the BatchNorm after it, affine in
    eval mode) is affine, so each block's share is computed on its own: ranking computes the job blocks once
    per catalog. Later layers run as they are (Linear + BatchNorm folded, Dropout is the identity in eval).
    Built by ``DeepHead.split``; it holds a copy of the weights, not a view of later training.
    """

    def __init__(self, first: Affine, widths: Sequence[int], rest: list[Union[Affine, nn.Module]]) -> None:
        self.blocks, self.bias, self.rest = first.weight.split(list(widths), dim=1), first.bias, rest

    def partial(self, block: int, x: torch.Tensor, onto: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x (..., width of ``block``) -> its share of the first layer (..., H1), plus ``onto`` (broadcast to that
        shape) when given; block 0 carries the bias."""
        if onto is not None and x.dim() == onto.dim() == 2 and len(onto) == len(x):
            share = torch.addmm(onto, x, self.blocks[block].T)  # one pass: no fresh product to add onto
        else:
            share = x @ self.blocks[block].T
            share = share if onto is None else share.add_(onto)
        return share + self.bias if block == 0 else share

    def finish(self, first: torch.Tensor) -> torch.Tensor:
        """The first layer's output (..., H1) -> logits (...); ``first`` is overwritten (ReLUs run in place)."""
        z = first.reshape(-1, first.shape[-1])  # (N, H1): layers such as BatchNorm1d take rows
        for layer in self.rest:
            z = z.relu_() if isinstance(layer, nn.ReLU) else layer(z)
        return z.view(first.shape[:-1])


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

    def scale_invariant_parameters(self) -> list[nn.Parameter]:
        """Weights and biases of the Linear layers that feed a BatchNorm, which undoes their scale and shift:
        weight decay cannot regularize them, it only shrinks their outputs until BatchNorm's eval statistics
        go wrong (at weight decay 5 the validation log loss jumped by up to 15% between epochs)."""
        layers = list(self.mlp)
        return [p for layer, after in zip(layers, layers[1:])
                if isinstance(layer, nn.Linear) and isinstance(after, nn.BatchNorm1d) for p in layer.parameters()]

    def split(self, widths: Sequence[int]) -> HeadSplit:
        """This head (eval mode) with its input cut into column blocks of ``widths``; ValueError when it cannot
        be cut exactly (training mode, or an input that does not go through a Linear first)."""
        if self.training:
            raise ValueError("DeepHead.split needs eval mode (BatchNorm running statistics, no dropout)")
        layers = list(self.mlp)
        if not isinstance(layers[0], nn.Linear):
            raise ValueError(f"DeepHead cannot be split by input columns: its first layer is "
                             f"{type(layers[0]).__name__}, not Linear")
        if sum(widths) != layers[0].in_features:
            raise ValueError(f"column blocks {list(widths)} do not add up to the input width {layers[0].in_features}")
        first, i = _folded(layers, 0)
        rest: list[Union[Affine, nn.Module]] = []
        while i < len(layers):
            if isinstance(layers[i], nn.Linear):
                layer, i = _folded(layers, i)
            else:
                layer, i = layers[i], i + 1
            if not isinstance(layer, nn.Dropout):
                rest.append(layer)
        return HeadSplit(first, widths, rest)


class ConvFM(nn.Module):
    """logit = linear + FM + deep, over the fields of a FeatureMap (+ the pair-match terms: ModelConfig.skill_match,
    history_match)."""

    def __init__(self, config: ModelConfig, feature_map: FeatureMap) -> None:
        super().__init__()
        if not feature_map.fields:
            raise ValueError("ConvFM needs at least one field")
        self.config, self.feature_map = config, feature_map
        dim, fields = config.embedding_dim, len(feature_map.fields)
        self.register_buffer("field_order", torch.tensor(feature_map.field_axis_order(), dtype=torch.int64))
        self.id_dropout = IdDropout(feature_map, config.id_dropout)
        self.embedding = FieldEmbedding(feature_map, dim, sparse=config.sparse_embeddings)
        self.linear = FieldEmbedding(feature_map, 1, sparse=config.sparse_embeddings)
        self.bias = nn.Parameter(torch.zeros(()))
        self.fm = FMInteraction()
        self.conv = FieldConv(dim, config.conv_filters, config.conv_kernel_size)
        self.deep = DeepHead(fields * dim + config.conv_filters, config.hidden_dims, config.dropout_rate)
        self.skill_match = PairMatch.build(feature_map, SKILL_PAIRS, "jaccard") if config.skill_match else None
        self.history_match = PairMatch.build(feature_map, HISTORY_PAIRS + history_pairs(feature_map), "share") \
            if config.history_match else None
        self.profile_match = PairMatch.build(feature_map, PROFILE_PAIRS + shared_pairs(feature_map), "jaccard") \
            if config.profile_match else None

    def pair_matches(self) -> list[PairMatch]:
        """The pair-match terms the model has (``ModelConfig.skill_match``, ``history_match``, ``profile_match``), in
        Side order."""
        return [m for m in (self.skill_match, self.history_match, self.profile_match) if m is not None]

    def match_pairs(self) -> list[tuple[PairMatch, int]]:
        """(term, pair index) of every pair of the pair-match terms, in the order of a Side's ``lists``."""
        return [(m, p) for m in self.pair_matches() for p in range(len(m.pairs))]

    def load_grown(self, published: "ConvFM") -> None:
        """Warm start from ``published``, of the same config over the same fields with vocabularies that grew
        (``FeatureMap.check_grown_from``): its vocabulary rows to the same values' indices
        (``FieldEmbedding.load_grown``), every other parameter and buffer as is; new rows keep their init."""
        changed = self.config.changed_from(published.config)
        if changed:
            raise ConfigError(f"warm start: model config field(s) {changed} differ from the published model's")
        self.feature_map.check_grown_from(published.feature_map, "warm start")
        tables = ("embedding.", "linear.")
        rest = {k: v for k, v in published.state_dict().items() if not k.startswith(tables)}
        self.load_state_dict({**self.state_dict(), **rest})
        self.embedding.load_grown(published.embedding)
        self.linear.load_grown(published.linear)

    def field_embeddings(self, cat: torch.Tensor, multi: torch.Tensor, dense: torch.Tensor,
                         plan: Optional[LookupPlan] = None) -> torch.Tensor:
        """cat (B, Fc), multi (B, Fm, L), dense (B, W) -> E (B, F, D) in FeatureMap order."""
        return self.embedding(cat, multi, dense, plan).index_select(1, self.field_order)

    def linear_term(self, cat: torch.Tensor, multi: torch.Tensor, dense: torch.Tensor,
                    plan: Optional[LookupPlan] = None) -> torch.Tensor:
        """First-order term incl. bias -> (B,)."""
        return self.linear(cat, multi, dense, plan).sum(dim=(1, 2)) + self.bias

    def field_terms(self, cat: torch.Tensor, multi: torch.Tensor,
                    dense: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per field, in FeatureMap order: E (B, F, D) and first-order weights (B, F) (their sum + bias is the
        linear term). Each field's entries depend on that field's inputs only; the logit on these alone."""
        plan = self.embedding.plan(cat, multi)  # one row lookup for both tables, as in forward
        weights = self.linear(cat, multi, dense, plan).squeeze(-1).index_select(1, self.field_order)  # (B, F)
        return self.field_embeddings(cat, multi, dense, plan), weights

    def interaction_terms(self, emb: torch.Tensor) -> torch.Tensor:
        """FM + deep parts of the logit from E (B, F, D) -> (B,)."""
        conv = self.conv(emb)  # (B, C)
        deep_in = torch.cat([emb.flatten(1), conv], dim=1)  # (B, F*D + C)
        return self.fm(emb) + self.deep(deep_in)

    def forward(self, cat: torch.Tensor, multi: torch.Tensor, dense: torch.Tensor,
                penalty: bool = False) -> Union[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """cat (B, Fc) int64, multi (B, Fm, L) int64, dense (B, W) float -> logits (B,).

        With ``penalty``, (logits, penalty ()): ||row||^2 summed over the embedding and first-order rows the
        batch read, / B (``convfm.model.embedding``), from this pass's lookups. Training asks for it through
        forward, so that a DDP wrapper sees the pass and all-reduces the gradients it adds. In training mode ids
        are dropped first (``IdDropout``)."""
        cat, multi = self.id_dropout(cat, multi)
        plan = self.embedding.plan(cat, multi)  # both tables have the same offsets: one plan per batch
        emb, first = (part.lookup(cat, multi, dense, plan, penalty) for part in (self.embedding, self.linear))
        logits = first.fields.sum(dim=(1, 2)) + self.bias + self.interaction_terms(
            emb.fields.index_select(1, self.field_order))  # E (B, F, D) in FeatureMap order
        for match in self.pair_matches():
            logits = logits + match(cat, multi)
        return (logits, (emb.squares + first.squares) / len(cat)) if penalty else logits

    @torch.no_grad()
    def pairwise_interactions(self, cat: torch.Tensor, multi: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        """<e_i, e_j> for every field pair, the FM term's parts: (B, F, F), zero diagonal."""
        emb = self.field_embeddings(cat, multi, dense)  # (B, F, D)
        pairs = self.fm.pairs(emb, emb)  # (B, F, F)
        return pairs - torch.diag_embed(torch.diagonal(pairs, dim1=1, dim2=2))

    def decay_exempt_parameters(self) -> list[nn.Parameter]:
        """Parameters weight decay leaves alone: the deep head's scale-invariant ones, and the pair-match terms'
        few weights (decayed, the skill match's stayed at a fifth of their size; a few numbers cannot overfit)."""
        return self.deep.scale_invariant_parameters() + [m.weight for m in self.pair_matches()]

    def sparse_parameters(self) -> list[nn.Parameter]:
        """Parameters that receive sparse gradients (need SparseAdam); empty unless sparse_embeddings."""
        if not self.config.sparse_embeddings:
            return []
        return [self.embedding.table.weight, self.linear.table.weight]

    def split(self, cut: int) -> "SplitLogit":
        """The logit over the field axis cut before field ``cut`` (ranking: user fields | job fields); eval mode.
        ValueError when a part cannot be split exactly."""
        return SplitLogit(self, cut)


class Side(NamedTuple):
    """One field group's share of the logit, per row: everything that does not need the other group."""

    linear: torch.Tensor  # (R,) first-order terms (the left group's include the bias)
    fm: FMSide
    conv: ConvSide
    deep: torch.Tensor  # (R, H1) share of the first MLP layer (the left group's include its bias)
    lists: Optional[tuple[torch.Tensor, ...]] = None  # (R, L) per pair of the pair-match terms: this group's lists


class SplitLogit:
    """ConvFM's logit over its field axis cut in two, left fields [0, cut) and right [cut, F), composed from the
    parts' splits: ``combine(side(x, left=True), side(x, left=False)) == model(x)`` up to float rounding.
    Built by ``ConvFM.split``; holds the eval-mode MLP weights of that moment.
    """

    def __init__(self, model: ConvFM, cut: int) -> None:
        self.model, self.fields = model, len(model.feature_map.fields)
        if not 0 < cut < self.fields:
            raise ValueError(f"a cut at field {cut} leaves a group empty ({self.fields} fields)")
        dim, filters = model.config.embedding_dim, model.config.conv_filters
        self.cut, self.head = cut, model.deep.split([cut * dim, (self.fields - cut) * dim, filters])

    def group(self, cat: torch.Tensor, multi: torch.Tensor, dense: torch.Tensor,
              left: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """cat (R, Fc), multi (R, Fm, L), dense (R, W) -> one group's E (R, Fg, D) and first-order weights
        (R, Fg); the other group's inputs may be anything (padding)."""
        emb, weights = self.model.field_terms(cat, multi, dense)  # (R, F, D), (R, F)
        own = slice(0, self.cut) if left else slice(self.cut, self.fields)
        return emb[:, own], weights[:, own]

    def side(self, cat: torch.Tensor, multi: torch.Tensor, dense: torch.Tensor, left: bool) -> Side:
        """Inputs as for ``group`` -> the group's Side (R rows)."""
        emb, weights = self.group(cat, multi, dense, left)  # (R, Fg, D), (R, Fg)
        linear = weights.sum(1) + self.model.bias if left else weights.sum(1)  # (R,)
        conv = self.model.conv.side(emb, self.cut, self.fields, left)
        matches = self.model.pair_matches()
        lists = tuple(t for m in matches for t in (m.user_lists(cat, multi) if left else m.job_lists(cat, multi)))
        return Side(linear, self.model.fm.side(emb), conv, self.head.partial(0 if left else 1, emb.flatten(1)),
                    lists or None)

    def combine(self, left: Side, right: Side) -> torch.Tensor:
        """Sides broadcast on their leading dims ((U, 1) x (1, N), (1,) x (N,) for one user, or (P,) x (P,))
        -> logits (...)."""
        conv = self.model.conv.combine(left.conv, right.conv)  # (..., C)
        first = self.head.partial(2, conv, onto=right.deep)  # (..., H1), fresh: the left side adds in place
        first += left.deep
        logits = self.head.finish(first)  # (...)
        logits += left.linear
        logits += right.linear
        logits += self.model.fm.combine(left.fm, right.fm)
        if left.lists is not None and right.lists is not None:  # (ranking adds them from the catalog's lists)
            for (match, p), a, b in zip(self.model.match_pairs(), left.lists, right.lists):
                logits = logits + match.term(p, a, b)
        return logits
