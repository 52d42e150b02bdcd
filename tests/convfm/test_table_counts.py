"""Partial counts of a labelled table: batches merged in order fit the same extractor as the whole table, and
the batch encoding joins into the same examples (the Ray-free half of distributed preparation)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from convfm.config import DataConfig
from convfm.data import partitioned
from convfm.data.labelled import labelled_frame
from convfm.data.partitioned import check_schemas, choose_preparation, encode_batch, example_set_of, split_files
from convfm.data.readers import is_text_type
from convfm.errors import DataValidationError
from convfm.features.counts import Moments, TableCounts, merge_in_order
from convfm.features.jobs import TableFeatureExtractor

REPO = Path(__file__).resolve().parents[2]
FIELDS = {"categorical": ["device", "region", "ad_topic"], "multi_valued": ["interests"], "numeric": ["price", "hour"]}


def table_config(path: str | Path = "x") -> DataConfig:
    return DataConfig(kind="table", path=str(path), label="clicked", **FIELDS)


@pytest.fixture(scope="module")
def rows() -> pd.DataFrame:
    raw = pd.read_csv(REPO / "configs" / "table_example.csv", dtype=str)
    return labelled_frame(raw, Path("table_example.csv"), table_config())


def extractor(min_freq: int = 1) -> TableFeatureExtractor:
    return TableFeatureExtractor(**FIELDS, min_freq=min_freq)


@pytest.mark.parametrize("min_freq", [1, 320])
def test_batches_merged_in_order_fit_the_whole_tables_extractor(rows, min_freq):
    whole = extractor(min_freq).fit(rows)
    partials = [extractor(min_freq).counts(rows.iloc[start:start + 333]) for start in range(0, len(rows), 333)]
    merged = merge_in_order(TableCounts.from_json(p.to_json()) for p in partials)  # as Ray ships them
    batched = extractor(min_freq).fit_counts(merged)
    assert {c: v.values for c, v in batched.vocabs.items()} == {c: v.values for c, v in whole.vocabs.items()}
    assert batched.feature_map == whole.feature_map
    for column in FIELDS["numeric"]:
        np.testing.assert_allclose(batched._stats[column], whole._stats[column], rtol=1e-12)
    assert merged.rows == len(rows)
    if min_freq > 1:  # the cutoff applies to the merged counts, not to each batch's
        assert 0 < len(whole.vocabs["ad_topic"].values) < len(extractor().fit(rows).vocabs["ad_topic"].values)


def test_one_batch_gives_numpys_mean_and_std_bit_for_bit(rows):
    values = rows["price"].to_numpy(np.float64)
    assert Moments.of(values).mean_std() == [float(values.mean()), float(values.std())]
    assert Moments.of(values[:1]).mean_std() == [float(values[0]), 1.0]  # one value: no spread -> scale 1
    assert Moments().mean_std() == [0.0, 1.0]


def test_encoded_batches_join_into_the_whole_tables_examples(rows):
    fitted = extractor().fit(rows)
    whole = fitted.example_set(rows)
    joined = example_set_of([encode_batch(fitted, rows.iloc[s:s + 700]) for s in range(0, len(rows), 700)], fitted)
    for name in ("cat", "multi", "dense"):
        np.testing.assert_array_equal(getattr(joined.tables[0], name), getattr(whole.tables[0], name))
    np.testing.assert_array_equal(joined.rows, whole.rows)
    np.testing.assert_array_equal(joined.labels, whole.labels)


def test_a_parquet_file_of_the_wrong_schema_is_named_with_its_column(tmp_path, rows):
    for name in ("train", "valid", "test"):
        rows.rename(columns={"label": "clicked"}).to_parquet(tmp_path / f"{name}.parquet")
    config = table_config(tmp_path)
    check_schemas(split_files(config), config)  # the right schema passes
    table = pa.Table.from_pandas(rows.rename(columns={"label": "clicked"}), preserve_index=False)
    views = pa.schema([pa.field(f.name, pa.string_view()) if is_text_type(f.type) else f for f in table.schema])
    assert pa.string_view() in views.types
    pq.write_table(table.cast(views), tmp_path / "valid.parquet")
    check_schemas(split_files(config), config)  # text as string_view passes too
    bad = pa.table({**{c: rows[c] for c in ("device", "region", "interests", "hour")}, "clicked": rows["label"],
                    "price": pa.array([[1.0]] * len(rows)), "ad_topic": rows["ad_topic"]})
    pq.write_table(bad, tmp_path / "valid.parquet")
    with pytest.raises(DataValidationError, match=r"valid\.parquet: column 'price' has type list<\w+: double>"):
        check_schemas(split_files(config), config)
    pq.write_table(bad.drop(["price"]), tmp_path / "valid.parquet")
    with pytest.raises(DataValidationError, match=r"valid\.parquet: missing field column\(s\) \['price'\]"):
        check_schemas(split_files(config), config)


def test_the_preparation_path_and_its_reason(tmp_path, rows, monkeypatch):
    (tmp_path / "market").mkdir()
    (tmp_path / "market" / "interactions.csv").write_text("user_id,job_id,timestamp\n" + "u1,j1,2024-01-01\n" * 99)
    market = DataConfig(path=str(tmp_path / "market"))
    path, why = choose_preparation(market)
    assert path == "memory" and "interactions would take ~0.0 GiB" in why and "in-memory path is faster" in why
    monkeypatch.setattr(partitioned, "MEMORY_BYTES_PER_INTERACTION", 10**12)  # as if it could not fit here
    path, why = choose_preparation(market)
    assert path == "distributed" and "more than half of the" in why
    (tmp_path / "market" / "interactions.csv").unlink()
    (tmp_path / "market" / "interactions").mkdir()
    assert choose_preparation(market) == ("distributed", "the interactions are a folder of part files")
    path, why = choose_preparation(dataclasses.replace(market, events="log/"))
    assert path == "memory" and why.startswith("distributed preparation cannot take these settings (events:")
    assert choose_preparation(market, "memory")[0] == "memory"
    assert choose_preparation(table_config(REPO / "configs" / "table_example.csv")) == (
        "memory", "one table file, split at random in memory")
    for name in ("train", "valid", "test"):
        rows.to_parquet(tmp_path / f"{name}.parquet")
    path, why = choose_preparation(table_config(tmp_path))
    assert path == "memory" and "MiB, below the" in why
    assert choose_preparation(table_config(tmp_path), "distributed")[0] == "distributed"
    (tmp_path / "train.parquet").unlink()
    (tmp_path / "train").mkdir()
    rows.to_parquet(tmp_path / "train" / "part-0.parquet")
    assert choose_preparation(table_config(tmp_path)) == ("distributed", "the training split is a folder of part files")
    with pytest.raises(Exception, match="prepare: must be one of"):
        choose_preparation(table_config(tmp_path), "fast")


def test_split_files_with_a_suffix_in_another_case_are_found(tmp_path, rows):
    """``train.CSV`` and ``valid.Parquet`` (Windows tools) were "no train.parquet, train.csv, ..."."""
    rows.to_csv(tmp_path / "train.CSV", index=False)
    rows.to_parquet(tmp_path / "valid.Parquet")
    rows.to_parquet(tmp_path / "test.parquet")
    assert split_files(table_config(tmp_path)) == {
        "train": [tmp_path / "train.CSV"], "valid": [tmp_path / "valid.Parquet"], "test": [tmp_path / "test.parquet"]}
