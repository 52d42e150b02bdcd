"""Distributed preparation on Ray Data equals the in-memory path on small data: the fitted extractor (vocabulary
order and ids, statistics) and the encoded training examples; a wrong schema fails before any Ray work.
`convfm train --prepare distributed` itself, its workers streaming their shards, runs in
tests/cluster/test_real_cluster.py on a 2-node `ray start` cluster (the documented command)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from convfm.cli.common import load_table_spec
from convfm.config import DataConfig
from convfm.data.partitioned import example_set_of
from convfm.data.prepare import prepare_data
from convfm.errors import DataValidationError


def config_of(root: Path) -> DataConfig:
    """The spec ``table_splits`` writes (configs/table_example.yaml's fields) on the files in ``root``."""
    return load_table_spec(root / "table.yaml")


@pytest.mark.timeout(180)
def test_distributed_fit_and_encoding_equal_the_in_memory_path(ray_local, table_splits):
    from train.prepare_distributed import prepare_distributed

    config = config_of(table_splits)
    memory = prepare_data(config, extractor_options={"min_freq": 5})
    cluster = prepare_distributed(config, {"min_freq": 5}, batch_rows=1000)  # several batches, merged in order
    want, got = memory.extractor, cluster.extractor
    assert {c: v.values for c, v in got.vocabs.items()} == {c: v.values for c, v in want.vocabs.items()}
    assert got.feature_map == want.feature_map and got.get_config() == want.get_config()
    for column in config.numeric:
        np.testing.assert_allclose(got._stats[column], want._stats[column], rtol=1e-12)
    assert cluster.train_rows == len(memory.sets["train"]) == 3000

    # encoding in map_batches, with the in-memory extractor so the arrays must match exactly
    from train.prepare_distributed import encode, read_split, typed_rows
    from convfm.data.partitioned import split_files

    files = split_files(config)
    with_memory_extractor = encode(read_split(files["train"], config), config, want, batch_rows=1000)
    joined = example_set_of(with_memory_extractor.iter_batches(batch_size=None, batch_format="numpy"), want)
    for name in ("cat", "multi", "dense"):
        np.testing.assert_array_equal(getattr(joined.tables[0], name), getattr(memory.sets["train"].tables[0], name))
    np.testing.assert_array_equal(joined.labels, memory.sets["train"].labels)

    test = typed_rows(read_split(files["test"], config), config, batch_rows=1000)  # as evaluation reads it
    for name, dataset in (("valid", cluster.datasets["valid"]), ("test", test)):
        # CSV and TSV typed alike (Ray Data hands strings back arrow-backed: same values, another pandas dtype)
        read = pd.concat(list(dataset.iter_batches(batch_size=None, batch_format="pandas")))
        pd.testing.assert_frame_equal(read.reset_index(drop=True), memory.frames[name], check_dtype=False)
    assert cluster.valid_labels == memory.frames["valid"]["label"].value_counts().to_dict()


def test_a_wrong_schema_fails_before_ray_reads_anything(table_splits, tmp_path):
    from train.prepare_distributed import prepare_distributed

    for name in ("train.parquet", "valid.csv", "test.tsv", "table.yaml"):
        (tmp_path / name).write_bytes((table_splits / name).read_bytes())
    (tmp_path / "test.tsv").unlink()
    pd.read_csv(table_splits / "test.tsv", sep="\t").drop(columns=["hour"]).to_parquet(tmp_path / "test.parquet")
    # no ray_local: the schema check runs before any Ray Data call (it would start a Ray of its own)
    with pytest.raises(DataValidationError, match=r"test\.parquet: missing field column\(s\) \['hour'\]"):
        prepare_distributed(config_of(tmp_path))



@pytest.mark.timeout(180)
def test_a_bad_cell_found_on_a_worker_reaches_the_cli_as_its_one_line(ray_local, table_splits, tmp_path):
    """Ray Data raises the batch function's own error (not a UserCodeException, which drops it on the way to the
    driver), so the CLI prints the cell's message."""
    from convfm.cli.main import user_error
    from train.prepare_distributed import prepare_distributed

    for name in ("valid.csv", "test.tsv", "table.yaml"):
        (tmp_path / name).write_bytes((table_splits / name).read_bytes())
    train = pd.read_parquet(table_splits / "train.parquet")
    train.loc[4, "clicked"] = "2"
    train.to_parquet(tmp_path / "train.parquet")
    with pytest.raises(Exception) as failure:
        prepare_distributed(config_of(tmp_path), batch_rows=1000)
    error = user_error(failure.value)
    assert isinstance(error, DataValidationError)
    assert "train.parquet: column 'clicked', row 5: label '2' is not binary" in str(error)


def test_text_parts_with_different_separators_are_refused_naming_them(tmp_path):
    from train.prepare_distributed import read_files

    (tmp_path / "part-0.csv").write_text("label,color\n1,red\n")
    (tmp_path / "part-1.csv").write_text("label;color\n0;blue\n")
    with pytest.raises(DataValidationError, match=r"the text files use different separators \[',', ';'\]"):
        read_files(sorted(tmp_path.iterdir()), ["label", "color"])  # before any Ray Data call
