"""JSON documents, the one way convfm reads and writes them: written atomically (temp file + rename) with one
policy for values JSON does not know, read from disk or a storage URI with errors that name the file and what
it should have held."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Type

import numpy as np

from convfm.store import storage
from convfm.errors import ConfigError, ConvFMError


def _json_default(value: Any) -> Any:
    """Only called for types json does not know: numpy scalars become Python numbers, anything else its str."""
    return value.item() if isinstance(value, np.generic) else str(value)


def _finite(value: Any) -> Any:
    """``value`` with every NaN or infinite float as None: JSON has no such numbers, and strict parsers (other
    languages', ``jq``) refuse the ``NaN`` Python would write."""
    if isinstance(value, Mapping):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, (float, np.floating)) and not np.isfinite(value):
        return None
    return value


def to_plain(document: Any) -> Any:
    """``document`` as it reads back from a file: tuples as lists, numpy scalars as numbers."""
    return json.loads(json.dumps(document, default=_json_default))


def finite_plain(document: Any) -> Any:
    """``to_plain`` with every NaN or infinite float as None: what a JSON reply may carry."""
    return to_plain(_finite(document))


def write_json_atomic(path: str | Path, document: Mapping[str, Any]) -> None:
    """An interrupted writer never leaves half a file: ``storage.write_text`` (locally a temp file beside
    ``path``, then a rename; on an object store one PUT). NaN and infinities are written as null."""
    storage.write_text(path, json.dumps(_finite(dict(document)), indent=2, default=_json_default,
                                        allow_nan=False) + "\n")


def read_json(path: str | Path, what: str, error: Type[ConvFMError] = ConfigError) -> dict[str, Any]:
    """The JSON object at ``path`` (a local path or a storage URI). ``error`` (ConfigError for files a user
    points at, ArtifactError inside a model directory) names the file and ``what`` it should hold when it is
    missing, unreadable, not JSON or not an object."""
    try:
        text = storage.read_text(path)
    except FileNotFoundError:
        raise error(f"{path}: {what} not found") from None
    except UnicodeDecodeError as exc:
        raise error(f"{path}: {what} is not valid JSON (not UTF-8 at byte {exc.start})") from None
    return parse_json(text, path, what, error)


def parse_json(text: str, path: str | Path, what: str, error: Type[ConvFMError] = ConfigError) -> dict[str, Any]:
    """``read_json`` of text already read from ``path`` (a caller that also compares the bytes)."""
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(f"{path}: {what} is not valid JSON ({exc})") from None
    if not isinstance(document, dict):
        raise error(f"{path}: {what} must hold a JSON object, got {type(document).__name__}")
    return document
