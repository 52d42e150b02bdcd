"""Load and validate a generic labelled table (``--table``): the label and the field columns a table spec lists,
typed as the model reads them; errors name the file, the column and the row (``convfm.data.readers``)."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from convfm.config import DataConfig
from convfm.errors import DataValidationError
from convfm.data.readers import binary_labels, read_located, to_numbers
from convfm.data.splitting import Splits, random_parts
from convfm.features.text import column_strings

logger = logging.getLogger(__name__)


def load_table(config: DataConfig) -> Splits:
    """Load a labelled table: ``config.path`` is one file (split at random with the fractions) or a directory
    holding train/valid/test files. Returns the field columns plus a float32 ``label`` column."""
    path = Path(config.path)
    if path.is_dir():
        return Splits(*(_read_labelled(path / name, config) for name in ("train", "valid", "test")))
    frame = _read_labelled(path, config)
    parts = random_parts(len(frame), config.valid_fraction, config.test_fraction, config.seed)
    return Splits(*(frame[parts == k].reset_index(drop=True) for k in range(3)))


def _read_labelled(path: Path, config: DataConfig) -> pd.DataFrame:
    frame, path = read_located(path)
    check_columns(path, list(frame.columns), config)
    return labelled_frame(frame, path, config)


def check_columns(path: Path, columns: list[str], config: DataConfig) -> None:
    """A labelled table's file must hold the label and every field column (extra columns are ignored)."""
    if config.label not in columns:
        raise DataValidationError(f"{path}: missing label column {config.label!r}; columns in the file: {columns}")
    check_fields(path, columns, config)
    fields = config.categorical + config.multi_valued + config.numeric
    extras = [c for c in columns if c not in fields and c != config.label]
    if extras:
        logger.warning("%s: ignoring column(s) %s that are neither label nor a listed field", path, extras)


def check_fields(path: Path, columns: list[str], config: DataConfig) -> None:
    """Every field column of ``config`` is in the file (``columns``): DataValidationError naming the missing."""
    missing = [c for c in config.categorical + config.multi_valued + config.numeric if c not in columns]
    if missing:
        raise DataValidationError(f"{path}: missing field column(s) {missing}; columns in the file: {columns}")


def labelled_frame(frame: pd.DataFrame, path: Path, config: DataConfig) -> pd.DataFrame:
    """The field columns of ``frame`` typed (categories as str, numbers as float64) plus a float32 ``label``:
    a whole file's rows, or one batch of them in distributed preparation (row numbers then count in the batch).
    """
    out = typed_fields(frame, path, config)
    out["label"] = binary_labels(frame[config.label], path, config.label).astype(np.float32).to_numpy()
    return out


def typed_fields(frame: pd.DataFrame, path: Path, config: DataConfig) -> pd.DataFrame:
    """``labelled_frame`` without the label: rows to score (``convfm predict``)."""
    out = pd.DataFrame(index=frame.index)
    for column in config.categorical + config.multi_valued:
        out[column] = column_strings(frame, column)  # a NaN-holding float column of ids: 184.0 is "184", NaN ""
    for column in config.numeric:
        out[column] = to_numbers(frame[column], path, column, allow_missing=False)
    return out.reset_index(drop=True)
