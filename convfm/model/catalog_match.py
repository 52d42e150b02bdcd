"""The pair-match terms of a catalog scan (``ConvFM.pair_matches``), a mixin of ``CatalogRanker``.

A term depends on what a user's list and a job's list share, so it cannot be precomputed per job like the rest
of the job side: the whole catalog reads each job field's inverted index (a user's few values find the jobs
holding them), and a few rows (or rows changed since the indexes were built) compare their lists directly.

Notation as in ``convfm.model.network``: U users, N jobs, K rows asked for, L list length.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Optional

import numpy as np
import torch

from convfm.data.batching import used_list_length
from convfm.features.fields import field_columns
from convfm.model.network import Side
from convfm.model.pair_match import Pair, PairMatch

PAIR_ELEMENTS = 1 << 18  # floats per (users, K, L) block of lists compared directly (~1 MB)
INDEX_ROWS = 8192  # job rows read per pass while building an inverted index


class CatalogMatchTerms:
    """The pair-match terms of ``CatalogRanker`` (its ``model``, ``jobs``, ``job_map``, ``n_jobs``, ``device``)."""

    def add_match_terms(self, logits: torch.Tensor, user_side: Side, job_rows: Optional[torch.Tensor] = None,
                        view: Optional[Any] = None) -> torch.Tensor:
        """``logits`` (U, N' <= N, or len(job_rows), or the rows of ``view``, a ``RowView``) of user sides against
        the catalog's first N' jobs (or ``job_rows``, or the view's rows) plus the pair-match terms
        (``ConvFM.pair_matches``), in place. The whole catalog, or a view, reads each job field's inverted index
        (its own for a view); a few rows compare their lists directly, as do rows changed since the indexes were
        built."""
        if not self._match_pairs:
            return logits
        with torch.inference_mode():
            if job_rows is not None:
                return logits.add_(self.pair_terms(user_side.lists, job_rows))
            indexes, stale = self._match_index if view is None else view.match_index(self)
            for (match, p), lists in zip(self._match_pairs, user_side.lists):
                if match.pairs[p].job_kind == "multi":
                    match.add_shared(p, logits, lists, *indexes[match.pairs[p].job], skip=stale)
                else:
                    match.add_shared_values(p, logits, lists, indexes[match.pairs[p].job], skip=stale)
            stale = stale[stale < logits.shape[1]]
            if len(stale):
                rows = stale if view is None else torch.as_tensor(view.rows, device=stale.device)[stale]
                logits[:, stale] += self.pair_terms(user_side.lists, rows)
            return logits

    def pair_terms(self, lists: tuple[torch.Tensor, ...], job_rows: torch.Tensor,
                   keep: Optional[Callable[[PairMatch, Pair], bool]] = None) -> torch.Tensor:
        """The pair-match terms (U, K) (those of the pairs ``keep`` accepts) of user sides' ``lists`` (each
        (U, L)) against catalog rows (K,), lists compared directly, a block of users at a time."""
        rows = job_rows.cpu().numpy()
        out = torch.zeros((len(lists[0]), len(rows)), device=self.device)
        for (match, p), a in zip(self._match_pairs, lists):
            if keep is not None and not keep(match, match.pairs[p]):
                continue
            b = self._job_lists(match.pairs[p].job, rows)  # (K, L)
            users = max(1, PAIR_ELEMENTS // max(1, b.numel() * a.shape[1]))
            for start in range(0, len(a), users):
                out[start : start + users] += match.term(p, a[start : start + users, None], b[None])
        return out

    @functools.cached_property
    def _match_pairs(self) -> list[tuple[PairMatch, int]]:
        """``ConvFM.match_pairs``, once per ranker."""
        return self.model.match_pairs()

    def _job_lists(self, field: str, rows: np.ndarray) -> torch.Tensor:
        """Job field ``field``'s ids in catalog ``rows`` (K,) -> (K, L) cut to the longest list among them, or
        (K, 1) for a categorical field."""
        kind, column = field_columns(self.job_map.fields)[field]
        if kind == "categorical":
            return torch.as_tensor(self.jobs.cat[rows, column : column + 1], device=self.device)
        lists = self.jobs.multi[rows, column]  # (K, max_len)
        return torch.as_tensor(lists[:, : used_list_length(lists[:, None])], device=self.device)

    @functools.cached_property
    def _match_index(self) -> tuple[dict[str, Any], torch.Tensor]:
        """``match_indexes`` of the whole catalog, and the rows changed since they were built (``put_jobs``:
        the indexes' view of them is stale)."""
        return self.match_indexes(np.arange(self.n_jobs)), torch.zeros(0, dtype=torch.int64, device=self.device)

    def match_indexes(self, rows: np.ndarray) -> dict[str, Any]:
        """Per job field of a pair-match term, over catalog ``rows`` (n,) (positions in ``rows``): its inverted
        index and each job's list size (n,) (a list field, ``PairMatch.index``) or its value per job (n,) (a
        categorical field), read from the encoded catalog."""
        indexes: dict[str, Any] = {}
        for match, p in self._match_pairs:
            field, kind = match.pairs[p].job, match.pairs[p].job_kind
            if field in indexes:
                continue
            if kind == "categorical":
                indexes[field] = self._job_lists(field, rows)[:, 0]  # (n,)
            else:
                indexes[field] = match.index(self._job_lists(field, rows[a : a + INDEX_ROWS])
                                             for a in range(0, len(rows), INDEX_ROWS))
        return indexes
