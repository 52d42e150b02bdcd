"""Date/time columns typed: epoch seconds, date text read in the market's day/month order
(``convfm.data.date_formats``), and interaction timestamps as int64 order keys; errors name file, column and row.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from convfm.data.date_formats import (
    date_order, decide_day_first, number_date_guess, numeric_dates, warn_epoch_outliers,
)
from convfm.data.readers import cell_error, first_true, looks_numeric, to_numbers

# Dates outside this range are typos (year 0001, 9999) or epoch numbers in the wrong unit (milliseconds).
FIRST_DATE, LAST_DATE = pd.Timestamp("1970-01-01"), pd.Timestamp("2100-01-01")
_EPOCH_RANGE = (0.0, float((LAST_DATE - FIRST_DATE).total_seconds()))


EPOCH_SECONDS_FROM = 1e8  # 1973-03-03: interaction timestamps that are all numbers from here to LAST_DATE are dates
_EPOCH_SECONDS_DATE = "1973-03-03"  # job dates as numbers must be epoch seconds from here on
_EPOCH_MILLIS = (1e11, _EPOCH_RANGE[1] * 1000)  # 1973-03-03 to 2100 in milliseconds


def epoch_dates(series: pd.Series, path: Path, column: str) -> pd.Series:
    """Interaction timestamps as a file gives them, with epoch seconds made dates: numbers that all fall from
    1973-03-03 to 2100-01-01 as seconds become datetime64 (a log exported as epoch seconds keeps its calendar);
    other numbers stay plain order, and numbers that all read as epoch milliseconds are refused."""
    if series.dtype.kind in "mMb" or not len(series) or not looks_numeric(series):
        return series
    values = pd.to_numeric(series, errors="coerce")
    if values.isna().any():
        return series  # order_key names the bad row
    low, high = float(values.min()), float(values.max())
    if EPOCH_SECONDS_FROM <= low and high <= _EPOCH_RANGE[1]:
        return pd.to_datetime(values, unit="s")
    if _EPOCH_MILLIS[0] <= low and high <= _EPOCH_MILLIS[1]:
        raise cell_error(path, column, 0, f"{str(series.iloc[0])!r} looks like epoch milliseconds: give epoch "
                                          "seconds or ISO date/times")
    warn_epoch_outliers(values, (EPOCH_SECONDS_FROM, _EPOCH_RANGE[1]), path, column)
    return series


def is_calendar(series: pd.Series) -> bool:
    """Whether ``order_key`` reads ``series`` as date/times (microseconds since the epoch) rather than as plain
    order numbers: a datetime column, or text that is not mostly numbers."""
    return series.dtype.kind in "mM" or (series.dtype.kind not in "iu" and not looks_numeric(series))


def _refuse_booleans(series: pd.Series, path: Path, column: str, what: str) -> None:
    """A typed (parquet) boolean column is not ``what``: as numbers its values would pass as 1 and 0."""
    if series.dtype.kind == "b" or (series.dtype == object and pd.api.types.infer_dtype(series) == "boolean"):
        raise cell_error(path, column, first_true(series.notna()), f"booleans are not {what}")


def to_datetimes(series: pd.Series, path: Path, column: str, dayfirst: Optional[bool] = None) -> pd.Series:
    """Numbers as epoch seconds (from 1973-03-03: a smaller one is a YYYYMMDD date or a spreadsheet's day count,
    refused), else date/time text; unparseable or out-of-range values name their row. Numeric dates (02/01/2025)
    are read ``dayfirst`` (the market's reading, ``date_formats.decide_day_first``), by default as this column
    alone proves."""
    _refuse_booleans(series, path, column, "dates")
    if series.dtype.kind not in "mM" and looks_numeric(series):  # epoch seconds
        seconds = to_numbers(series, path, column)
        early = (seconds < EPOCH_SECONDS_FROM).to_numpy()
        if early.any():  # a job's date before 1973 as a number: a YYYYMMDD date, a spreadsheet's day count
            i = first_true(early)
            guess = number_date_guess(float(seconds.iloc[i]))
            raise cell_error(path, column, i, f"{str(series.iloc[i])!r} is no date: as epoch seconds it is before "
                                              f"{_EPOCH_SECONDS_DATE}{f'; it looks like {guess}' if guess else ''}; "
                                              "write ISO dates (2024-03-02) or epoch seconds")
        outside = (seconds < _EPOCH_RANGE[0]) | (seconds > _EPOCH_RANGE[1])
        if outside.any():
            i = first_true(outside)
            raise cell_error(path, column, i, f"{series.iloc[i]!r} is out of range: epoch seconds must be in "
                                              f"[0, {_EPOCH_RANGE[1]:.0f}] ({_date_range()})")
        return pd.to_datetime(seconds, unit="s")
    parsed = _parsed_dates(series, decide_day_first([date_order(series, path, column)], warn=False) if dayfirst is None
                           else dayfirst)
    bad = parsed.isna() & series.notna()
    if bad.any():
        i = first_true(bad)
        raise cell_error(path, column, i, f"cannot parse {series.iloc[i]!r} as a date/time")
    parsed = parsed.dt.tz_convert(None)
    outside = (parsed < FIRST_DATE) | (parsed > LAST_DATE)
    if outside.any():
        i = first_true(outside)
        raise cell_error(path, column, i, f"{series.iloc[i]!r} is out of range ({_date_range()})")
    return parsed


def _parsed_dates(series: pd.Series, dayfirst: bool) -> pd.Series:
    """Date/time text as UTC (NaT where unparseable): numeric dates (02/01/2025) in the given order, the others
    (ISO, RFC 2822) on their own, as ``dayfirst`` would turn ISO's 2025-03-02 into 3 February."""
    numeric = numeric_dates(series)
    parsed = pd.Series(pd.NaT, index=series.index, dtype="datetime64[us, UTC]")
    for rows, first in ((numeric, dayfirst), (~numeric, False)):
        if rows.any():
            parsed[rows] = _parsed_text(series[rows], first).astype("datetime64[us, UTC]")
    return parsed


def _parsed_text(series: pd.Series, dayfirst: bool) -> pd.Series:
    with warnings.catch_warnings():  # "could not infer format": fine, rows are then parsed one by one
        warnings.simplefilter("ignore", UserWarning)
        parsed = pd.to_datetime(series, errors="coerce", utc=True, dayfirst=dayfirst)
        if (parsed.isna() & series.notna()).any():  # the format inferred from the first row did not fit every row
            parsed = pd.to_datetime(series, errors="coerce", utc=True, format="mixed", dayfirst=dayfirst)
    return parsed


def _date_range() -> str:
    return f"dates must be between {FIRST_DATE.date()} and {LAST_DATE.date()}"


def order_key(series: pd.Series, path: Path, column: str, dayfirst: Optional[bool] = None) -> np.ndarray:
    """int64 order key: whole numbers as given, fractional numbers x 1e6, dates (``is_calendar``) as
    microseconds since the epoch (numeric dates read as ``to_datetimes`` reads them)."""
    if series.isna().any():
        raise cell_error(path, column, first_true(series.isna()), "empty timestamp")
    _refuse_booleans(series, path, column, "timestamps")
    if series.dtype.kind in "iu":
        return series.to_numpy(np.int64)
    if not is_calendar(series):
        values = to_numbers(series, path, column).to_numpy()
        whole = np.all(values == np.floor(values))
        scaled = values if whole else np.round(values * 1e6)
        outside = ~(np.abs(scaled) < 2.0 ** 62)  # also inf; int64 would wrap silently
        if outside.any():
            i = first_true(outside)
            raise cell_error(path, column, i, f"{series.iloc[i]!r} is out of range for a timestamp")
        return scaled.astype(np.int64)
    return to_datetimes(series, path, column, dayfirst).to_numpy().astype("datetime64[us]").astype(np.int64)
