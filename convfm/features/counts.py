"""What fitting a table extractor reads from its data, as partial counts that merge (Ray-free).

A fit is ``counts of the whole table -> extractor``. Counting one batch at a time and merging the partials in
row order gives the same counts, so the same fit runs in one process (``TableFeatureExtractor.fit``) or over
a dataset too large for one machine (``train.prepare_distributed``: batches counted in parallel, merged in order).

Value counts keep first-seen order (a vocabulary's order is part of the model) and are summed exactly.
Numeric statistics are (n, mean, m2) of the finite values, merged with Chan et al.'s pairwise update: one
batch gives numpy's own mean and std bit for bit; merged batches agree to floating-point rounding (~1e-15
relative), because the additions happen in another order.
"""
from __future__ import annotations

import dataclasses
import json
import math
from typing import Iterable, Mapping

import numpy as np


@dataclasses.dataclass(frozen=True)
class Moments:
    """Count, mean and sum of squared deviations of a numeric column's finite values."""

    n: int = 0
    mean: float = 0.0
    m2: float = 0.0

    @classmethod
    def of(cls, values: np.ndarray) -> "Moments":
        """Moments of ``values`` (float64, finite): ``mean`` and ``m2`` computed as ``np.std`` computes them."""
        if not len(values):
            return cls()
        mean = values.mean()
        return cls(len(values), float(mean), float(((values - mean) ** 2).sum()))

    def merged(self, other: "Moments") -> "Moments":
        if not other.n:
            return self
        if not self.n:
            return other
        n = self.n + other.n
        delta = other.mean - self.mean
        return Moments(n, self.mean + delta * other.n / n, self.m2 + other.m2 + delta * delta * self.n * other.n / n)

    def mean_std(self) -> list[float]:
        """[mean, std] as the extractor standardises with: no values -> mean 0; std 0 or undefined -> 1."""
        std = math.sqrt(self.m2 / self.n) if self.n > 1 else 0.0
        return [self.mean if self.n else 0.0, std if std > 0 else 1.0]


@dataclasses.dataclass
class TableCounts:
    """Per vocabulary column, value -> count in first-seen order; per numeric column, its ``Moments``; rows."""

    values: dict[str, dict[str, int]]
    moments: dict[str, Moments]
    rows: int = 0

    @classmethod
    def of(cls, tokens: Mapping[str, Iterable[str]], numbers: Mapping[str, np.ndarray], rows: int = 0
           ) -> "TableCounts":
        """Counts of each column's non-empty tokens and moments of each numeric column's finite values."""
        values = {}
        for column, column_tokens in tokens.items():
            counts: dict[str, int] = {}
            for token in column_tokens:
                if token:
                    counts[token] = counts.get(token, 0) + 1
            values[column] = counts
        moments = {column: Moments.of(array[np.isfinite(array)]) for column, array in numbers.items()}
        return cls(values, moments, rows)

    def merged(self, later: "TableCounts") -> "TableCounts":
        """These counts followed by ``later``'s (rows that come after): counts add, first-seen order is kept."""
        values = {}
        for column, counts in self.values.items():
            total = dict(counts)
            for value, count in later.values[column].items():
                total[value] = total.get(value, 0) + count
            values[column] = total
        moments = {column: m.merged(later.moments[column]) for column, m in self.moments.items()}
        return TableCounts(values, moments, self.rows + later.rows)

    def kept(self, column: str, min_freq: int) -> list[str]:
        """The values of ``column`` seen at least ``min_freq`` times, in first-seen order (a vocabulary)."""
        return [value for value, count in self.values[column].items() if count >= min_freq]

    def to_json(self) -> str:
        """One string (a Ray Data cell): the counts as two parallel lists per column, so order survives."""
        return json.dumps({
            "values": {c: [list(v), list(v.values())] for c, v in self.values.items()},
            "moments": {c: [m.n, m.mean, m.m2] for c, m in self.moments.items()}, "rows": self.rows,
        })

    @classmethod
    def from_json(cls, text: str) -> "TableCounts":
        data = json.loads(text)
        return cls({c: dict(zip(keys, counts)) for c, (keys, counts) in data["values"].items()},
                   {c: Moments(int(n), float(mean), float(m2)) for c, (n, mean, m2) in data["moments"].items()},
                   int(data["rows"]))


def merge_in_order(partials: Iterable[TableCounts]) -> TableCounts:
    """The counts of consecutive batches, given in row order, as one."""
    merged = None
    for partial in partials:
        merged = partial if merged is None else merged.merged(partial)
    if merged is None:
        raise ValueError("merge_in_order: no partial counts (the training data has no rows)")
    return merged
