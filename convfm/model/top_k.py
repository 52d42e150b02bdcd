"""The best k of a catalog's logits, best first, exactly equal ones in catalog-row order."""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch


def best_first(logits: torch.Tensor, k: int, rows: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` highest of ``logits`` (n,) of catalog ``rows`` (n,; None: the positions) -> (rows, logits), best
    first. Exactly equal logits go to the lower row, so two identical jobs (one content under two ids the model
    does not know) come in one order however they were scored; logits apart by rounding keep their order."""
    k = min(k, len(logits))
    if k == 0:
        return np.zeros(0, dtype=np.int64), logits.new_zeros(0).cpu().numpy()
    top = torch.topk(logits, min(k + 1, len(logits)))  # one past k: a tie at the k-th place shows
    values, positions = top.values.cpu().numpy(), top.indices.cpu().numpy()
    if (np.diff(values) < 0).all():  # no two equal: their order is the logits' own
        return (positions[:k] if rows is None else rows[positions[:k]]), values[:k]
    tied = torch.nonzero(logits >= float(values[k - 1])).flatten()  # the k best, and any tied with the k-th
    values = logits[tied].cpu().numpy()
    keys = tied.cpu().numpy() if rows is None else rows[tied.cpu().numpy()]
    order = np.lexsort((keys, -values))[:k]
    return keys[order], values[order]
