"""A contiguous copy of the job sides of the rows a service ranks again and again: the jobs open now.

A catalog keeps every job it has known (the training data's, the live catalog's expired ones), while a request
ranks only the jobs open at its time: 3,029 of the serving benchmark's 10,001, and a live catalog's closed rows
only grow. A scan over the whole catalog pays for every closed row; gathering the open rows out of the job sides
at each request costs about what it saves (strided reads of every piece). ``RowView`` gathers them once and is
patched in place when the job sides of some of its rows change (a job's age crosses a day bucket, ``put_jobs``
replaces it), so repeated requests scan a dense (n, ...) block of the open jobs alone.

Notation as in ``convfm.model.network``: N catalog jobs, n rows of the view.
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch

from convfm.model.network import Side
from convfm.model.sides import leaves, map_side

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
        self.job_side: Side = map_side(lambda t: t[index].contiguous(), ranker.job_side)
        self.version = ranker.version
        self._index: Optional[tuple[dict[str, Any], torch.Tensor]] = None  # built at its first use

    def match_index(self, ranker: Any) -> tuple[dict[str, Any], torch.Tensor]:
        """The pair-match terms' inverted indexes over this view's rows (``CatalogMatchTerms.match_indexes``)
        and the positions patched since they were built (scored from their lists directly: a replaced job's
        lists may differ)."""
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
            relisted = np.flatnonzero(np.isin(self.rows, ranker.changed_since(self.version, lists=True)))
            if self._index is not None and len(relisted):  # past an eighth of the view stale, built anew when used
                stale = torch.unique(torch.cat([self._index[1], torch.as_tensor(relisted, device=ranker.device)]))
                self._index = None if len(stale) > len(self.rows) // 8 else (self._index[0], stale)
        self.version = ranker.version
        return True
