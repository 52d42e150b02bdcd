"""The contract between preprocessing, training and serving: field specs, vocabularies, encoded tables.

A ``FeatureMap`` lists the model's fields in field-axis order (user fields, then job fields). It is saved as
JSON beside every model and checked on load, so a model never runs against features it was not built for.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np

from convfm.errors import ArtifactError, ConfigError
from convfm.features.counts import TableCounts
from convfm.jsonfile import read_json, write_json_atomic

FEATURE_MAP_VERSION = 1
KINDS = ("categorical", "multi", "dense")
SIDES = ("user", "job", "row")
PAD, UNK = 0, 1
# vocabularies of a job board's own columns (convfm.features.extra_fields): extra_<slug>, shared by both sides
EXTRA_VOCAB = "extra_"


class Vocabulary:
    """Value -> index with index 0 reserved for padding and 1 for unknown values."""

    def __init__(self, values: Sequence[str] = ()) -> None:
        self.values: list[str] = list(values)
        self._index = {v: i + 2 for i, v in enumerate(self.values)}
        if len(self._index) != len(self.values):
            raise ValueError("vocabulary values must be unique")

    @classmethod
    def build(cls, tokens: Iterable[str], min_freq: int = 1) -> "Vocabulary":
        """Values seen at least ``min_freq`` times, in first-seen order (empty strings skipped)."""
        return cls(TableCounts.of({"": tokens}, {}).kept("", min_freq))

    def extended(self, values: Iterable[str]) -> "Vocabulary":
        """This vocabulary's values at their indices, then those of ``values`` it lacks (in order): a warm start
        keeps every published value's row and appends the new ones."""
        return Vocabulary(self.values + [v for v in dict.fromkeys(values) if v and v not in self])

    def __len__(self) -> int:
        """Table size including the padding and unknown slots."""
        return len(self.values) + 2

    def __contains__(self, value: str) -> bool:
        return value in self._index

    def index(self, value: str) -> int:
        if not value:
            return PAD
        return self._index.get(value, UNK)

    def decode(self, index: int) -> Optional[str]:
        """The value at ``index``; None for the padding and unknown slots (and out-of-range indices)."""
        return self.values[index - 2] if 2 <= index < len(self.values) + 2 else None

    def lookup(self, values: Sequence[str]) -> np.ndarray:
        """Vectorised ``index`` for a sequence of strings -> int64 array."""
        get = self._index.get
        return np.fromiter((get(v, UNK) if v else PAD for v in values), dtype=np.int64, count=len(values))

    def lookup_lists(self, lists: Sequence[Sequence[str]], max_len: int) -> np.ndarray:
        """Encode lists of values, dropping unknowns first when a list is too long -> (N, max_len) int64."""
        out = np.zeros((len(lists), max_len), dtype=np.int64)
        get = self._index.get
        for row, items in enumerate(lists):
            ids = [get(v, UNK) for v in items if v]
            known = [i for i in ids if i != UNK]
            ids = (known + [UNK] * (len(ids) - len(known)))[:max_len]
            out[row, : len(ids)] = ids
        return out


@dataclasses.dataclass(frozen=True)
class FieldSpec:
    """One model field: its kind, which side it describes, its (shared) vocabulary and shape."""

    name: str
    kind: str
    side: str
    vocab: str = ""
    size: int = 0  # vocabulary size incl. pad/unknown (categorical, multi)
    width: int = 0  # float width (dense)
    max_len: int = 0  # list length (multi)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"field {self.name!r}: kind must be one of {KINDS}, got {self.kind!r}")
        if self.side not in SIDES:
            raise ValueError(f"field {self.name!r}: side must be one of {SIDES}, got {self.side!r}")
        if self.kind == "dense" and self.width < 1:
            raise ValueError(f"field {self.name!r}: dense fields need width >= 1")
        if self.kind != "dense" and (not self.vocab or self.size < 2):
            raise ValueError(f"field {self.name!r}: {self.kind} fields need a vocab and size >= 2")
        if self.kind == "multi" and self.max_len < 1:
            raise ValueError(f"field {self.name!r}: multi fields need max_len >= 1")


