"""What both extractors share: field grouping, input checks, and JSON + NPZ artifacts (never pickle).

Artifacts are ``<stem>.json`` (config, vocabularies, statistics) + ``<stem>.npz`` (arrays).

``path`` is a directory (files ``extractor.json``/``extractor.npz`` inside it) or a file-like path such as
``artifacts/feature_extractor.pkl``, whose parent and stem name the pair (``artifacts/feature_extractor.json``
and ``.npz``; nothing is ever written under the ``.pkl`` name). The JSON records the NPZ's SHA-256, so a
truncated or swapped array file is refused instead of half-loaded.
"""
from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import pandas as pd

from convfm.data.readers import binary_labels
from convfm.store.checksums import sha256_file
from convfm.errors import ArtifactError, DataValidationError
from convfm.features.fields import EncodedTable, FieldSpec
from convfm.jsonfile import read_json, write_json_atomic

EXTRACTOR_VERSION = 1
DEFAULT_STEM = "extractor"
UNKNOWN_ROW = 0  # catalog row of ids that were not fitted
FEW_IDS = 64  # lookups of at most this many ids skip pandas (a request's: its per-call overhead dominates)


def _is_directory(path: Path) -> bool:
    return path.is_dir() or not path.suffix


def artifact_files(path: str | Path) -> tuple[Path, Path]:
    """The (json, npz) pair that ``path`` names, for loading.

    In a directory without ``extractor.json`` the one ``*.json`` that has an ``.npz`` beside it is used, so a
    pair saved as ``dir/feature_extractor.pkl`` loads from ``dir`` too.
    """
    path = Path(path)
    if not _is_directory(path):
        return path.with_suffix(".json"), path.with_suffix(".npz")
    default = path / f"{DEFAULT_STEM}.json"
    if not default.exists() and path.is_dir():
        pairs = [p for p in sorted(path.glob("*.json")) if p.with_suffix(".npz").is_file()]
        if len(pairs) > 1:
            names = [p.name for p in pairs]
            raise ArtifactError(f"{path}: several extractors {names}; pass the file path of one")
        if pairs:
            default = pairs[0]
    return default, default.with_suffix(".npz")


