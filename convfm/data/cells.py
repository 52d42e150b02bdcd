"""Cells that are not one scalar value: a list column's items, and the other columns' refusal of them.

Spark, pandas and BigQuery write tags and skills as ``list<string>``: read from Parquet, such a cell is a numpy
array, which ``astype(str)`` would turn into its repr (``"['python' 'sql']"``, newline included) and the
``;`` split into one junk skill. A list column's items are joined with ``;`` (its CSV form). Any other column
refuses a non-scalar cell, naming the file, the column and the row.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from convfm.data.readers import cell_error, first_true

logger = logging.getLogger(__name__)

_NESTED = (list, tuple, set, dict, np.ndarray)
SEPARATOR = ";"


def _nested_mask(series: pd.Series) -> np.ndarray:
    """Which cells hold a list, array or mapping; text and numbers are checked at C speed, not row by row."""
    if series.dtype != object or pd.api.types.infer_dtype(series, skipna=True) not in ("mixed", "unknown-array"):
        return np.zeros(len(series), bool)
    return series.map(lambda v: isinstance(v, _NESTED)).to_numpy(bool)


def refuse_nested(series: pd.Series, path: Path, column: str, kind: str = "one value") -> None:
    """DataValidationError naming the first cell that holds a list, array or mapping (``kind``: what the
    column holds instead)."""
    nested = _nested_mask(series)
    if nested.any():
        i = first_true(nested)
        raise cell_error(path, column, i, f"holds a {type(series.iloc[i]).__name__} ({_shown(series.iloc[i])}); "
                                          f"expected {kind} per row")


def list_cells(series: pd.Series, path: Path, column: str) -> pd.Series:
    """A list column's cells as ``;``-separated text (missing stays missing): a list or array cell's items
    joined; a mapping is refused."""
    nested = _nested_mask(series)
    if nested.any():
        series = series.copy()
        for i in np.flatnonzero(nested):
            series.iloc[i] = _joined(series.iloc[i], path, column, i)
    return series


def _joined(value: Any, path: Path, column: str, row: int) -> str:
    if isinstance(value, dict):
        raise cell_error(path, column, row, f"holds a mapping ({_shown(value)}); expected a list of values")
    items = []
    for item in value:
        if isinstance(item, _NESTED):
            raise cell_error(path, column, row, f"holds a nested list ({_shown(value)}); expected a list of values")
        if item is not None and not (isinstance(item, float) and np.isnan(item)):
            items.append(str(item).strip())
    return SEPARATOR.join(items)


def _shown(value: Any) -> str:
    """A nested cell as a short one-line text (a numpy array's repr spans lines)."""
    items = list(value.items()) if isinstance(value, dict) else list(value)
    shown = json.dumps(items[:3], default=str)
    return shown[:-1] + ", ...]" if len(items) > 3 else shown
