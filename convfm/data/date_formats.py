"""How exports write dates, read apart from the values' parsing (``convfm.data.readers``): what a number that
is no epoch second looks like (``number_date_guess``, ``warn_epoch_outliers``), and whether numeric dates are
day-first (02/01/2025 as 2 January) or month-first: what each column proves (``date_order``), decided once for
a whole market (``decide_day_first``), so one export is never read two ways.
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Iterable, Optional

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from convfm.errors import DataValidationError

logger = logging.getLogger(__name__)

_EXCEL_SERIALS = (20_000, 80_000)  # 1954-10-03 to 2119-01-11 as days after Excel's day 0, 1899-12-30
_EXCEL_DAY_0 = pd.Timestamp("1899-12-30")


def number_date_guess(value: float) -> Optional[str]:
    """What a date column's number below epoch seconds' range looks like: ``"a YYYYMMDD date (2024-03-02)"``,
    ``"an Excel serial day count (2024-03-02)"``, or None."""
    if value == int(value) and 10_000_000 <= value <= 99_999_999:
        digits = str(int(value))
        try:
            return f"a YYYYMMDD date ({pd.Timestamp(f'{digits[:4]}-{digits[4:6]}-{digits[6:]}').date()})"
        except ValueError:
            pass
    if _EXCEL_SERIALS[0] <= value <= _EXCEL_SERIALS[1]:
        return f"an Excel serial day count ({(_EXCEL_DAY_0 + pd.Timedelta(days=float(value))).date()})"
    return None


def warn_epoch_outliers(values: pd.Series, seconds: tuple[float, float], path: Path, column: str) -> None:
    """Timestamps mostly epoch seconds (in ``seconds``) but not all (a few 0 placeholders) are read as plain
    order, the calendar lost: a warning names the first value outside and how many are inside."""
    inside = ((values >= seconds[0]) & (values <= seconds[1])).to_numpy()
    if inside.mean() >= 0.5:
        i = int(np.flatnonzero(~inside)[0])
        logger.warning("%s: column %r, row %d: %r is not epoch seconds (from 1973-03-03 to 2100-01-01), while %d of "
                       "the %d values are: the column is read as plain order numbers, without dates; fix or drop the "
                       "%d row(s) outside", path, column, i + 1, _plain(values.iloc[i]), int(inside.sum()),
                       len(inside), int((~inside).sum()))


def _plain(number: float) -> str:
    """12.0 as '12', 12.5 as '12.5' (not the numpy repr)."""
    return str(int(number)) if float(number).is_integer() else str(float(number))


# 02/01/2025, 2.1.25, 02-01-2025 10:00; not ISO (2025-01-02)
NUMERIC_DATE = r"^\s*(\d{1,2})[/.-](\d{1,2})[/.-]\d{2,4}\b"
_NUMERIC_PARTS = r"^\s*(?P<first>\d{1,2})[/.-](?P<second>\d{1,2})[/.-]\d{2,4}\b"


@dataclasses.dataclass(frozen=True)
class DateOrder:
    """What one column's numeric dates prove: ``day_first`` a value only day-first reads (13/01/2025, its first
    number above 12) and ``month_first`` one only month-first reads (01/25/2025), each as (0-based row or None,
    value); ``numeric``: whether the column holds numeric dates at all. ``where`` names the file and column."""

    where: str
    numeric: bool = False
    day_first: Optional[tuple[Optional[int], str]] = None
    month_first: Optional[tuple[Optional[int], str]] = None


def numeric_dates(series: pd.Series) -> np.ndarray:
    """Which cells are numeric dates (``NUMERIC_DATE``), at C speed (pyarrow): ISO columns pay one scan."""
    if series.dtype.kind in "mMiufb" or not len(series):
        return np.zeros(len(series), bool)
    text = _arrow_text(series)  # numbers as text never match; missing stay null
    return pc.match_substring_regex(text, NUMERIC_DATE).fill_null(False).to_numpy(zero_copy_only=False)


def _arrow_text(series: pd.Series) -> pa.Array:
    """``series`` as one arrow string array: a column pandas holds in several arrow chunks (a Parquet file of
    several row groups, part files concatenated, a CSV past ~262k rows) comes as a ChunkedArray, which has no
    ``field`` for ``extract_regex``'s parts (it crashed the loader)."""
    text = pa.array(series.astype("str"), from_pandas=True)
    return text.combine_chunks() if isinstance(text, pa.ChunkedArray) else text


def date_order(series: pd.Series, path: Path, column: str, rows: bool = True) -> DateOrder:
    """What ``series``'s numeric dates prove (all of them, wherever they are in the column); a column holding a
    day-first and a month-first date is refused, naming both. ``rows`` False: a batch of a file, whose row
    numbers are not the file's (the proofs then name values only, and the refusal is left to
    ``decide_day_first``)."""
    where = f"{path}: column {column!r}"
    numeric = numeric_dates(series)
    if not numeric.any():
        return DateOrder(where)
    parts = pc.extract_regex(_arrow_text(series[numeric]), _NUMERIC_PARTS)  # C speed, as above
    first, second = (parts.field(k).to_numpy(zero_copy_only=False).astype(int) for k in ("first", "second"))
    at = np.flatnonzero(numeric)
    day, month = np.flatnonzero(first > 12), np.flatnonzero(second > 12)
    order = DateOrder(where, True, *((int(at[k[0]]) if rows else None, str(series.iloc[at[k[0]]])) if len(k) else
                                     None for k in (day, month)))
    if rows and order.day_first and order.month_first:
        (_, day_value), (m, month_value) = order.day_first, order.month_first
        raise DataValidationError(f"{where}, row {m + 1}: {month_value!r} is month-first, while {day_value!r} is "
                                  "day-first; write the dates one way (ISO: 2025-01-13)")
    return order


def decide_day_first(orders: Iterable[DateOrder], warn: bool = True) -> bool:
    """One reading for the numeric dates of a whole market (jobs' dates and the interactions' times): day-first
    when a column proves it and none proves month-first; columns proving both ways are refused, naming one of
    each. Undecided (no number above 12 anywhere): month-first, pandas' reading, with a warning unless not
    ``warn`` (a frame scored at request time, whose few dates seldom tell: the warning came with every call)."""
    orders = [o for o in orders if o.numeric]
    day = next((o for o in orders if o.day_first), None)
    month = next((o for o in orders if o.month_first), None)
    if day is not None and month is not None:
        raise DataValidationError(f"{_at(day, day.day_first)} is day-first, while {_at(month, month.month_first)} is "
                                  "month-first; write the dates one way in every file (ISO: 2025-01-13)")
    if warn and orders and day is None and month is None:
        logger.warning("%s: no numeric date has a day above 12, so day and month cannot be told apart: read "
                       "month-first (01/02/2025 is 2 January); write ISO dates (2025-01-02) if they are day-first",
                       "; ".join(o.where for o in orders))
    return day is not None


def _at(order: DateOrder, proof: tuple[Optional[int], str]) -> str:
    row, value = proof
    return f"{order.where}{f', row {row + 1}' if row is not None else ''}: {value!r}"
