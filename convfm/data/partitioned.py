"""A labelled table stored as files per split, prepared batch by batch (Ray-free; ``train.prepare_distributed``
runs these pieces on Ray Data).

Layout: ``config.path`` is a directory holding ``train``, ``valid`` and ``test``, each one
``.parquet``/``.csv``/``.tsv`` file or a directory of such part files (read in name order). The in-memory path
reads the single-file layout too, so on small data both paths can be compared.

Which path a run takes (``choose_preparation``): the in-memory one unless the data is a table too large for
it to win (``DISTRIBUTED_FROM_BYTES``, from ``benchmarks/prepare_memory.py``), a job-market log too large for
the memory available here (``MEMORY_BYTES_PER_INTERACTION``), or stored as part files.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd
import psutil
import pyarrow as pa
import pyarrow.parquet as pq

from convfm.config import DataConfig
from convfm.data.batching import ExampleSet
from convfm.data.labelled import check_columns
from convfm.data.market_parts import check_market_config, log_rows
from convfm.data.readers import (SUFFIXES, TEXT_SUFFIXES, file_suffix, header_names, is_text_type, resolve_path,
                                 suffixed_files)
from convfm.errors import ConfigError, DataValidationError
from convfm.features.base import empty_table, labels_of
from convfm.features.fields import EncodedTable
from convfm.features.table import TableFeatureExtractor

PREPARATIONS = ("auto", "memory", "distributed")
SPLIT_NAMES = ("train", "valid", "test")
# Training files (on disk) from which "auto" prepares on the cluster. benchmarks/prepare_memory.py (README): the
# in-memory path was faster at 2M rows (24 MiB of Parquet), the distributed one at 5M (60 MiB), and the in-memory
# driver peaked at ~70 bytes per byte of Parquet (4.3 GiB at 5M rows) while the distributed driver stayed flat.
DISTRIBUTED_FROM_BYTES = 64 << 20
ENCODED = ("cat", "multi", "dense")
# The in-memory job-market path's driver peak per interaction (benchmarks/prepare_memory.py --kind market: 3.3 GiB
# at 1M interactions, 16.3 GiB at 5M).
MEMORY_BYTES_PER_INTERACTION = 3_400


def split_files(config: DataConfig) -> dict[str, list[Path]]:
    """Split name -> its files, in read order; DataValidationError naming what is missing."""
    root = Path(config.path)
    if config.kind != "table" or not root.is_dir():
        raise ConfigError(f"data.path: distributed preparation reads a table directory with train/valid/test "
                          f"files or folders; got {root} (kind {config.kind!r})")
    out = {}
    for name in SPLIT_NAMES:
        files = [p for p in suffixed_files(root / name) if file_suffix(p) in SUFFIXES]
        if not files and (root / name).is_dir():
            files = sorted(p for p in (root / name).iterdir() if p.suffix.lower() in SUFFIXES and p.is_file())
        if not files:
            raise DataValidationError(f"{root}: no {name}.parquet, {name}.csv, {name}.tsv or {name}/ folder of part "
                                      "files")
        out[name] = files[:1] if files[0].parent == root else files
    return out


def choose_preparation(config: DataConfig, requested: str = "auto") -> tuple[str, str]:
    """("memory" | "distributed", why): the path a run takes, and the reason it prints."""
    if requested not in PREPARATIONS:
        raise ConfigError(f"prepare: must be one of {PREPARATIONS}, got {requested!r}")
    if requested == "distributed":
        if config.kind == "table":
            split_files(config)  # refuses data the distributed path cannot read, before anything starts
        return "distributed", "asked for (--prepare distributed)"
    if requested == "memory":
        return "memory", "asked for (--prepare memory)"
    if config.kind != "table":
        return _market_preparation(config)
    if not Path(config.path).is_dir():
        return "memory", "one table file, split at random in memory"
    files = split_files(config)
    if any(f.parent != Path(config.path) for f in files["train"]):
        return "distributed", "the training split is a folder of part files"
    size = sum(f.stat().st_size for f in files["train"])
    if size >= DISTRIBUTED_FROM_BYTES:
        return "distributed", (f"training files hold {size / 2**20:,.0f} MiB, at or above the "
                               f"{DISTRIBUTED_FROM_BYTES >> 20} MiB from which it was faster and the in-memory "
                               "driver's memory grows past ~4 GiB")
    return "memory", (f"training files hold {size / 2**20:,.0f} MiB, below the {DISTRIBUTED_FROM_BYTES >> 20} MiB "
                      "under which the in-memory path is faster")


def _market_preparation(config: DataConfig) -> tuple[str, str]:
    """A job market goes to the cluster when its log is a folder of part files, or when the in-memory path would
    need more than half of the memory available here (it is faster while it fits)."""
    log = Path(config.path) / config.interactions_file
    try:
        check_market_config(config)
    except ConfigError as exc:
        return "memory", f"distributed preparation cannot take these settings ({exc})"
    if log.is_dir():
        return "distributed", "the interactions are a folder of part files"
    try:
        rows = log_rows(resolve_path(log))
    except (DataValidationError, OSError):
        return "memory", "one interactions file (the in-memory loader reports what is wrong with it)"
    need, available = rows * MEMORY_BYTES_PER_INTERACTION, psutil.virtual_memory().available
    estimate = f"~{rows:,} interactions would take ~{need / 2**30:.1f} GiB in the driver in memory"
    if need > available / 2:
        return "distributed", f"{estimate}, more than half of the {available / 2**30:.1f} GiB available"
    return "memory", (f"{estimate}, within half of the {available / 2**30:.1f} GiB available: the in-memory path is "
                      "faster")


# --------------------------------------------------------------------------------------------- schema
_SCALAR = (is_text_type, pa.types.is_integer, pa.types.is_floating, pa.types.is_boolean, pa.types.is_dictionary,
           pa.types.is_null)
_NUMBER = (pa.types.is_integer, pa.types.is_floating, pa.types.is_decimal, is_text_type, pa.types.is_null)


def check_schemas(files: Mapping[str, Iterable[Path]], config: DataConfig) -> None:
    """Every file has the label and field columns, of types the batches can read (Parquet: from the footer,
    CSV: the header), before any work starts; DataValidationError naming the file and the column."""
    for paths in files.values():
        for path in paths:
            if path.suffix.lower() in TEXT_SUFFIXES:
                check_columns(path, header_names(path), config)
                continue
            try:
                schema = pq.read_schema(path)
            except (OSError, pa.ArrowInvalid) as exc:
                raise DataValidationError(f"{path}: cannot read parquet schema ({exc})") from None
            check_columns(path, schema.names, config)
            for column in config.categorical + config.multi_valued + config.numeric + (config.label,):
                kind = schema.field(column).type
                allowed = _NUMBER if column in config.numeric else _SCALAR
                if not any(test(kind) for test in allowed):
                    what = "a number (or numbers as text)" if column in config.numeric else "one scalar value"
                    raise DataValidationError(f"{path}: column {column!r} has type {kind}; expected {what} per row")


# --------------------------------------------------------------------------------------------- batches
def encode_batch(extractor: TableFeatureExtractor, frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """A typed batch (``labelled_frame``) -> its encoded groups and labels, as Ray Data columns; empty groups
    (no numeric field, say) are left out: ``example_set_of`` rebuilds them from the feature map."""
    table = extractor.transform(frame)
    columns = {name: array for name, array in table.arrays().items() if array.size}
    return {**columns, "label": labels_of(frame, "label", "table")}


def example_set_of(batches: Iterable[Mapping[str, np.ndarray]], extractor: Any) -> ExampleSet:
    """Encoded batches joined into one ExampleSet, as ``extractor.example_set`` of the same rows would give:
    ``encode_batch``'s columns (a table) as one table of rows; job-market examples' compact columns
    (``JobFeatureExtractor.streamed_columns``) as rows of the extractor's catalogs and context tables."""
    parts = list(batches)
    labels = np.concatenate([p["label"] for p in parts]).astype(np.float32) if parts else np.zeros(0, np.float32)
    if parts and "user_row" in parts[0]:
        return extractor.streamed_set(parts, labels)
    empty = empty_table(extractor.feature_map.fields)
    groups = [np.concatenate([p[name] for p in parts]) if parts and name in parts[0] else
              np.zeros((len(labels), *getattr(empty, name).shape[1:]), getattr(empty, name).dtype)
              for name in ENCODED]
    return ExampleSet([EncodedTable(*groups)], np.arange(len(labels), dtype=np.int64)[:, None], labels)

