"""Retrieve-then-rerank for catalogs too large for one full scan per request.

Notation as in ``convfm.model.ranking``: U users, N catalog rows; here d job-side features per row, r index
dimensions, M fit rows, K candidates.

``CatalogRanker`` already holds every job's share of the logit (its ``Side``: linear and FM-within terms, the
FM sum, the conv shares, the first MLP layer's share). The logit of a user is a function of those d numbers
alone, linear in the FM sum and through the first MLP layer, nonlinear after it. The index keeps each job's
features standardized and projected on their top r principal directions, z_j (r,). Per request it fits the
user's logit as a linear function of z_j by least squares on the exact logits of M fixed rows (one small
combine), scans Z @ w for the top K rows, and the ranker scores those K exactly. A fixed inner product
<user vector, job vector> could only hold the FM term; the per-user fit also follows the MLP and conv parts
around that user. The pair-match terms (``convfm.model.pair_match``) are no function of z_j: the fit leaves
them out and the scan adds them exactly. ``benchmarks/retrieval.py`` measures recall@10 against the
exact full ranking, per size.
"""
from __future__ import annotations

from typing import Iterable, NamedTuple, Optional

import numpy as np
import torch

from convfm.features.fields import EncodedTable
from convfm.model.network import Side
from convfm.model.ranking import CatalogRanker
from convfm.model.sides import leaves
from convfm.model.top_k import best_first

# Rows per projection step when (re)indexing: (65536, d) float features stay ~100 MB with the default model.
INDEX_CHUNK = 1 << 16
MAX_CANDIDATES = 1_000_000  # the most a service or batch run may ask to re-rank per user
DIMS = 32  # index dimensions r by default: recall@10 1.0 at 10k-1M jobs (benchmarks/retrieval.py)


class Projection(NamedTuple):
    """Job-side features -> index coordinates: ((x - mean) / scale) @ basis."""

    mean: torch.Tensor  # (d,)
    scale: torch.Tensor  # (d,)
    basis: torch.Tensor  # (d, r)

    def __call__(self, features: torch.Tensor) -> torch.Tensor:
        """features (R, d) -> (R, r)."""
        return ((features - self.mean) / self.scale) @ self.basis


def job_features(ranker: CatalogRanker, rows: torch.Tensor) -> torch.Tensor:
    """The precomputed job sides of catalog ``rows`` (R,) flattened -> (R, d): every number of a job that its
    logit against any user depends on."""
    side = ranker.job_side._replace(lists=None)  # ids are not numbers (the pair-match terms are added exactly)
    return torch.cat([t[rows].reshape(len(rows), -1) for t in leaves(side)], dim=1)


def fit_projection(ranker: CatalogRanker, dims: Optional[int], rows: int = 20_000, seed: int = 0) -> Projection:
    """Top ``dims`` principal directions of the standardized job features of up to ``rows`` random catalog
    rows (row 0, the unknown job, left out); None: ``DIMS``, or fewer when the model or catalog has fewer."""
    if ranker.n_jobs < 2:
        raise ValueError("a retrieval index needs a catalog with at least one job besides row 0")
    generator = np.random.default_rng(seed)
    sample = generator.choice(np.arange(1, ranker.n_jobs), size=min(rows, ranker.n_jobs - 1), replace=False)
    with torch.inference_mode():
        x = job_features(ranker, torch.as_tensor(np.sort(sample), device=ranker.device))  # (S, d)
        mean, scale = x.mean(0), x.std(0).clamp_min(1e-6)
        _, _, vh = torch.linalg.svd((x - mean) / scale, full_matrices=False)  # vh (min(S, d), d)
    dims = min(DIMS, vh.shape[0]) if dims is None else dims
    if not 1 <= dims <= vh.shape[0]:
        raise ValueError(f"dims must be in [1, {vh.shape[0]}] for this model and catalog, got {dims}")
    return Projection(mean, scale, vh[:dims].T.contiguous())


