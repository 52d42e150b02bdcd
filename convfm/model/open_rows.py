"""A contiguous copy of the job sides of the rows a service ranks again and again: the jobs open now.

A catalog keeps every job it has known (the training data's, the live catalog's expired ones), while a request
ranks only the jobs open at its time: 3,029 of the serving benchmark's 10,001, and a live catalog's closed rows
only grow. A scan over the whole catalog pays for every closed row; gathering the open rows out of the job sides
at each request costs about what it saves (strided reads of every piece). ``RowView`` gathers them once and is
patched in place when the job sides of some of its rows change (a job's age crosses a day bucket, ``put_jobs``
replaces it), so repeated requests scan a dense (n, ...) block of the open jobs alone. As jobs open and close
(a few a minute on a large board) the view keeps up without gathering anew: a job that opens is appended, one
that closes stays in the block, scanned and left out of the answer, until either kind is an eighth of the rows.

Notation as in ``convfm.model.network``: N catalog jobs, n rows of the view.
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch

from convfm.features.base import with_room
from convfm.model.network import Side
from convfm.model.sides import leaves, map_side, zip_map

# A view pays for itself while it leaves out enough of the catalog: past this share of open rows the full scan
# (no copy, no gather) is kept. Measured on the 10k benchmark catalog, one user, one thread: 3,029 open rows
# scanned in 1.5 ms from a view against 3.3 ms for all 10,001 rows and 2.4-2.8 ms gathering them per request.
OPEN_SHARE_FOR_VIEW = 0.75


def rows_worth_a_view(mask: Optional[np.ndarray]) -> Optional[np.ndarray]:
    """The rows of ``mask`` (N,) bool (the jobs open now) to scan through a ``RowView``, or None when the full
    scan costs less (no mask, or over ``OPEN_SHARE_FOR_VIEW`` of the catalog open)."""
    if mask is None or mask.sum() > OPEN_SHARE_FOR_VIEW * len(mask):
        return None
    return np.flatnonzero(mask)


class RowView:
    """Job sides (n, ...) of catalog ``rows`` (n,), exact at the ranker's ``version``."""

    def __init__(self, ranker: Any, rows: np.ndarray) -> None:
        self.rows = np.array(rows, dtype=np.int64)  # a copy: ``serves`` compares the caller's next rows to it
        index = torch.as_tensor(self.rows, device=ranker.device)
        self._room: Side = map_side(lambda t: t[index].contiguous(), ranker.job_side)  # appends double it
        self.job_side: Side = self._room  # (n, ...): the first n rows of the room
        self.version = ranker.version
        self._index: Optional[tuple[dict[str, Any], torch.Tensor]] = None  # built at its first use
        self._position: Optional[np.ndarray] = None  # (N,) catalog row -> row of the view, -1 when absent

    def cover(self, ranker: Any, rows: np.ndarray) -> Optional[np.ndarray | slice]:
        """Where catalog ``rows`` are in this view (a slice of all when it holds exactly them), appending those
        it lacks -> None when the rows it lacks, or those it holds that are not asked for, are over an eighth
        of ``rows``: gather anew then. Call after ``catch_up``."""
        if self.serves(rows):
            return slice(None)
        if self._position is None or len(self._position) < ranker.n_jobs:  # the catalog grew since
            self._position = np.full(ranker.n_jobs, -1, dtype=np.int64)
            self._position[self.rows] = np.arange(len(self.rows))
        at = self._position[rows]
        missing = np.unique(rows[at < 0])  # (rows may repeat: the live evaluation's unknown jobs)
        if len(missing) > len(rows) // 8 or len(self.rows) + len(missing) - len(rows) > len(rows) // 8:
            return None
        if len(missing):
            self._append(ranker, missing)
            at = self._position[rows]
        return at

    def _append(self, ranker: Any, rows: np.ndarray) -> None:
        """Add catalog ``rows`` (k,), absent from the view, at its end; scored from their lists until the
        pair-match indexes are built anew (they index the rows before)."""
        n, k = len(self.rows), len(rows)
        self._room = zip_map(lambda tensors: with_room(tensors[0], n + k), [self._room])
        source = torch.as_tensor(rows, device=ranker.device)
        for mine, theirs in zip(leaves(self._room), leaves(ranker.job_side)):
            mine[n : n + k] = theirs[source]
        self.job_side = map_side(lambda t: t[: n + k], self._room)
        self.rows = np.concatenate([self.rows, rows])
        self._position[rows] = np.arange(n, n + k)
        self._mark_stale(ranker, np.arange(n, n + k))

    def _mark_stale(self, ranker: Any, positions: np.ndarray) -> None:
        """Rows of the view whose lists the pair-match indexes do not hold as they are; past an eighth of the
        view, the indexes are built anew at their next use."""
        if self._index is not None and len(positions):
            stale = torch.unique(torch.cat([self._index[1], torch.as_tensor(positions, device=ranker.device)]))
            self._index = None if len(stale) > len(self.rows) // 8 else (self._index[0], stale)

    def match_index(self, ranker: Any) -> tuple[dict[str, Any], torch.Tensor]:
        """The pair-match terms' inverted indexes over this view's rows (``CatalogMatchTerms.match_indexes``)
        and the positions they do not hold as they are, scored from their lists directly: jobs replaced since
        (their lists may differ) and jobs appended."""
        if self._index is None:
            self._index = ranker.match_indexes(self.rows), torch.zeros(0, dtype=torch.int64, device=ranker.device)
        return self._index

    def serves(self, rows: np.ndarray) -> bool:
        """Whether this view holds exactly ``rows``."""
        return len(rows) == len(self.rows) and np.array_equal(rows, self.rows)

    def catch_up(self, ranker: Any) -> bool:
        """Copy the job sides changed since this view's version into it -> False when the ranker cannot name
        them (its change log is shorter) or they are over a quarter of the view: gather anew then. Rows whose
        lists may have changed (``put_jobs``) are scored from their lists until the indexes are built anew."""
        if self.version == ranker.version:
            return True
        changed = ranker.changed_since(self.version)
        if changed is None:
            return False
        positions = np.flatnonzero(np.isin(self.rows, changed))
        if len(positions) > len(self.rows) // 4:
            return False
        if len(positions):
            source = torch.as_tensor(self.rows[positions], device=ranker.device)
            target = torch.as_tensor(positions, device=ranker.device)
            for mine, theirs in zip(leaves(self.job_side), leaves(ranker.job_side)):
                mine[target] = theirs[source]
            relisted = ranker.changed_since(self.version, lists=True)
            self._mark_stale(ranker, np.flatnonzero(np.isin(self.rows, relisted)))
        self.version = ranker.version
        return True
