"""Each recent user's logits over the whole catalog, kept exact while the catalog changes.

A feed is asked for again and again by the same user (reloads, the next page, another filter) while neither the
user's inputs nor most of the catalog change. The scan is most of a request's cost, so ``ScoreCache`` keeps the
last scores of each user's encoded row, keyed by that row's bytes: any change to the user (a logged positive in
the history, another profile) is another key. The catalog side moves under the entries (job ages cross a day
bucket, the live catalog puts jobs): the ranker's ``changed_since`` names the rows, and only those are rescored
before an entry is used, so every score is the one a fresh scan would give. An entry older than the ranker's
change log is scanned anew. Entries are evicted least recently used, within a byte budget (4 bytes per job).

Notation as in ``convfm.model.network``: U users, N jobs.
"""
from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import NamedTuple, Optional

import numpy as np
import torch

from convfm.features.fields import EncodedTable
from convfm.model.ranking import CatalogRanker

DEFAULT_BUDGET_MIB = 64  # per serving replica: 1,600 users of a 10,000-job catalog, 160 of 100,000


class _Entry(NamedTuple):
    version: int  # the ranker's version the logits are exact at
    logits: torch.Tensor  # (N then,); NaN where not scored (a scan of the open jobs alone)


def user_key(users: EncodedTable, row: int) -> bytes:
    """A digest of every encoded input of ``users`` row ``row`` (its shapes included)."""
    digest = hashlib.blake2b(digest_size=16)
    for part in (users.cat[row], users.multi[row], users.dense[row]):
        part = np.ascontiguousarray(part)
        digest.update(repr((part.dtype.str, part.shape)).encode())
        digest.update(part.tobytes())
    return digest.digest()


class ScoreCache:
    """``scores(users)`` = ``ranker.score_all(users)`` (ranker at its precomputed time), each user's catalog
    scan kept for the next request of the same inputs (see the module docstring). ``budget_bytes`` 0 keeps
    nothing. Not thread-safe: callers hold the lock under which the ranker's time moves."""

    def __init__(self, ranker: CatalogRanker, budget_bytes: int) -> None:
        if budget_bytes < 0:
            raise ValueError(f"budget_bytes must be >= 0, got {budget_bytes}")
        self.ranker, self.budget_bytes = ranker, int(budget_bytes)
        self._entries: OrderedDict[bytes, _Entry] = OrderedDict()
        self.stats = {"hits": 0, "misses": 0, "rescored_rows": 0}

    def __len__(self) -> int:
        return len(self._entries)

    def info(self) -> dict[str, int]:
        """Entries kept, the budget, and the counts of hits, misses and rows rescored for kept entries."""
        return {"entries": len(self), "budget_mib": self.budget_bytes // 2**20, **self.stats}

    def scores(self, users: EncodedTable, rows: Optional[np.ndarray] = None) -> torch.Tensor:
        """Logits (U, N) of every user against the whole catalog, or at least against catalog ``rows`` (sorted,
        unique: the jobs open now, scanned through the ranker's kept view) with NaN at rows never scored: kept
        rows brought up to date, the rest scanned in one pass."""
        ranker = self.ranker
        if not self.budget_bytes:  # nothing is kept
            self.stats["misses"] += len(users)
            return self._scan(users, rows)
        keys = [user_key(users, i) for i in range(len(users))]
        kept = [self._current(key, users, i, rows) for i, key in enumerate(keys)]
        missed = [i for i, logits in enumerate(kept) if logits is None]
        self.stats["hits"] += len(users) - len(missed)
        self.stats["misses"] += len(missed)
        out = torch.empty((len(users), ranker.n_jobs), device=ranker.device)
        for i, logits in enumerate(kept):
            if logits is not None:
                out[i] = logits
        if missed:
            out[missed] = self._scan(users.take(np.array(missed)), rows)
            for i in missed:
                self._keep(keys[i], _Entry(ranker.version, out[i].clone()))
        return out

    def _scan(self, users: EncodedTable, rows: Optional[np.ndarray]) -> torch.Tensor:
        """Fresh logits (U, N): the whole catalog, or ``rows`` alone (NaN elsewhere)."""
        if rows is None:
            return self.ranker.score_all(users)
        out = torch.full((len(users), self.ranker.n_jobs), torch.nan, device=self.ranker.device)
        out[:, torch.as_tensor(rows, device=out.device)] = self.ranker.score_all(users, rows, kept=True)
        return out

    def _current(self, key: bytes, users: EncodedTable, row: int, rows: Optional[np.ndarray]) -> torch.Tensor | None:
        """The kept logits of ``key`` at the ranker's version, exact at least at ``rows`` (default all), None
        when not kept: rows changed since are forgotten (NaN), and those of ``rows`` not scored are scored."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        changed = self.ranker.changed_since(entry.version)
        if changed is None:
            del self._entries[key]
            return None
        logits = entry.logits
        if len(logits) < self.ranker.n_jobs:  # the catalog grew: its new rows are among the changed ones
            logits = torch.cat([logits, logits.new_empty(self.ranker.n_jobs - len(logits))])
        logits[torch.as_tensor(changed, device=logits.device)] = torch.nan
        wanted = logits if rows is None else logits[torch.as_tensor(rows, device=logits.device)]
        missing = torch.isnan(wanted).nonzero()[:, 0].cpu().numpy()
        if rows is not None:
            missing = rows[missing]
        if len(missing) > len(wanted) // 4:  # a scan of all costs less than many rows
            del self._entries[key]
            return None
        if len(missing):
            logits[missing] = self.ranker.score_all(users.take(np.array([row])), missing)[0]
            self.stats["rescored_rows"] += len(missing)
        self._keep(key, _Entry(self.ranker.version, logits))
        return logits

    def _keep(self, key: bytes, entry: _Entry) -> None:
        self._entries[key] = entry
        self._entries.move_to_end(key)
        row_bytes = 4 * max(1, self.ranker.n_jobs)
        while self._entries and len(self._entries) * row_bytes > self.budget_bytes:
            self._entries.popitem(last=False)
