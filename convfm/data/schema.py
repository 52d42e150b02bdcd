"""Canonical column names and kinds of the jobs, users and interactions tables.

Names are the ones after ``DataConfig.columns`` mapping. Kinds say how a column is parsed and later encoded:
``id`` stripped string, never empty; ``text`` free text; ``list`` ``;``-separated values; ``number`` float;
``category`` one string value; ``datetime`` parsed date/time between 1970-01-01 and 2100-01-01. After loading,
missing text/list/category values are empty strings, missing numbers NaN, missing datetimes NaT.
"""
from __future__ import annotations

import dataclasses

__all__ = [
    "ID", "TEXT", "LIST", "NUMBER", "CATEGORY", "DATETIME", "Column", "TableSchema", "JOBS", "USERS",
    "INTERACTIONS",
]

ID = "id"
TEXT = "text"
LIST = "list"
NUMBER = "number"
CATEGORY = "category"
DATETIME = "datetime"


@dataclasses.dataclass(frozen=True)
class Column:
    """One canonical column: its name, kind and whether a file must have it."""

    name: str
    kind: str
    required: bool = False


@dataclasses.dataclass(frozen=True)
class TableSchema:
    """The canonical columns of one table, in canonical order."""

    name: str
    columns: tuple[Column, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    @property
    def required(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns if c.required)

    def of_kind(self, *kinds: str) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns if c.kind in kinds)


JOBS = TableSchema("jobs", (
    Column("job_id", ID, required=True),
    Column("title", TEXT),
    Column("description", TEXT),
    Column("skills", LIST),
    Column("location", CATEGORY),
    Column("company", CATEGORY),
    Column("salary_min", NUMBER),
    Column("salary_max", NUMBER),
    Column("job_type", CATEGORY),
    Column("experience_level", CATEGORY),
    Column("posted_at", DATETIME),
    Column("expires_at", DATETIME),  # end of the live window (exclusive); optional, see convfm.data.liveness
))

USERS = TableSchema("users", (
    Column("user_id", ID, required=True),
    Column("skills", LIST),
    Column("location", CATEGORY),
    Column("experience_level", CATEGORY),
))

# ``event`` values must be in ``convfm.config.EVENTS``; ``timestamp`` is a number or a date/time, loaded as an
# int64 order key.
INTERACTIONS = TableSchema("interactions", (
    Column("user_id", ID, required=True),
    Column("job_id", ID, required=True),
    Column("event", CATEGORY),
    Column("label", CATEGORY),  # without an event column: 1 the first of positive_events, 0 of negative_events
    Column("timestamp", DATETIME),
))
