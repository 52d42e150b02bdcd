"""Distributed preparation of a labelled table on Ray Data: the fit in one pass of partial counts, encoding in
``map_batches``; the training workers stream their shards (``train.loop``), so the driver never holds the rows.

The driver keeps what the model keeps: the merged counts (the vocabularies' values) and the fitted extractor.
Batches are counted in parallel and their counts merged in row order (Ray Data keeps it: ``preserve_order``),
because a vocabulary lists values in first-seen order: a groupby would count them but lose that order.
The result equals ``prepare_data``'s extractor on the same rows (``tests/train/test_prepare_distributed.py``).
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Sequence

import pandas as pd
import pyarrow.parquet as pq
import ray
import ray.data

from convfm.config import DataConfig
from convfm.data.labelled import labelled_frame
from convfm.data.partitioned import check_schemas, encode_batch, split_files
from convfm.data.readers import GZIP_SUFFIXES, TEXT_SUFFIXES, arrow_csv_options, file_suffix, plain_schema
from convfm.errors import ConfigError
from convfm.features.counts import TableCounts
from convfm.features.table import TableFeatureExtractor

log = logging.getLogger(__name__)
BATCH_ROWS = 65_536  # rows per counting/encoding batch: large batches keep per-batch overhead small
PATH = "path"  # the file column Ray Data adds (include_paths), for messages


@dataclasses.dataclass
class DistributedData:
    """The fitted extractor and the datasets the workers stream: ``train`` encoded (``encode_batch``'s
    columns), ``valid`` typed rows (rank 0 encodes and evaluates them as the in-memory path does) or, for
    job-market data, encoded rows with their (user_id, job_id, timestamp)."""

    config: DataConfig
    extractor: Any  # TableFeatureExtractor, or JobFeatureExtractor (train.prepare_market)
    datasets: dict[str, ray.data.Dataset]
    train_rows: int
    valid_labels: dict[float, int]  # label -> count in the validation split
    # job-market data (train.prepare_market): the training split's baseline that validation reports beside the
    # model, and what the exported model directory holds besides the model (serving.json)
    popularity: Optional[Any] = None
    extra_json: Optional[dict[str, Any]] = None
    split_periods: Optional[dict[str, Any]] = None  # split "global_time": its periods (as PreparedData's)
    live_catalog: Optional[dict[str, Any]] = None  # always None: an event log is prepared in memory


def read_split(files: Sequence[Path], config: DataConfig) -> ray.data.Dataset:
    """The split's rows as Ray Data reads them (in file order), with a ``path`` column for messages."""
    return read_files(files, [*config.categorical, *config.multi_valued, *config.numeric, config.label])


def read_files(files: Sequence[Path], columns: Sequence[str]) -> ray.data.Dataset:
    """``columns`` of Parquet or CSV ``files`` (one format) as Ray Data reads them, in file order, with a ``path``
    column for messages. CSV columns are read as text, as the in-memory reader does, so both paths type values
    the same way; Parquet's view types as plain text (``plain_schema``)."""
    columns, paths = list(columns), [str(p) for p in files]
    if files[0].suffix.lower() == ".parquet":
        schema = plain_schema([pq.read_schema(p) for p in paths], columns)
        return ray.data.read_parquet(paths, columns=columns, include_paths=True, schema=schema)
    # Ray Data infers gzip from a lower-case ".gz" only: interactions.CSV.GZ would be parsed compressed
    stream = {"compression": "gzip"} if file_suffix(files[0]) in GZIP_SUFFIXES else None
    return ray.data.read_csv(paths, include_paths=True, arrow_open_stream_args=stream,
                             **arrow_csv_options(files, columns))


def _typed(batch: pd.DataFrame, config: DataConfig) -> pd.DataFrame:
    path = Path(str(batch[PATH].iloc[0])) if len(batch) else Path(config.path)
    raw = batch.drop(columns=[PATH])
    if path.suffix.lower() in TEXT_SUFFIXES:  # pandas reads a missing CSV cell as NaN, pyarrow as null (None)
        raw = raw.astype(object).where(raw.notna(), float("nan"))
    return labelled_frame(raw, path, config)


def _count(batch: pd.DataFrame, config: DataConfig, extractor: TableFeatureExtractor) -> pd.DataFrame:
    return pd.DataFrame({"counts": [extractor.counts(_typed(batch, config)).to_json()]})


def _encode(batch: pd.DataFrame, config: DataConfig, extractor: TableFeatureExtractor) -> dict[str, Any]:
    return encode_batch(extractor, _typed(batch, config))


