"""One table file of the job market (jobs, users, interactions) read and typed by its schema
(``convfm.data.schema``): canonical columns found (``DataConfig.columns``, case aside), each typed by its kind,
errors naming the file, the column and the row. ``convfm.data.loading`` reads the market's files through here.
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Mapping, Optional

import numpy as np
import pandas as pd

from convfm.data.cells import list_cells, refuse_nested
from convfm.data.date_formats import DateOrder, date_order, decide_day_first
from convfm.data.date_columns import epoch_dates, is_calendar, order_key, to_datetimes
from convfm.data.readers import cell_error, first_true, id_strings, read_located, resolve_columns, to_numbers
from convfm.data.schema import DATETIME, ID, INTERACTIONS, JOBS, LIST, NUMBER, TableSchema
from convfm.errors import ConfigError, DataValidationError
from convfm.features.text import column_strings

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class TableRead:
    """One table's file as read, before typing: its frame, the file, and canonical -> its column there."""

    frame: pd.DataFrame
    path: Path
    source: dict[str, str]
    schema: TableSchema

    def date_orders(self) -> list[DateOrder]:
        """What its date columns' numeric dates (02/01/2025) prove of day-first or month-first."""
        return [date_order(self.frame[self.source[c]], self.path, self.source[c]) for c in
                self.schema.of_kind(DATETIME) if self.source[c] in self.frame.columns]


def read_schema_table(path: Path, schema: TableSchema, mapping: Mapping[str, str], extra: Mapping[str, str] = {}
                      ) -> TableRead:
    """Read one table and find its canonical columns (``DataConfig.columns``, case aside; never a column ``extra``,
    its ``DataConfig.extra_columns``, declares); a required or mapped column must be there."""
    unknown = sorted(set(mapping) - set(schema.names))
    if unknown:
        raise ConfigError(f"columns.{schema.name}: unknown canonical column(s) {unknown}; "
                          f"allowed: {list(schema.names)}")
    frame, path = read_located(path)
    source = resolve_columns(path, frame.columns, {c: str(mapping.get(c, c)) for c in schema.names}, extra)
    for name in schema.names:  # a required column, or one the mapping names explicitly, must exist
        if source[name] not in frame.columns and (name in schema.required or name in mapping):
            mapped = f" (canonical {name!r})" if source[name] != name else ""
            raise DataValidationError(f"{path}: missing {'required ' * (name in schema.required)}column "
                                      f"{source[name]!r}{mapped}; columns in the file: {list(frame.columns)}")
    return TableRead(frame, path, source, schema)


