"""Cells that are not one scalar value: a list column's items, and the other columns' refusal of them.

Spark, pandas and BigQuery write tags and skills as ``list<string>``: read from Parquet, such a cell is a numpy
array, which ``astype(str)`` would turn into its repr (``"['python' 'sql']"``, newline included) and the
``;`` split into one junk skill. A list column's items are joined with ``;`` (its CSV form), and JSON array
text (``["python", "sql"]``, a common export of the same lists) is read as its items; a column whose values hold
``,`` or ``|`` and never ``;`` is read as written, with a warning. Any other column refuses a non-scalar cell,
naming the file, the column and the row.
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
        raise cell_error(path, column, i, f"holds a {_kind(series.iloc[i])} ({_shown(series.iloc[i])}); "
                                          f"expected {kind} per row")


def list_cells(series: pd.Series, path: Path, column: str) -> pd.Series:
    """A list column's cells as ``;``-separated text (missing stays missing): a list or array cell's items
    joined, JSON array text read as its items; a mapping is refused."""
    nested = _nested_mask(series)
    if nested.any():  # one assignment of all the joined cells: a cell at a time took 16 s for 1M rows
        rows = np.flatnonzero(nested)
        series = _replaced(series, rows, [_joined(v, path, column, i) for i, v in zip(rows, series.iloc[rows])])
    text = _stripped(series)
    arrays = text.str.startswith("[") & text.str.endswith("]")
    if arrays.any():  # ["python", "sql"]: a JSON export of the same list
        rows = np.flatnonzero(arrays.to_numpy(bool))
        series = _replaced(series, rows, [_json_items(t, path, column, i) for i, t in zip(rows, text.iloc[rows])])
        text = _stripped(series)
    _warn_other_separator(text[text != ""], path, column)
    return series


def _replaced(series: pd.Series, rows: np.ndarray, values: list[str]) -> pd.Series:
    """``series`` (a copy, of objects) with ``values`` at positions ``rows``."""
    out = series.to_numpy(dtype=object, copy=True)
    out[rows] = values
    return pd.Series(out, index=series.index, name=series.name)


def _stripped(series: pd.Series) -> pd.Series:
    return series.astype("str").str.strip().fillna("")


def _warn_other_separator(text: pd.Series, path: Path, column: str) -> None:
    """Most values holding ``,`` or ``|`` and none ``;``: each row's whole list would be one value."""
    if not len(text) or text.str.contains(SEPARATOR, regex=False).any():
        return
    for other in (",", "|"):
        share = float(text.str.contains(other, regex=False).mean())
        if share > 0.5:
            logger.warning("%s: column %r: %.0f%% of its values hold %r and none ';' (e.g. %r): ';' separates a "
                           "list's values, so each of those rows reads as one value; write 'a;b'", path, column,
                           100 * share, other, text[text.str.contains(other, regex=False)].iloc[0])
            return


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


def _json_items(text: str, path: Path, column: str, row: int) -> str:
    """``["a", "b"]`` -> ``a;b``; text that only looks like an array (``[remote]``) is kept as written."""
    try:
        items = json.loads(text)
    except ValueError:
        return text
    return _joined(items, path, column, row) if isinstance(items, list) else text


def _kind(value: Any) -> str:
    """What a nested cell is, as its file wrote it: a Parquet list reads back as a numpy array."""
    return "mapping" if isinstance(value, dict) else "list"


def _shown(value: Any) -> str:
    """A nested cell as a short one-line text (a numpy array's repr spans lines)."""
    items = list(value.items()) if isinstance(value, dict) else list(value)
    shown = json.dumps(items[:3], default=str)
    return shown[:-1] + ", ...]" if len(items) > 3 else shown
