"""JSON documents: written atomically to disk (temp file + rename), read from disk or a storage URI with errors
that name the file."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from convfm import storage
from convfm.errors import ConfigError


def _json_default(value: Any) -> Any:
    """Only called for types json does not know: numpy scalars become Python numbers, anything else its str."""
    return value.item() if isinstance(value, np.generic) else str(value)


def write_json_atomic(path: Path, document: Mapping[str, Any]) -> None:
    """An interrupted writer never leaves half a file: write a temp file beside ``path``, then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".json", dir=path.parent)
    with os.fdopen(handle, "w") as file:
        file.write(json.dumps(dict(document), indent=2, default=_json_default) + "\n")
    os.replace(tmp, path)


def read_json(path: str | Path, what: str) -> dict[str, Any]:
    """The JSON document at ``path`` (a local path or a storage URI); ConfigError saying the directory is
    not ``what`` when it is missing."""
    try:
        return json.loads(storage.read_text(path))
    except FileNotFoundError:
        raise ConfigError(f"{path}: not found; {storage.parent(path)} is not {what}") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc})") from None