def _labels(batch: pd.DataFrame) -> pd.DataFrame:
    counts = batch["label"].value_counts()
    return pd.DataFrame({"label": counts.index.astype(float), "count": counts.to_numpy()})


def _label_counts(split: ray.data.Dataset) -> dict[float, int]:
    """label -> rows, from per-batch counts summed here (no shuffle: a groupby would start one per partition)."""
    total: dict[float, int] = {}
    for row in split.map_batches(_labels, batch_format="pandas").iter_rows():
        total[float(row["label"])] = total.get(float(row["label"]), 0) + int(row["count"])
    return total


def fit_extractor(train: ray.data.Dataset, config: DataConfig, extractor: TableFeatureExtractor,
                  base: Optional[TableFeatureExtractor] = None, batch_rows: int = BATCH_ROWS
                  ) -> tuple[TableFeatureExtractor, TableCounts]:
    """``extractor`` fitted on ``train``: batches counted on the cluster, merged here in row order."""
    counted = train.map_batches(_count, batch_format="pandas", batch_size=batch_rows,
                                fn_kwargs={"config": config, "extractor": extractor})
    merged: Optional[TableCounts] = None
    for row in counted.iter_rows():
        partial = TableCounts.from_json(row["counts"])
        merged = partial if merged is None else merged.merged(partial)
    if merged is None:
        raise ConfigError(f"{config.path}: the training split has no rows")
    return extractor.fit_counts(merged, base), merged


def encode(split: ray.data.Dataset, config: DataConfig, extractor: TableFeatureExtractor,
           batch_rows: int = BATCH_ROWS) -> ray.data.Dataset:
    """``split`` encoded by ``extractor`` in ``map_batches`` (lazy: it runs as the workers stream it)."""
    return split.map_batches(_encode, batch_format="pandas", batch_size=batch_rows,
                             fn_kwargs={"config": config, "extractor": extractor})


def typed_rows(split: ray.data.Dataset, config: DataConfig, batch_rows: int = BATCH_ROWS) -> ray.data.Dataset:
    """``split``'s rows typed as the in-memory reader types them (``labelled_frame``)."""
    return split.map_batches(_typed, batch_format="pandas", batch_size=batch_rows, fn_kwargs={"config": config})


def prepare_distributed(config: DataConfig, extractor_options: Optional[Mapping[str, Any]] = None,
                        base: Optional[TableFeatureExtractor] = None, batch_rows: int = BATCH_ROWS,
                        extractor: Optional[TableFeatureExtractor] = None) -> DistributedData:
    """Check every file's schema (before any work), fit on the training split (unless ``extractor``, a
    resumed run's, is given: it encodes as before) and return the lazy datasets the workers stream. ``base``: a
    warm start's published extractor, as in ``prepare_data``. Ray must be running."""
    files = split_files(config)
    check_schemas(files, config)
    with ordered_datasets():
        splits = {name: read_split(paths, config) for name, paths in files.items()}
        if extractor is not None:
            rows = splits["train"].count()
        else:
            extractor = (TableFeatureExtractor(**base.get_config()) if base is not None else TableFeatureExtractor(
                categorical=list(config.categorical), multi_valued=list(config.multi_valued),
                numeric=list(config.numeric), separator=config.separator, **dict(extractor_options or {})))
            extractor, counts = fit_extractor(splits["train"], config, extractor, base, batch_rows)
            rows = counts.rows
        valid = typed_rows(splits["valid"], config, batch_rows)
        valid_labels = _label_counts(valid)
        datasets = {"train": encode(splits["train"], config, extractor, batch_rows), "valid": valid}
    log.info("prepared on the cluster: %d training rows, vocabularies %s", rows,
             {name: len(v) for name, v in extractor.vocabs.items()})
    return DistributedData(config, extractor, datasets, rows, valid_labels)


@contextlib.contextmanager
def ordered_datasets() -> Iterator[None]:
    """Datasets created inside keep their rows in file order (the fit needs it; it also makes the workers'
    shards the same from run to run) and fail with a batch function's own exception, a bad cell's one-line
    DataValidationError, not Ray Data's UserCodeException, which loses it on the way to the driver. Each dataset
    copies the context it was created in."""
    context = ray.data.DataContext.get_current()
    before = context.execution_options.preserve_order, context.raise_original_map_exception
    context.execution_options.preserve_order, context.raise_original_map_exception = True, True
    try:
        yield
    finally:
        context.execution_options.preserve_order, context.raise_original_map_exception = before
