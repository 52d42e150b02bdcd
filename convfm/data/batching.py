"""Examples as indices into encoded side tables, gathered into model-ready tensors per batch.

Holding (user row, job row, label) per example instead of materialised feature rows keeps a million
examples at a few MB, and shards cheaply across Ray Train workers.
"""
from __future__ import annotations

import dataclasses
import warnings
from typing import Iterator, NamedTuple, Sequence

import numpy as np
import torch

from convfm.features.fields import PAD, EncodedTable


class FieldBatch(NamedTuple):
    """Model input. cat: (B, Fc) int64; multi: (B, Fm, L) int64; dense: (B, W) float32."""

    cat: torch.Tensor
    multi: torch.Tensor
    dense: torch.Tensor

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "FieldBatch":
        return FieldBatch(*(t.to(device, non_blocking=non_blocking) for t in self))

    def pin_memory(self) -> "FieldBatch":
        return FieldBatch(*(t.pin_memory() for t in self))


def _shared_tensor(array: np.ndarray) -> torch.Tensor:
    """A tensor sharing ``array``'s memory. Arrays read from Ray's object store are read-only; these tensors
    are only ever indexed (which copies), never written, so torch's non-writable warning does not apply."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(array)


def table_tensors(table: EncodedTable) -> FieldBatch:
    """An encoded table as tensors (shares memory with the numpy arrays)."""
    return FieldBatch(_shared_tensor(table.cat), _shared_tensor(table.multi), _shared_tensor(table.dense))


def used_list_length(multi: np.ndarray) -> int:
    """1 + the last list position that holds a value in any row and field of ``multi`` (N, Fm, L), at least
    1 (0 only when L is 0), so batches keep a list axis.

    Lists are left-aligned and padded to the field's ``max_len`` (50 skills by default) while real lists
    are much shorter (at most 14 in the synthetic market): the positions past this length are padding in
    every row, which the model masks out anyway.
    """
    if multi.shape[2] == 0:
        return 0
    used = np.flatnonzero((multi != PAD).reshape(-1, multi.shape[2]).any(axis=0))
    return int(used[-1]) + 1 if len(used) else 1


def join_batches(parts: Sequence[FieldBatch]) -> FieldBatch:
    """Concatenate sides along the field axis, padding lists to the longest length. (B, ...) each."""
    length = max(p.multi.shape[2] for p in parts)
    multis = [torch.nn.functional.pad(p.multi, (0, length - p.multi.shape[2])) for p in parts]
    return FieldBatch(
        torch.cat([p.cat for p in parts], dim=1),
        torch.cat(multis, dim=1),
        torch.cat([p.dense for p in parts], dim=1),
    )


@dataclasses.dataclass
class ExampleSet:
    """Labelled examples: ``rows[:, s]`` indexes ``tables[s]`` (sides in FeatureMap order)."""

    tables: list[EncodedTable]
    rows: np.ndarray  # (N, S) int64
    labels: np.ndarray  # (N,) float32

    def __post_init__(self) -> None:
        self.rows = np.asarray(self.rows, dtype=np.int64).reshape(len(self.labels), len(self.tables))
        self.labels = np.asarray(self.labels, dtype=np.float32)
        # Batches carry lists padded to the longest list in the tables, not to max_len: the padding columns
        # would cost embedding lookups, masking and gradient rows in every step (3x the list work at the
        # default max_len of 50). Slicing views keeps sharing the (possibly read-only, shared) table memory.
        self._tensors = []
        for table in self.tables:
            cat, multi, dense = table_tensors(table)
            self._tensors.append(FieldBatch(cat, multi[:, :, :used_list_length(table.multi)], dense))
        self._rows, self._labels = _shared_tensor(self.rows), _shared_tensor(self.labels)

    def __len__(self) -> int:
        return len(self.labels)

    def __reduce__(self) -> tuple:
        # Pickle (e.g. into Ray's object store) the arrays only; the tensor views are rebuilt on load.
        return (ExampleSet, (self.tables, self.rows, self.labels))

    def subset(self, index: np.ndarray) -> "ExampleSet":
        """Examples ``index`` (the side tables are shared, not copied)."""
        return ExampleSet(self.tables, self.rows[index], self.labels[index])

    def shard(self, rank: int, world_size: int, equal: bool = False) -> "ExampleSet":
        """Every ``world_size``-th example starting at ``rank`` (DDP data split). ``equal`` drops the last
        ``len % world_size`` examples so all shards have one length: DDP ranks must take equal steps."""
        stop = len(self) - (len(self) % world_size if equal else 0)
        return self.subset(np.arange(rank, stop, world_size))

    def gather(self, index: np.ndarray | torch.Tensor) -> tuple[FieldBatch, torch.Tensor]:
        """Model input and labels for examples ``index``: ((B, ...), (B,)). Lists are padded to the longest
        list in the side tables (at most ``max_len``); the model's output does not depend on the padding."""
        index = torch.as_tensor(index, dtype=torch.int64)
        rows = self._rows[index]
        parts = [
            FieldBatch(*(t[rows[:, s]] for t in tensors)) for s, tensors in enumerate(self._tensors)
        ]
        return join_batches(parts), self._labels[index]

    def batches(
        self, batch_size: int, shuffle: bool = False, seed: int = 0, drop_last: bool = False
    ) -> Iterator[tuple[FieldBatch, torch.Tensor]]:
        """Iterate (FieldBatch, labels) batches; ``seed`` makes the shuffle order reproducible."""
        order = np.arange(len(self))
        if shuffle:
            order = np.random.default_rng(seed).permutation(len(self))
        stop = len(self) - (len(self) % batch_size if drop_last else 0)
        for start in range(0, stop, batch_size):
            yield self.gather(order[start : start + batch_size])