def write_artifact(path: str | Path, meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> Path:
    """Write the pair (each file via a temp file + rename, the JSON last); returns the JSON path."""
    path = Path(path)
    if _is_directory(path):
        path.mkdir(parents=True, exist_ok=True)
        stem = path / DEFAULT_STEM
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        stem = path.with_suffix("")
    json_path, npz_path = stem.with_name(stem.name + ".json"), stem.with_name(stem.name + ".npz")
    tmp = npz_path.with_name(npz_path.name + ".tmp")
    with tmp.open("wb") as handle:
        np.savez_compressed(handle, **arrays)
    os.replace(tmp, npz_path)
    write_json_atomic(json_path, {"format_version": EXTRACTOR_VERSION, **meta, "npz_sha256": sha256_file(npz_path)})
    return json_path


def read_artifact(path: str | Path, kind: Optional[str] = None) -> tuple[dict, dict[str, np.ndarray], Path]:
    """(meta, arrays, json path); ArtifactError naming the file for anything missing, corrupt or foreign."""
    json_path, npz_path = artifact_files(path)
    meta = read_json(json_path, "extractor file", ArtifactError)
    version = meta.get("format_version")
    if version != EXTRACTOR_VERSION:
        raise ArtifactError(f"{json_path}: extractor format_version {version!r}, this convfm reads {EXTRACTOR_VERSION}")
    if kind is not None and meta.get("kind") != kind:
        raise ArtifactError(f"{json_path}: extractor kind {meta.get('kind')!r}, expected {kind!r}")
    if not npz_path.is_file():
        raise ArtifactError(f"{npz_path}: extractor arrays not found (next to {json_path.name})")
    if sha256_file(npz_path) != meta.get("npz_sha256"):
        raise ArtifactError(f"{npz_path}: checksum differs from {json_path.name} (truncated or modified)")
    try:
        with np.load(npz_path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise ArtifactError(f"{npz_path}: unreadable extractor arrays ({exc})") from None
    return meta, arrays, json_path


def table_arrays(table: EncodedTable, prefix: str) -> dict[str, np.ndarray]:
    return {f"{prefix}.{name}": array for name, array in table.arrays().items()}


def table_from_arrays(arrays: Mapping[str, np.ndarray], prefix: str) -> EncodedTable:
    table = EncodedTable(*(arrays[f"{prefix}.{name}"] for name in ("cat", "multi", "dense")))
    if table.cat.ndim != 2 or table.multi.ndim != 3 or table.dense.ndim != 2:
        raise ValueError(f"{prefix}: encoded arrays have wrong ranks")
    return table


class RowIndex:
    """id -> catalog row, vectorised (pandas hash index); unknown or missing ids -> ``UNKNOWN_ROW``."""

    def __init__(self, ids: Sequence[str]) -> None:
        first: dict[str, int] = {}
        for row, key in enumerate(ids):
            if key:
                first.setdefault(key, row)
        self.mapping = first
        self._index = pd.Index(list(first), dtype=object)
        self._rows = np.fromiter(first.values(), dtype=np.int64, count=len(first))

    def add(self, ids: Sequence[str], start: int) -> None:
        """Index new ids at rows ``start``, ``start + 1``, ... (ids already indexed keep their row)."""
        new = {key: start + i for i, key in enumerate(ids) if key and key not in self.mapping}
        self.mapping.update(new)
        self._index = self._index.append(pd.Index(list(new), dtype=object))
        self._rows = np.concatenate([self._rows, np.fromiter(new.values(), dtype=np.int64, count=len(new))])

    def rows(self, ids: np.ndarray) -> np.ndarray:
        if not len(self._rows):
            return np.full(len(ids), UNKNOWN_ROW, dtype=np.int64)
        if len(ids) <= FEW_IDS:
            return np.fromiter((self.mapping.get(key, UNKNOWN_ROW) for key in ids), dtype=np.int64, count=len(ids))
        position = self._index.get_indexer(ids)
        return np.where(position >= 0, self._rows[position], UNKNOWN_ROW).astype(np.int64)


def with_room(buffer: Any, rows: int) -> Any:
    """``buffer`` (a numpy array or torch tensor, rows first) if it holds ``rows`` rows, else a copy with room
    for at least ``rows`` and twice as many as before: a table that grows k rows at a time copies O(total) rows
    in all, not O(total) per step."""
    if rows <= len(buffer):
        return buffer
    shape = (max(rows, 2 * len(buffer)), *buffer.shape[1:])
    grown = buffer.new_empty(shape) if hasattr(buffer, "new_empty") else np.empty(shape, dtype=buffer.dtype)
    grown[: len(buffer)] = buffer
    return grown


# ------------------------------------------------------------------------------------------- encoding
def encode_fields(fields: Sequence[FieldSpec], columns: Mapping[str, np.ndarray], rows: int) -> EncodedTable:
    """Group per-field arrays by kind (FieldSpec order): categorical (N,), multi (N, max_len), dense (N, width)."""
    cat = [columns[f.name] for f in fields if f.kind == "categorical"]
    multi_fields = [f for f in fields if f.kind == "multi"]
    length = max((f.max_len for f in multi_fields), default=0)
    multi = [np.pad(columns[f.name], ((0, 0), (0, length - f.max_len))) for f in multi_fields]
    dense = [columns[f.name] for f in fields if f.kind == "dense"]
    return EncodedTable(
        np.stack(cat, axis=1).astype(np.int64) if cat else np.zeros((rows, 0), np.int64),
        np.stack(multi, axis=1).astype(np.int64) if multi else np.zeros((rows, 0, 0), np.int64),
        np.concatenate(dense, axis=1).astype(np.float32) if dense else np.zeros((rows, 0), np.float32),
    )


def concat_rows(tables: Sequence[EncodedTable]) -> EncodedTable:
    """Stack tables of the same fields along the row axis."""
    return EncodedTable(*(np.concatenate([t.arrays()[k] for t in tables]) for k in ("cat", "multi", "dense")))


def empty_table(fields: Sequence[FieldSpec]) -> EncodedTable:
    """No rows of ``fields``: the per-row shapes they imply."""
    shapes = {"categorical": lambda f: (0,), "multi": lambda f: (0, f.max_len), "dense": lambda f: (0, f.width)}
    return encode_fields(fields, {f.name: np.zeros(shapes[f.kind](f)) for f in fields}, 0)


def check_table(table: EncodedTable, fields: Sequence[FieldSpec], name: str) -> None:
    """A loaded table must have the per-row shapes its fields imply (ArtifactError otherwise)."""
    expected = empty_table(fields).arrays()
    for group, array in table.arrays().items():
        if array.shape[1:] != expected[group].shape[1:]:
            raise ArtifactError(f"{name}.{group}: shape {array.shape[1:]} does not match the feature map")


# ----------------------------------------------------------------------------------------- input checks
def require_frame(df: Any, what: str, columns: Sequence[str] = ()) -> pd.DataFrame:
    """``df`` must be a DataFrame with ``columns`` (DataValidationError naming them otherwise)."""
    if not isinstance(df, pd.DataFrame):
        raise DataValidationError(f"{what}: expected a pandas DataFrame, got {type(df).__name__}")
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DataValidationError(f"{what}: missing required column(s) {missing}; columns: {list(df.columns)}")
    return df


def labels_of(df: pd.DataFrame, column: str, what: str) -> np.ndarray:
    """``df[column]`` as float32 0/1 labels (0/1, -1/1, true/false, as the loaders read them: a frame passed to
    the Python API directly is read the same way); DataValidationError naming the first bad row."""
    require_frame(df, what, [column])
    return binary_labels(df[column].reset_index(drop=True), Path(what), column).to_numpy(np.float32)

