"""The ``extra`` values of a request (a profile's, a posted job's) checked against the columns a model reads:
a 422 naming the field for a column the model does not read or a value its column's kind cannot take.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

from convfm.features.extra_fields import slug
from serve.replies import ServiceError
from serve.schemas import SHORT_TEXT


def profile_extra(columns: dict[str, str], extra: dict[str, Any]) -> dict[str, list[str]]:
    """A profile's ``extra`` values as one-row frame columns. ServiceError 422 for a column the model does not read
    (a typo or another model's: scoring on without it would hide the mistake) or a value its kind cannot take."""
    unread = unread_extra(columns, extra, "profile.extra")
    if unread:
        raise ServiceError(422, f"profile.extra: this model reads no user column {unread}; it reads "
                                f"{sorted(columns)} (case and punctuation aside)")
    return {name: [";".join(v) if isinstance(v, list) else v] for name, v in extra.items()}


def unread_extra(columns: Mapping[str, str], extra: Mapping[str, Any], where: str) -> list[str]:
    """The keys of ``extra`` (a profile's or a posted job's values) that match none of ``columns`` (a model's
    ``extra_columns`` of that table, case and punctuation aside). ServiceError 422 naming ``where`` and the key
    for a value its column's kind cannot take: a list for a category, number or text column, text that is no
    number for a number column (read as missing, it would hide the mistake), or more than 200 characters but
    for a text column (the schema lets any value be as long as a description)."""
    kinds = {slug(column): kind for column, kind in columns.items()}
    for name, value in extra.items():
        kind = kinds.get(slug(name))
        if kind not in (None, "list") and isinstance(value, list):
            raise ServiceError(422, f"{where}.{name}: a {kind} column takes one value, not a list")
        if kind not in (None, "text") and isinstance(value, str) and len(value) > SHORT_TEXT:
            raise ServiceError(422, f"{where}.{name}: a {kind} value takes at most {SHORT_TEXT} characters")
        if kind == "number" and not _is_number(value):
            raise ServiceError(422, f"{where}.{name}: {value!r} is not a number")
    return [name for name in extra if slug(name) not in kinds]


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False