def type_schema_table(read: TableRead, extra: Mapping[str, str] = {}, keep_all: bool = False,
                       dayfirst: Optional[bool] = None) -> tuple[pd.DataFrame, Path, bool]:
    """Type a table read by ``read_schema_table`` by kind, renamed to canonical columns; its own id must be
    unique. ``extra`` (``DataConfig.extra_columns`` of this table) names more columns the file must have, kept
    as strings ("" when missing) or, of kind number, as numbers (refused when a cell is not one); the other
    columns are kept as read, with a warning unless ``keep_all``. Numeric dates are read ``dayfirst`` (the
    market's reading; None: as this table proves). The flag says whether every date/time column read holds
    calendar dates (``date_columns.is_calendar``)."""
    frame, path, source, schema = read.frame, read.path, read.source, read.schema
    if dayfirst is None:
        dayfirst = decide_day_first(read.date_orders())
    out = pd.DataFrame(index=frame.index)
    calendar = True
    for column in (c for c in schema.columns if source[c.name] in frame.columns):
        name, actual, values = column.name, source[column.name], frame[source[column.name]]
        if column.kind == LIST:
            values = list_cells(values, path, actual)
        else:
            refuse_nested(values, path, actual)
        values = id_strings(values) if column.kind == ID else values
        if column.kind == ID and values.isna().any():
            raise cell_error(path, actual, first_true(values.isna()), "empty id")
        if column.kind == ID:
            out[name] = values
        elif column.kind == NUMBER:
            out[name] = to_numbers(values, path, actual)
        elif column.kind == DATETIME:
            values = epoch_dates(values, path, actual) if schema is INTERACTIONS else values
            out[name] = (order_key if schema is INTERACTIONS else to_datetimes)(values, path, actual, dayfirst)
            calendar = calendar and (schema is not INTERACTIONS or is_calendar(values))
        else:
            out[name] = values.astype("str").fillna("")
    if schema is not INTERACTIONS:
        _check_unique(out[schema.names[0]], path, source[schema.names[0]])
    absent = [c for c in extra if c not in frame.columns]
    if absent:
        raise DataValidationError(f"{path}: missing column(s) {absent} listed in extra_columns.{schema.name}; "
                                  f"columns in the file: {list(frame.columns)}")
    for column, kind in extra.items():
        values = list_cells(frame[column], path, column) if kind == "list" else frame[column]
        refuse_nested(values, path, column, "a list" if kind == "list" else "one value")
        out[column] = to_numbers(values, path, column) if kind == "number" else column_strings(
            values.to_frame(), column)
    extras = [c for c in frame.columns if c not in set(source.values()) and c not in extra]
    if extras and not keep_all:
        hint = "; data.extra_columns makes a column a feature" if schema is not INTERACTIONS else ""
        logger.warning("%s: ignoring extra column(s) %s (known %s columns: %s%s)", path, extras, schema.name,
                       list(schema.names), hint)
    if extras:
        out = pd.concat([out, frame[[c for c in extras if c not in out.columns]]], axis=1)
    if schema is JOBS:
        _check_expiry(out, path, source)
        _check_salaries(out, path, source)
    return out, path, calendar and any(source[c] in frame.columns for c in schema.of_kind(DATETIME))


def read_jobs_file(path: str | Path) -> tuple[pd.DataFrame, Path]:
    """One jobs table checked as training reads it (canonical column names; the others kept), and the file read."""
    frame, path, _ = type_schema_table(read_schema_table(Path(path), JOBS, {}), keep_all=True)
    return frame, path


def _check_expiry(jobs: pd.DataFrame, path: Path, source: Mapping[str, str]) -> None:
    """A job must expire after it is posted: its live window ``[posted_at, expires_at)`` is otherwise empty."""
    if "expires_at" not in jobs or "posted_at" not in jobs:
        return
    bad = (jobs["expires_at"] <= jobs["posted_at"]).to_numpy()  # NaT compares False
    if bad.any():
        i = first_true(bad)
        raise cell_error(path, source["expires_at"], i, f"expires_at {jobs['expires_at'].iloc[i]} is not after "
                                                        f"{source['posted_at']} {jobs['posted_at'].iloc[i]}")


def _check_salaries(jobs: pd.DataFrame, path: Path, source: Mapping[str, str]) -> None:
    """``salary_min`` above ``salary_max`` (columns swapped in the export, or mapped the wrong way round) would
    read as a range; one of the two missing is fine (NaN compares False)."""
    if "salary_min" not in jobs or "salary_max" not in jobs:
        return
    bad = (jobs["salary_min"] > jobs["salary_max"]).to_numpy()
    if bad.any():
        i = first_true(bad)
        low, high = (np.format_float_positional(jobs[c].iloc[i], trim="-") for c in ("salary_min", "salary_max"))
        raise cell_error(path, source["salary_min"], i, f"{source['salary_min']} {low} is above "
                                                        f"{source['salary_max']} {high}; are the two columns swapped, "
                                                        "or is an unknown salary written as 0 (leave it empty)?")


def _check_unique(ids: pd.Series, path: Path, column: str) -> None:
    duplicated = ids.duplicated()
    if duplicated.any():
        later = first_true(duplicated)
        earlier = first_true(ids.to_numpy() == ids.iloc[later])
        raise DataValidationError(f"{path}: column {column!r}: duplicate id {ids.iloc[later]!r} in rows "
                                  f"{earlier + 1} and {later + 1}")
