"""Fast full-catalog ranking: everything that does not depend on the user is computed once per model load.

Notation as in ``convfm.model``: U users, N jobs, F = Fu + Fj fields (user fields first), D embedding size,
C conv filters, k kernel size (h = k // 2), H1 width of the first MLP layer, Pm mixed conv positions.

The logit of ConvFM splits exactly into user-only, job-only and cross parts:

- linear: bias + lin_u + lin_j;  FM: fm_u + fm_j + <sum_u, sum_j> (the FM identity over two field groups);
- conv over the field axis is linear before its ReLU, so position p is conv_u[p] + conv_j[p] - bias where
  conv_u/conv_j run on E with the other side's fields zeroed. Positions whose window covers only user fields
  (p + h < Fu) or only job fields (p - h >= Fu) are per-side; only the ~2h mixed positions need a pair;
- first MLP layer: W1 @ [flat(E_u), flat(E_j), conv] = h_u + h_j + W1_conv @ conv (BatchNorm in eval mode is
  affine and is folded into the Linear before it).

So a request costs one user-side pass plus, per job, the conv max over the mixed positions and the MLP from
the conv columns on: C*H1 + the rest of the MLP, instead of the whole network.
"""
from __future__ import annotations

from typing import Any, Iterable, NamedTuple, Optional, Sequence

import numpy as np
import torch
from torch import nn

from convfm.batching import FieldBatch, join_batches, table_tensors
from convfm.fields import PAD, EncodedTable, FeatureMap
from convfm.model import ConvFM

ELEMENT_BUDGET = 1 << 22  # floats per intermediate (U, chunk, width) tensor: ~16 MB


class SideParts(NamedTuple):
    """Per-row pieces of one side. lin/fm (R,), s (R, D), h (R, H1), mix (R, C, Pm) or None, only (R, C) or None."""

    lin: torch.Tensor
    fm: torch.Tensor
    s: torch.Tensor
    h: torch.Tensor
    mix: Optional[torch.Tensor]
    only: Optional[torch.Tensor]

    def map(self, fn) -> "SideParts":
        return SideParts(*(None if t is None else fn(t) for t in self))


def _zeros_side(feature_map: FeatureMap, rows: int, device: torch.device) -> FieldBatch:
    """Inputs for one side with every field padding/zero: (rows, Fc), (rows, Fm, L), (rows, W)."""
    multi = feature_map.of_kind("multi")
    length = max((f.max_len for f in multi), default=0)
    return FieldBatch(
        torch.full((rows, len(feature_map.of_kind("categorical"))), PAD, dtype=torch.int64, device=device),
        torch.full((rows, len(multi), length), PAD, dtype=torch.int64, device=device),
        torch.zeros((rows, feature_map.dense_width), dtype=torch.float32, device=device),
    )