class RetrievalIndex:
    """Candidate rows for a user from a projection of the ranker's job sides (see the module docstring).

    Built once per catalog load (``dims`` index dimensions, None: ``DIMS`` or as many as there are; ``fit_rows``
    rows whose exact logits fit each user's weights); ``projection`` reuses one fitted before, so that an index
    built later indexes rows the same way. ``add`` indexes rows the ranker's catalog gained or changed,
    ``remove`` blocks rows (expired jobs) from every result; row 0 (unknown job) is never returned.
    """

    def __init__(self, ranker: CatalogRanker, dims: Optional[int] = None, fit_rows: int = 2048, seed: int = 0,
                 projection: Optional[Projection] = None) -> None:
        self.ranker = ranker
        self.projection = fit_projection(ranker, dims, seed=seed) if projection is None else projection
        generator = np.random.default_rng(seed + 1)
        self.fit_rows = np.sort(generator.choice(np.arange(1, ranker.n_jobs), size=min(fit_rows, ranker.n_jobs - 1),
                                                 replace=False))
        self.coords = torch.empty((0, self.projection.basis.shape[1]), device=ranker.device)  # (N, r)
        self.blocked = torch.zeros(0, dtype=torch.bool, device=ranker.device)  # (N,)
        self.add(np.arange(ranker.n_jobs))

    def __len__(self) -> int:
        return len(self.coords)

    def add(self, rows: Iterable[int]) -> None:
        """Index catalog ``rows`` from the ranker's job sides: rows past the end extend the index (the ranker's
        catalog must hold them already), rows inside it are re-indexed (a job whose fields changed)."""
        rows = np.asarray(rows if isinstance(rows, np.ndarray) else list(rows), dtype=np.int64)
        if len(rows) and (rows.min() < 0 or rows.max() >= self.ranker.n_jobs):
            raise ValueError(f"rows must be catalog rows in [0, {self.ranker.n_jobs}): the ranker's catalog holds "
                             f"{self.ranker.n_jobs} rows; extend it before indexing, got rows up to {rows.max()}")
        grow = self.ranker.n_jobs - len(self.coords)
        if grow > 0:
            unindexed = np.arange(len(self.coords), self.ranker.n_jobs)
            if not np.isin(unindexed, rows).all():
                raise ValueError(f"rows {len(self.coords)}..{self.ranker.n_jobs - 1} of the ranker's catalog are "
                                 "not indexed: add every new row")
            self.coords = torch.cat([self.coords, self.coords.new_zeros((grow, self.coords.shape[1]))])
            self.blocked = torch.cat([self.blocked, self.blocked.new_zeros(grow)])
        self.blocked[0] = True
        with torch.inference_mode():
            for start in range(0, len(rows), INDEX_CHUNK):
                index = torch.as_tensor(rows[start : start + INDEX_CHUNK], device=self.ranker.device)
                self.coords[index] = self.projection(job_features(self.ranker, index))

    def at(self, time: int) -> np.ndarray:
        """Move the ranker to ``time`` (``CatalogRanker.at``) and re-index the jobs whose recency bucket changed
        -> those rows. Query through this, not the ranker, so the index follows the job ages."""
        changed = self.ranker.at(time)
        self.add(changed)
        return changed

    def remove(self, rows: Iterable[int]) -> None:
        """Never return catalog ``rows`` again (expired or withdrawn jobs); ``add`` indexes them anew."""
        rows = np.fromiter(rows, dtype=np.int64)
        if len(rows) and (rows.min() < 0 or rows.max() >= len(self)):
            raise ValueError(f"rows to remove must be indexed rows in [0, {len(self)}), got {rows.min()}..{rows.max()}")
        self.blocked[torch.as_tensor(rows, device=self.blocked.device)] = True

    def unblock(self, rows: Iterable[int]) -> None:
        """Return ``rows`` to the candidates (a job re-opened); row 0 stays out."""
        self.blocked[torch.as_tensor(np.fromiter(rows, dtype=np.int64), device=self.blocked.device)] = False
        self.blocked[0] = True

    # ------------------------------------------------------------------------------------------ query
    def user_weights(self, users: EncodedTable) -> torch.Tensor:
        """Per user, the least-squares fit of its exact logits (less the pair-match terms, which ``candidates``
        adds back exactly) on the fit rows' coordinates -> (U, r + 1), intercept first. A small ridge keeps the
        fit defined when coordinates are collinear."""
        return self._fit(users)[0]

    def _fit(self, users: EncodedTable) -> tuple[torch.Tensor, Side]:
        """``user_weights`` and the users' sides. The pair-match terms of the logits (which no job
        coordinate holds) are taken out of the fitted logits; ``candidates`` adds them back exactly."""
        with torch.inference_mode():
            side = self.ranker._side(users, "user")
        exact = self.ranker._score_all(side, self.fit_rows, pair_terms=False)  # (U, M)
        with torch.inference_mode():
            z = self.coords[torch.as_tensor(self.fit_rows, device=self.coords.device)]  # (M, r)
            design = torch.cat([z.new_ones((len(z), 1)), z], dim=1)  # (M, r + 1)
            gram = design.T @ design  # (r + 1, r + 1)
            ridge = 1e-4 * gram.diagonal().mean() * torch.eye(len(gram), device=gram.device)
            return torch.linalg.solve(gram + ridge, design.T @ exact.T).T, side  # (U, r + 1)

    def candidates(self, users: EncodedTable, count: int, exclude: Optional[list[Iterable[int]]] = None,
                   candidate_mask: Optional[np.ndarray] = None) -> torch.Tensor:
        """The ``count`` rows with the highest fitted logits per user -> (U, K). Blocked rows, each user's
        ``exclude`` rows and rows where ``candidate_mask`` (N,) is False are left out before the top K, so K is
        ``count`` unless fewer rows remain (then the fewest left to any of the users)."""
        weights, side = self._fit(users)  # (U, r + 1)
        with torch.inference_mode():
            approx = (self.coords @ weights[:, 1:].T).T  # (U, N); the intercept does not change the order
            self.ranker.add_match_terms(approx, side)  # exact: only the rows sharing a value with the user
            blocked = self.blocked.clone()
            if candidate_mask is not None:
                if len(candidate_mask) != len(self):
                    raise ValueError(f"candidate_mask has {len(candidate_mask)} rows, the index {len(self)}")
                blocked |= ~torch.as_tensor(np.asarray(candidate_mask, dtype=bool), device=blocked.device)
            approx[:, blocked] = -torch.inf
            for u, rows in enumerate(exclude or []):
                rows = np.fromiter(rows, dtype=np.int64)
                approx[u, torch.as_tensor(rows, device=approx.device)] = -torch.inf
            values, rows = torch.topk(approx, min(count, len(self)), dim=1)  # (U, K)
            available = int(torch.isfinite(values).sum(1).min())
            return rows[:, :available]

    def top_k(self, user: EncodedTable, k: int, count: int = 1000, exclude: Iterable[int] = (),
              candidate_mask: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray]:
        """Best ``k`` rows for one user among its ``count`` candidates, by the model's exact logits ->
        (rows, logits), best first, as ``CatalogRanker.top_k`` returns them."""
        if count < k:
            raise ValueError(f"count ({count}) must be at least k ({k}): the rerank picks k of the candidates")
        rows = self.candidates(user, count, [exclude], candidate_mask)[0].cpu().numpy()  # (K,)
        return best_first(self.ranker.score_all(user, job_rows=rows)[0], k, rows)  # (K,) logits
