"""Features of one generic labelled table (DataConfig kind "table"): every field is on side ``row``.

Each categorical and multi-valued column has its own vocabulary named after the column (values are stripped,
case kept); each numeric column is a standardised dense field of width 1. Import it from ``convfm.features.jobs``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import pandas as pd

from convfm.data.batching import ExampleSet
from convfm.errors import ArtifactError, ConfigError, ConvFMError
from convfm.features.counts import TableCounts
from convfm.features.base import encode_fields, labels_of, read_artifact, require_frame, write_artifact
from convfm.features.fields import EncodedTable, FeatureMap, FieldSpec, Vocabulary
from convfm.features.text import column_strings, split_lists
from convfm.validate import check_int, require


def _numbers(df: pd.DataFrame, column: str) -> np.ndarray:
    """float64 values; missing column, non-numbers and non-finite values -> NaN."""
    if column not in df.columns:
        return np.full(len(df), np.nan)
    values = pd.to_numeric(df[column], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    return np.where(np.isfinite(values), values, np.nan)


class TableFeatureExtractor:
    """Categorical, multi-valued and numeric columns of one table -> one ``row``-side EncodedTable."""

    kind = "table"

    def __init__(
        self,
        categorical: Sequence[str] = (),
        multi_valued: Sequence[str] = (),
        numeric: Sequence[str] = (),
        separator: str = ";",
        min_freq: int = 1,
        max_len: int = 20,
    ) -> None:
        self.categorical, self.multi_valued, self.numeric = (
            tuple(str(c) for c in columns) for columns in (categorical, multi_valued, numeric)
        )
        columns = self.categorical + self.multi_valued + self.numeric
        require(bool(columns), "categorical",
                "a table needs at least one field in categorical, multi_valued or numeric")
        repeated = sorted({c for c in columns if columns.count(c) > 1})
        require(not repeated, "categorical", f"column(s) {repeated} listed more than once")
        require(isinstance(separator, str) and bool(separator), "separator",
                f"must be a non-empty string, got {separator!r}")
        self.separator = separator
        self.min_freq, self.max_len = check_int(min_freq, "min_freq", 1), check_int(max_len, "max_len", 1)
        self.vocabs: dict[str, Vocabulary] = {}
        self._stats: dict[str, list[float]] = {}  # numeric column -> [mean, std]
        self._feature_map: Optional[FeatureMap] = None

    def get_config(self) -> dict[str, Any]:
        return {"categorical": list(self.categorical), "multi_valued": list(self.multi_valued),
                "numeric": list(self.numeric), "separator": self.separator, "min_freq": self.min_freq,
                "max_len": self.max_len}

    @property
    def feature_map(self) -> FeatureMap:
        if self._feature_map is None:
            raise ConvFMError("TableFeatureExtractor is not fitted: call fit() or load() first")
        return self._feature_map

    def fit(self, df: pd.DataFrame, base: Optional["TableFeatureExtractor"] = None) -> "TableFeatureExtractor":
        """Vocabularies and numeric mean/std from the training rows only. ``base``, a published extractor of the
        same config (a warm start), keeps its numeric mean/std and extends each vocabulary with this data's."""
        return self.fit_counts(self.counts(df), base)

    def counts(self, df: pd.DataFrame) -> TableCounts:
        """What ``fit_counts`` needs from ``df`` (the whole training table or one batch of it)."""
        require_frame(df, "table", self.categorical + self.multi_valued + self.numeric)
        tokens = {c: column_strings(df, c) for c in self.categorical}
        tokens.update({c: (v for values in self._lists(df, c) for v in values) for c in self.multi_valued})
        return TableCounts.of(tokens, {c: _numbers(df, c) for c in self.numeric}, len(df))

    def fit_counts(self, counts: TableCounts, base: Optional["TableFeatureExtractor"] = None
                   ) -> "TableFeatureExtractor":
        """Fit from the counts of the training rows (``counts``, or batches' counts merged in row order)."""
        if base is not None and base.get_config() != self.get_config():
            raise ConfigError(f"warm start: table config {self.get_config()} differs from the published "
                              f"{base.get_config()}")
        self.vocabs = {c: Vocabulary(counts.kept(c, self.min_freq)) for c in self.categorical + self.multi_valued}
        self._stats = {c: counts.moments[c].mean_std() for c in self.numeric}
        if base is not None:
            self.vocabs = {c: base.vocabs[c].extended(v.values) for c, v in self.vocabs.items()}
            self._stats = dict(base._stats)
        self._feature_map = self._build_feature_map()
        return self

    def _build_feature_map(self) -> FeatureMap:
        return FeatureMap(
            tuple(FieldSpec(c, "categorical", "row", c, len(self.vocabs[c])) for c in self.categorical)
            + tuple(FieldSpec(c, "multi", "row", c, len(self.vocabs[c]), max_len=self.max_len)
                    for c in self.multi_valued)
            + tuple(FieldSpec(c, "dense", "row", width=1) for c in self.numeric)
        )

    def _lists(self, df: pd.DataFrame, column: str) -> list[list[str]]:
        return split_lists(column_strings(df, column), self.separator, lower=False)

    def transform(self, df: pd.DataFrame) -> EncodedTable:
        """Encode rows; unseen values -> unknown (1), missing values/columns -> padding (0) or the mean (0.0)."""
        require_frame(df, "table")
        fields = self.feature_map.fields
        columns: dict[str, np.ndarray] = {}
        for column in self.categorical:
            columns[column] = self.vocabs[column].lookup(column_strings(df, column))
        for column in self.multi_valued:
            columns[column] = self.vocabs[column].lookup_lists(self._lists(df, column), self.max_len)
        for column in self.numeric:
            mean, std = self._stats[column]
            scaled = (_numbers(df, column) - mean) / std
            columns[column] = np.nan_to_num(scaled, nan=0.0)[:, None]  # data loading refuses NaN; 0 = the mean
        return encode_fields(fields, columns, len(df))

    def example_set(self, df: pd.DataFrame, label: str = "label") -> ExampleSet:
        """tables [transform(df)], rows = arange(N), labels = df[label]."""
        labels = labels_of(df, label, "table")
        return ExampleSet([self.transform(df)], np.arange(len(df), dtype=np.int64)[:, None], labels)

    def save(self, path: str | Path) -> Path:
        """Write ``extractor.json``/``.npz`` into a directory, or ``<stem>.json``/``.npz`` for a file path."""
        meta = {"kind": self.kind, "config": self.get_config(),
                "vocabularies": {name: v.values for name, v in self.vocabs.items()},
                "numeric_stats": self._stats, "feature_map": self.feature_map.to_dict()}
        return write_artifact(path, meta, {})

    @classmethod
    def load(cls, path: str | Path) -> "TableFeatureExtractor":
        """Rebuild from ``save``'s files (a directory or the same file path); ArtifactError when unusable."""
        return cls.from_artifact(*read_artifact(path, kind=cls.kind))

    @classmethod
    def from_artifact(cls, meta: dict, arrays: dict[str, np.ndarray], source: Path) -> "TableFeatureExtractor":
        try:
            self = cls(**meta["config"])
            self.vocabs = {name: Vocabulary(values) for name, values in meta["vocabularies"].items()}
            self._stats = {c: [float(meta["numeric_stats"][c][0]), float(meta["numeric_stats"][c][1])]
                           for c in self.numeric}
            self._feature_map = FeatureMap.from_dict(meta["feature_map"], source=str(source))
            if self._feature_map != self._build_feature_map():
                raise ArtifactError(f"{source}: feature map disagrees with the saved vocabularies/config")
        except ArtifactError:
            raise
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise ArtifactError(f"{source}: invalid extractor ({type(exc).__name__}: {exc})") from None
        return self