def _folded_mlp(mlp: nn.Sequential) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(weight, bias) per Linear with the eval-mode BatchNorm after it folded in; ReLU between all but the last."""
    layers, modules = [], list(mlp)
    i = 0
    while i < len(modules):
        linear = modules[i]
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"unexpected MLP layout at {i}: {type(linear).__name__}")
        weight, bias = linear.weight.detach(), linear.bias.detach()
        if i + 1 < len(modules) and isinstance(modules[i + 1], nn.BatchNorm1d):
            bn = modules[i + 1]
            scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
            weight, bias = weight * scale[:, None], (bias - bn.running_mean) * scale + bn.bias.detach()
            i += 1
        layers.append((weight, bias))
        i += 1
        while i < len(modules) and isinstance(modules[i], (nn.ReLU, nn.Dropout)):
            i += 1
    return layers


class CatalogRanker:
    """Scores users against a whole job catalog with the job side precomputed (see the module docstring).

    ``model`` must be a ConvFM in eval mode (it is switched to eval); ``extractor`` a fitted
    JobFeatureExtractor. ``jobs`` overrides the catalog (default ``extractor.job_catalog``; row 0 is the
    unknown job and is never recommended).
    """

    def __init__(self, model: ConvFM, extractor: Any, jobs: Optional[EncodedTable] = None) -> None:
        self.model, self.extractor = model.eval(), extractor
        fmap = model.feature_map
        self.user_map, self.job_map = fmap.of_side("user"), fmap.of_side("job")
        self.fu, self.fj = len(self.user_map.fields), len(self.job_map.fields)
        if self.fu + self.fj != len(fmap.fields):
            raise ValueError("CatalogRanker needs a feature map of user and job fields only")
        self.device = next(model.parameters()).device
        self.dim = model.config.embedding_dim
        conv = model.conv.conv
        self.half = conv.kernel_size[0] // 2
        fields = self.fu + self.fj
        self.user_only = [p for p in range(fields) if p + self.half < self.fu]
        self.job_only = [p for p in range(fields) if p - self.half >= self.fu]
        self.mixed = [p for p in range(fields) if p not in self.user_only and p not in self.job_only]
        self.conv_bias = conv.bias.detach()
        layers = _folded_mlp(model.deep.mlp)
        (w1, self.b1), self.rest = layers[0], layers[1:]
        split = fields * self.dim
        self.w1_user, self.w1_job = w1[:, : self.fu * self.dim], w1[:, self.fu * self.dim : split]
        self.w1_conv = w1[:, split:]
        self.jobs = extractor.job_catalog if jobs is None else jobs
        self.n_jobs = len(self.jobs)
        with torch.inference_mode():
            parts = [self._job_parts(self.jobs.take(np.arange(a, min(a + 8192, self.n_jobs))))
                     for a in range(0, self.n_jobs, 8192)]
            self.job_parts = SideParts(*(None if p[0] is None else torch.cat(p) for p in zip(*parts)))

    # ------------------------------------------------------------------------------------- side passes
    def _embed(self, batch: FieldBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """E (B, F, D) and per-field linear weights (B, F), both in FeatureMap order."""
        model = self.model
        plan = model.embedding.plan(batch.cat, batch.multi)  # one row lookup for both tables, as in forward
        emb = model.field_embeddings(*batch, plan)
        lin = model.linear(*batch, plan).squeeze(-1).index_select(1, model.field_order)
        return emb, lin

    def _side_batch(self, table: EncodedTable, side: str) -> FieldBatch:
        own = table_tensors(table).to(self.device)
        other = _zeros_side(self.job_map if side == "user" else self.user_map, len(table), self.device)
        return join_batches([own, other] if side == "user" else [other, own])

    def _parts(self, emb: torch.Tensor, lin: torch.Tensor, own: slice, w1: torch.Tensor, side: str) -> SideParts:
        """Side parts from the full-width E of a batch where the other side's fields are zero."""
        e = emb[:, own]  # (R, F_side, D)
        s = e.sum(1)
        fm = 0.5 * (s.pow(2) - e.pow(2).sum(1)).sum(1)
        zeroed = torch.zeros_like(emb)
        zeroed[:, own] = e
        conv = self.model.conv.conv(zeroed.transpose(1, 2))  # (R, C, F), bias included
        mix = conv[:, :, self.mixed] if self.mixed else None
        if side == "job" and mix is not None:
            mix = mix - self.conv_bias[None, :, None]  # the user side keeps the bias
        only_positions = self.user_only if side == "user" else self.job_only
        only = torch.relu(conv[:, :, only_positions]).amax(2) if only_positions else None
        h = e.flatten(1) @ w1.T
        if side == "user":
            h = h + self.b1
        return SideParts(lin[:, own].sum(1), fm, s, h, mix, only)

    def _job_parts(self, jobs: EncodedTable) -> SideParts:
        emb, lin = self._embed(self._side_batch(jobs, "job"))
        return self._parts(emb, lin, slice(self.fu, None), self.w1_job, "job")

    def user_parts(self, users: EncodedTable) -> SideParts:
        """Everything user-dependent, once per request (U rows of the user side)."""
        emb, lin = self._embed(self._side_batch(users, "user"))
        return self._parts(emb, lin, slice(0, self.fu), self.w1_user, "user")

    # ------------------------------------------------------------------------------------------ combine
    def _combine(self, u: SideParts, j: SideParts) -> torch.Tensor:
        """Logits for broadcast-compatible user/job parts: leading dims (U, 1) x (1, N) or (P,) x (P,)."""
        logit = self.model.bias + u.lin + j.lin + u.fm + j.fm + (u.s * j.s).sum(-1)
        pieces = [t for t in (u.only, j.only) if t is not None]
        if u.mix is not None:
            pieces.append(torch.relu(u.mix + j.mix).amax(-1))
        conv = pieces[0]
        for piece in pieces[1:]:
            conv = torch.maximum(conv, piece)
        z = torch.relu(u.h + j.h + conv @ self.w1_conv.T)  # (..., H1)
        for i, (weight, bias) in enumerate(self.rest):
            z = torch.addmm(bias, z.reshape(-1, z.shape[-1]), weight.T).reshape(*z.shape[:-1], -1)
            if i < len(self.rest) - 1:
                z = torch.relu(z)
        return logit + z.squeeze(-1)

    def _chunk(self, users: int) -> int:
        width = max(self.b1.numel(), self.w1_conv.shape[1] * max(len(self.mixed), 1), self.dim)
        return max(1, ELEMENT_BUDGET // max(1, users * width))

    def score_all(self, users: EncodedTable, job_rows: Optional[np.ndarray] = None) -> torch.Tensor:
        """Logits (U, N) of every user against every catalog job (or against ``job_rows``)."""
        with torch.inference_mode():
            u = self.user_parts(users).map(lambda t: t[:, None])
            rows = None if job_rows is None else torch.as_tensor(job_rows, dtype=torch.int64, device=self.device)
            total = self.n_jobs if rows is None else len(rows)
            step, out = self._chunk(len(users)), []
            for start in range(0, total, step):
                index = slice(start, start + step) if rows is None else rows[start : start + step]
                out.append(self._combine(u, self.job_parts.map(lambda t: t[index][None])))
            return torch.cat(out, dim=1) if out else torch.zeros((len(users), 0), device=self.device)

    def score_pairs(self, users: EncodedTable, user_index: np.ndarray, job_rows: np.ndarray) -> torch.Tensor:
        """Logits (P,) of pairs (users row ``user_index[p]``, catalog row ``job_rows[p]``): one pass for all."""
        with torch.inference_mode():
            u = self.user_parts(users)
            ui = torch.as_tensor(user_index, dtype=torch.int64, device=self.device)
            ji = torch.as_tensor(job_rows, dtype=torch.int64, device=self.device)
            return self._combine(u.map(lambda t: t[ui]), self.job_parts.map(lambda t: t[ji]))

    def top_k(
        self,
        user: EncodedTable,
        k: int,
        exclude: Iterable[int] = (),
        candidate_mask: Optional[np.ndarray] = None,
        scores: Optional[torch.Tensor] = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Best ``k`` catalog rows for one user -> (rows, logits), best first. Row 0 (unknown job), rows in
        ``exclude`` and rows where ``candidate_mask`` (N,) is False are never returned. ``scores`` (N,)
        reuses logits already computed by ``score_all``."""
        logits = (self.score_all(user)[0] if scores is None else scores).clone()
        blocked = torch.zeros(self.n_jobs, dtype=torch.bool, device=logits.device)
        blocked[0] = True
        excluded = np.fromiter(exclude, dtype=np.int64)
        if len(excluded):
            blocked[torch.as_tensor(excluded, device=logits.device)] = True
        if candidate_mask is not None:
            blocked |= ~torch.as_tensor(np.asarray(candidate_mask, dtype=bool), device=logits.device)
        available = int((~blocked).sum())
        logits[blocked] = -torch.inf
        values, rows = torch.topk(logits, min(k, available))
        return rows.cpu().numpy(), values.cpu().numpy()

    # ---------------------------------------------------------------------------------------- reference
    def full_scores(self, users: EncodedTable, job_rows: Optional[np.ndarray] = None, chunk: int = 8192) -> torch.Tensor:
        """Reference: the model's own forward over every (user, job) pair -> (U, N). Slow; for tests/benchmarks."""
        rows = np.arange(self.n_jobs) if job_rows is None else np.asarray(job_rows)
        user_tensors = table_tensors(users).to(self.device)
        out = torch.empty((len(users), len(rows)), device=self.device)
        with torch.inference_mode():
            for start in range(0, len(rows), chunk):
                jobs = table_tensors(self.jobs.take(rows[start : start + chunk])).to(self.device)
                for i in range(len(users)):
                    user = FieldBatch(*(t[i : i + 1].expand(len(jobs.cat), *t.shape[1:]) for t in user_tensors))
                    out[i, start : start + len(jobs.cat)] = self.model(*join_batches([user, jobs]))
        return out

    # ------------------------------------------------------------------------------------------ explain
    def explain(self, user: EncodedTable, job_rows: Sequence[int], top: int = 3) -> list[dict[str, Any]]:
        """Per job: the user x job field pairs with the largest FM interaction <e_i, e_j> and the shared values
        (skills, location, ...) of fields that share a vocabulary. ``user`` is one row."""
        rows = np.asarray(job_rows, dtype=np.int64)
        if not len(rows):
            return []
        with torch.inference_mode():
            e_user = self._embed(self._side_batch(user, "user"))[0][0, : self.fu]  # (Fu, D)
            e_jobs = self._embed(self._side_batch(self.jobs.take(rows), "job"))[0][:, self.fu :]  # (m, Fj, D)
            pairs = torch.einsum("ud,mjd->muj", e_user, e_jobs).flatten(1).cpu().numpy()  # (m, Fu*Fj)
        names_u = [f.name for f in self.user_map.fields]
        names_j = [f.name for f in self.job_map.fields]
        user_values = self._values(user, 0, self.user_map)
        out = []
        for m, row in enumerate(rows):
            order = np.argsort(-pairs[m])[:top]
            chosen = [i for i in order if pairs[m, i] > 0] or list(order[:1])
            interactions = [{"user_field": names_u[i // self.fj], "job_field": names_j[i % self.fj],
                             "value": float(pairs[m, i])} for i in chosen]
            job_values = self._values(self.jobs, int(row), self.job_map)
            shared = {vocab: sorted(set(values) & set(job_values.get(vocab, ())), key=values.index)
                      for vocab, values in user_values.items()}
            out.append({"interactions": interactions, "matching_skills": shared.pop("skill", []),
                        "matching": {vocab: v for vocab, v in shared.items() if v}})
        return out

    def _values(self, table: EncodedTable, row: int, side: FeatureMap) -> dict[str, list[str]]:
        """Known (non-id) vocabulary values of one encoded row, per vocabulary."""
        values: dict[str, list[str]] = {}
        vocabs = self.extractor.vocabs
        groups = (("categorical", lambda i: table.cat[row, i : i + 1]), ("multi", lambda i: table.multi[row, i]))
        for kind, column in groups:
            for i, field in enumerate(side.of_kind(kind)):
                if field.vocab in ("user", "job") or field.vocab not in vocabs:
                    continue
                vocab, known = vocabs[field.vocab], values.setdefault(field.vocab, [])
                for name in map(vocab.decode, column(i)):
                    if name is not None and name not in known:
                        known.append(name)
        return values