@dataclasses.dataclass(frozen=True)
class FeatureMap:
    """Ordered fields; the order is the model's field axis."""

    fields: tuple[FieldSpec, ...]

    def __post_init__(self) -> None:
        names = [f.name for f in self.fields]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate field names in {names}")
        sizes: dict[str, int] = {}
        for f in self.fields:
            if f.kind != "dense" and sizes.setdefault(f.vocab, f.size) != f.size:
                raise ValueError(f"fields sharing vocab {f.vocab!r} disagree on its size")
        ranks = [SIDES.index(f.side) for f in self.fields]
        if ranks != sorted(ranks):
            raise ValueError("fields must be ordered by side: user fields, then job fields")

    def of_kind(self, kind: str, side: str | None = None) -> list[FieldSpec]:
        return [f for f in self.fields if f.kind == kind and (side is None or f.side == side)]

    def of_side(self, side: str) -> "FeatureMap":
        return FeatureMap(tuple(f for f in self.fields if f.side == side))

    @property
    def vocab_sizes(self) -> dict[str, int]:
        """Shared vocabulary name -> size, in first-use order."""
        sizes: dict[str, int] = {}
        for f in self.fields:
            if f.kind != "dense":
                sizes.setdefault(f.vocab, f.size)
        return sizes

    @property
    def dense_width(self) -> int:
        return sum(f.width for f in self.of_kind("dense"))

    @property
    def max_len(self) -> int:
        return max((f.max_len for f in self.of_kind("multi")), default=0)

    def field_axis_order(self) -> list[int]:
        """Position in ``fields`` of each field when grouped [categorical, multi, dense] (sides in order)."""
        grouped = [f.name for kind in KINDS for f in self.of_kind(kind)]
        position = {name: i for i, name in enumerate(grouped)}
        return [position[f.name] for f in self.fields]

    def check_grown_from(self, published: "FeatureMap", source: str) -> None:
        """This map must be ``published`` with vocabularies of the same size or larger (a warm start: the weights
        of every field carry over, only vocabulary rows are added); ConfigError naming the first difference."""
        names, before = [f.name for f in self.fields], [f.name for f in published.fields]
        if names != before:
            raise ConfigError(f"{source}: this data gives the fields {names}, the published model has {before}; "
                              "a warm start needs the same fields (same columns in the data)")
        for new, old in zip(self.fields, published.fields):
            if dataclasses.replace(new, size=old.size) != old or new.size < old.size:
                raise ConfigError(f"{source}: field {new.name!r} is {new} here, {old} in the published model")

    def to_dict(self) -> dict:
        return {"format_version": FEATURE_MAP_VERSION, "fields": [dataclasses.asdict(f) for f in self.fields]}

    @classmethod
    def from_dict(cls, data: dict, source: str = "feature map") -> "FeatureMap":
        version = data.get("format_version")
        if version != FEATURE_MAP_VERSION:
            raise ArtifactError(
                f"{source}: feature map format_version {version!r}, this convfm reads {FEATURE_MAP_VERSION}"
            )
        try:
            return cls(tuple(FieldSpec(**f) for f in data["fields"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(f"{source}: invalid feature map ({exc})") from None

    def save(self, path: str | Path) -> None:
        write_json_atomic(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> "FeatureMap":
        return cls.from_dict(read_json(path, "feature map", ArtifactError), source=str(path))


def field_columns(fields: Sequence[FieldSpec]) -> dict[str, tuple[str, int | slice]]:
    """Where each of ``fields`` (FeatureMap order) sits in their EncodedTable: field name -> (kind, its index
    among the fields of its kind, or a dense field's column slice)."""
    columns: dict[str, tuple[str, int | slice]] = {}
    offset = 0
    for kind in KINDS:
        for i, f in enumerate(x for x in fields if x.kind == kind):
            columns[f.name] = (kind, slice(offset, offset + f.width) if kind == "dense" else i)
            offset += f.width if kind == "dense" else 0
    return columns


@dataclasses.dataclass
class EncodedTable:
    """One side's encoded fields, grouped by kind in FeatureMap order.

    cat: int64 (N, Fc); multi: int64 (N, Fm, L); dense: float32 (N, W).
    """

    cat: np.ndarray
    multi: np.ndarray
    dense: np.ndarray

    def __post_init__(self) -> None:
        n = {len(self.cat), len(self.multi), len(self.dense)}
        if len(n) != 1:
            raise ValueError(f"encoded groups disagree on row count: {sorted(n)}")

    def __len__(self) -> int:
        return len(self.cat)

    def take(self, rows: np.ndarray) -> "EncodedTable":
        return EncodedTable(self.cat[rows], self.multi[rows], self.dense[rows])

    def join(self, other: "EncodedTable") -> "EncodedTable":
        """Concatenate along the field axis (self's fields first), padding lists to the longer length."""
        length = max(self.multi.shape[2], other.multi.shape[2])
        return EncodedTable(
            np.concatenate([self.cat, other.cat], axis=1),
            np.concatenate([_pad_lists(self.multi, length), _pad_lists(other.multi, length)], axis=1),
            np.concatenate([self.dense, other.dense], axis=1),
        )

    def arrays(self) -> dict[str, np.ndarray]:
        return {"cat": self.cat, "multi": self.multi, "dense": self.dense}


def _pad_lists(multi: np.ndarray, length: int) -> np.ndarray:
    if multi.shape[2] == length:
        return multi
    pad = np.zeros(multi.shape[:2] + (length - multi.shape[2],), dtype=multi.dtype)
    return np.concatenate([multi, pad], axis=2)
