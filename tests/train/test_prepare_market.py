"""Job-market data prepared on Ray Data (train.prepare_market) equals the in-memory path on small data: the same
vocabularies, the same encoded examples (history and recency included), the same split starts, the users' latest
history and the popularity baseline. Negatives are drawn per user bucket, so the equality is checked without
them here; tests/convfm/test_market_parts.py checks the drawn ones. `convfm train --prepare distributed` on a
folder of part files runs on a 2-node `ray start` cluster in tests/cluster/test_real_cluster.py."""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from convfm.config import DataConfig
from convfm.data.batching import ExampleSet
from convfm.data.partitioned import example_set_of
from convfm.data.prepare import prepare_data
from convfm.errors import DataValidationError
from convfm.evaluation.metrics import PopularityBaseline


def sorted_rows(examples: ExampleSet) -> np.ndarray:
    """Every example as one float row (its sides joined, label last), sorted: the set of examples."""
    table = functools.reduce(lambda a, b: a.join(b), [t.take(examples.rows[:, s])
                                                      for s, t in enumerate(examples.tables)])
    flat = np.concatenate([table.cat, table.multi.reshape(len(table), -1), table.dense,
                           examples.labels[:, None]], axis=1).astype(np.float64)
    return flat[np.lexsort(flat.T[::-1])]


@pytest.fixture(scope="module")
def uneven_market(market_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test market with every third job id and every fifth user id made longer: buckets then hold ids of
    different lengths (a history column typed by its bucket's longest id would not concatenate)."""
    out = tmp_path_factory.mktemp("uneven_market")
    longer = {"job_id": lambda ids: ids.where(ids.str[1:].astype(int) % 3 > 0, ids + "-senior-role"),
              "user_id": lambda ids: ids.where(ids.str[1:].astype(int) % 5 > 0, ids + "-x")}
    for name in ("jobs", "users", "interactions"):
        frame = pd.read_csv(market_dir / f"{name}.csv", dtype=str, keep_default_na=False)
        for column, rename in longer.items():
            if column in frame:
                frame[column] = rename(frame[column])
        frame.to_csv(out / f"{name}.csv", index=False)
    return out


@pytest.mark.timeout(240)
@pytest.mark.parametrize("split", ["time", "global_time"])
def test_distributed_market_equals_the_in_memory_path(ray_local, uneven_market, split):
    from train.prepare_market import prepare_market_distributed

    config = DataConfig(path=str(uneven_market), negative_ratio=0, split=split, valid_fraction=0.15)
    memory = prepare_data(config)
    cluster = prepare_market_distributed(config)
    want, got = memory.extractor, cluster.extractor
    assert {n: v.values for n, v in got.vocabs.items()} == {n: v.values for n, v in want.vocabs.items()}
    assert got.feature_map == want.feature_map and got.get_config() == want.get_config()
    assert got.user_ids == want.user_ids and got.job_ids == want.job_ids

    train = example_set_of(cluster.datasets["train"].iter_batches(batch_size=None, batch_format="numpy"), got)
    assert cluster.train_rows == len(train) == len(memory.sets["train"])
    np.testing.assert_array_equal(sorted_rows(train), sorted_rows(memory.sets["train"]))

    valid = list(cluster.datasets["valid"].iter_batches(batch_size=None, batch_format="numpy"))
    frame = pd.DataFrame({c: np.concatenate([b[c] for b in valid]) for c in ("user_id", "job_id", "label",
                                                                            "timestamp")})
    columns = ["user_id", "job_id", "label", "timestamp"]
    pd.testing.assert_frame_equal(frame.sort_values(columns).reset_index(drop=True),
                                  memory.frames["valid"][columns].sort_values(columns).reset_index(drop=True),
                                  check_dtype=False)
    np.testing.assert_array_equal(sorted_rows(example_set_of(valid, got)), sorted_rows(memory.sets["valid"]))
    assert cluster.valid_labels == memory.frames["valid"]["label"].value_counts().to_dict()

    latest = want.history.latest(config.history_length)  # what the model artifact keeps
    for name in ("users", "jobs", "times", "earlier"):
        np.testing.assert_array_equal(getattr(got.history, name), getattr(latest, name))
    jobs = memory.frames["train"]["job_id"].unique()
    baseline = PopularityBaseline().fit(memory.frames["train"])
    np.testing.assert_allclose(cluster.popularity.score(jobs), baseline.score(jobs), rtol=1e-12)
    serving = cluster.extra_json["serving"]
    assert serving["jobs"]["job_id"] == memory.jobs["job_id"].astype(str).tolist()
    assert len(serving["seen"]["user_id"]) == len(got.history)


@pytest.mark.timeout(240)
def test_extra_columns_are_prepared_on_the_cluster_as_in_memory(ray_local, extra_board):
    from train.prepare_market import prepare_market_distributed

    config = DataConfig(path=str(extra_board.root), negative_ratio=0, extra_columns=extra_board.extra)
    memory, cluster = prepare_data(config), prepare_market_distributed(config)
    want, got = memory.extractor, cluster.extractor
    assert {"job_industry", "job_tags", "user_years", "history_industry"} <= {f.name for f in got.feature_map.fields}
    assert got.feature_map == want.feature_map and got._extra.stats == want._extra.stats
    assert {n: v.values for n, v in got.vocabs.items()} == {n: v.values for n, v in want.vocabs.items()}
    for table in ("job_catalog", "user_catalog"):
        for name, array in getattr(want, table).arrays().items():
            np.testing.assert_array_equal(getattr(got, table).arrays()[name], array)
    train = example_set_of(cluster.datasets["train"].iter_batches(batch_size=None, batch_format="numpy"), got)
    np.testing.assert_array_equal(sorted_rows(train), sorted_rows(memory.sets["train"]))


@pytest.mark.timeout(240)
def test_extra_training_negatives_leave_the_distributed_split_alone(ray_local, market_dir):
    """train_negative_ratio on the cluster: the split starts and validation are those without it; training
    gains about as many extra negatives as in memory (drawn per bucket, so not the same ones)."""
    from train.prepare_market import prepare_market_distributed

    config = DataConfig(path=str(market_dir), negative_ratio=0, split="global_time")
    more = DataConfig(**{**config.to_dict(), "train_negative_ratio": 2})
    plain, memory, cluster = prepare_data(config), prepare_data(more), prepare_market_distributed(more)
    assert memory.split_starts == plain.split_starts
    assert {**cluster.split_periods, "examples": None} == {**memory.split_periods, "examples": None}  # same dates
    valid = list(cluster.datasets["valid"].iter_batches(batch_size=None, batch_format="numpy"))
    columns = ["user_id", "job_id", "label", "timestamp"]
    frame = pd.DataFrame({c: np.concatenate([b[c] for b in valid]) for c in columns})
    pd.testing.assert_frame_equal(frame.sort_values(columns).reset_index(drop=True),
                                  plain.frames["valid"][columns].sort_values(columns).reset_index(drop=True),
                                  check_dtype=False)
    extra = len(memory.frames["train"]) - len(plain.frames["train"])
    assert extra > (plain.frames["train"]["label"] > 0).sum()
    assert abs(cluster.train_rows - len(plain.frames["train"]) - extra) <= 0.02 * extra
    jobs = memory.frames["train"]["job_id"].unique()  # the baseline counts shown examples only
    want = PopularityBaseline().fit(plain.frames["train"]).score(jobs)
    np.testing.assert_allclose(memory.popularity.score(jobs), want, rtol=1e-12)
    np.testing.assert_allclose(cluster.popularity.score(jobs), want, rtol=1e-12)


@pytest.mark.timeout(120)
def test_split_starts_found_by_histogram_passes_equal_the_sorted_times(ray_local, monkeypatch):
    import ray.data

    from train import prepare_market
    from convfm.data.splitting import SortedTimes

    monkeypatch.setattr(prepare_market, "HISTOGRAM_BINS", 8)  # several narrowing passes on few values
    monkeypatch.setattr(prepare_market, "EXACT_BELOW", 20)
    times = np.random.default_rng(3).integers(10**15, 10**15 + 10**9, 3000).astype(np.int64)
    times[::7] = times[5]  # many ties
    order = prepare_market.DatasetTimes(ray.data.from_numpy(times).rename_columns({"data": "timestamp"})
                                        .repartition(5).materialize())
    exact = SortedTimes(times)
    assert order.n == exact.n == 3000
    for j in (0, 1, 428, 1500, 2699, 2999):
        assert order.at(j) == exact.at(j), j
    for t in (int(times.min()), int(times[5]), int(np.median(times)), int(times.max()) + 1):
        assert order.below(t) == exact.below(t)


def test_a_log_missing_a_column_fails_before_ray_reads_anything(market_dir, tmp_path):
    from train.prepare_market import prepare_market_distributed

    for name in ("jobs.csv", "users.csv"):
        (tmp_path / name).write_bytes((market_dir / name).read_bytes())
    (tmp_path / "interactions").mkdir()
    log = pd.read_csv(market_dir / "interactions.csv", dtype=str)
    log.drop(columns=["job_id"]).to_parquet(tmp_path / "interactions" / "part-0.parquet")
    with pytest.raises(DataValidationError, match=r"part-0.parquet: missing column\(s\) \['job_id'\]"):
        prepare_market_distributed(DataConfig(path=str(tmp_path)))  # checked before any Ray Data call


@pytest.fixture(scope="module")
def one_bucket(market_dir: Path) -> tuple[Any, pd.DataFrame]:
    """The in-memory path's extractor (its history holds every positive) and bucket 1's examples."""
    from convfm.data.market_parts import bucket_examples, typed_interactions

    config = DataConfig(path=str(market_dir))
    extractor = prepare_data(config).extractor
    log = pd.read_csv(market_dir / "interactions.csv", dtype=str)
    typed = typed_interactions(log, market_dir / "interactions.csv", config)
    jobs = pd.read_csv(market_dir / "jobs.csv", dtype=str)[["job_id", "posted_at"]]
    jobs["posted_at"] = pd.to_datetime(jobs["posted_at"])
    return extractor, bucket_examples(typed[typed["bucket"] == 1], jobs, config)


def test_streamed_batches_rebuild_the_in_memory_examples(one_bucket):
    """Compact columns encoded in three batches, joined on a worker, hold the examples the in-memory path
    encodes from its own history (each batch's distinct histories encoded once, offsets across batches)."""
    from convfm.data.market_parts import PART
    from train.prepare_market import _encode

    extractor, examples = one_bucket
    rows = examples[examples[PART] == 0].reset_index(drop=True)
    cuts = [0, len(rows) // 3, 2 * len(rows) // 3, len(rows)]
    batches = [_encode(rows.iloc[a:b], extractor, 0, False) for a, b in zip(cuts[:-1], cuts[1:])]
    streamed = example_set_of(batches, extractor)
    assert len(streamed.tables[1]) < len(rows)  # history states shared by examples, encoded once
    np.testing.assert_array_equal(sorted_rows(streamed), sorted_rows(extractor.example_set(rows)))


def test_a_batch_without_rows_of_a_split_encodes_to_empty_columns_of_the_same_shapes(one_bucket):
    from convfm.data.market_parts import PART
    from train.prepare_market import _encode

    extractor, examples = one_bucket
    full = _encode(examples, extractor, 0, True)
    empty = _encode(examples.assign(**{PART: 2}), extractor, 0, True)  # no training rows in this batch
    assert set(full) == set(empty) and len(full["label"]) > 0 and len(empty["label"]) == 0
    assert {"user_row", "job_row", "recency_row", "history_rows", "history_count"} <= set(full)
    for name, array in full.items():
        assert empty[name].shape[1:] == array.shape[1:] and empty[name].dtype == array.dtype, name


def test_the_logs_numeric_dates_are_read_from_every_part_file(ray_local, tmp_path):
    """The cluster's pass over the log's timestamps finds what each file proves (part-1's days are all up to 12),
    so the market's one reading covers files typed batch by batch."""
    from train.prepare_market import _log_dates

    (tmp_path / "part-0.csv").write_text("user_id,job_id,timestamp\nu1,j1,25/03/2024 10:00\nu1,j2,2024-03-01\n")
    (tmp_path / "part-1.csv").write_text("user_id,job_id,timestamp\nu2,j1,08/03/2024 22:29\n")
    orders = {Path(o.where.split(":")[0]).name: o for o in _log_dates(sorted(tmp_path.iterdir()), "timestamp")}
    assert orders["part-0.csv"].day_first == (None, "25/03/2024 10:00") and not orders["part-0.csv"].month_first
    assert orders["part-1.csv"].numeric and not orders["part-1.csv"].day_first


def test_a_log_whose_files_begin_with_iso_dates_is_not_read_twice(tmp_path):
    """The pass over the log's timestamps read a whole text log a second time; when no file's head holds a
    numeric date it is skipped (no Ray), and each batch checks that it agrees with the market's reading."""
    from train.prepare_market import _log_dates

    (tmp_path / "part-0.csv").write_text("user_id,job_id,timestamp\nu1,j1,2024-03-25 10:00\n")
    pd.DataFrame({"timestamp": ["2024-03-08"]}).to_parquet(tmp_path / "part-1.parquet")
    assert _log_dates(sorted(tmp_path.iterdir()), "timestamp") == []


@pytest.mark.timeout(240)
@pytest.mark.parametrize("kind", ["large_string", "dictionary", "string_view"])
def test_a_parquet_log_of_date_text_in_any_string_type_is_read_as_its_dates_prove(ray_local, tmp_path, kind):
    """pandas 3 and Polars write text as large_string, newer writers as string_view (which pandas cannot hold: a
    batch of it failed), a categorical as dictionary<string>: the pass over the log's dates took only ``string``
    for text, so 08/03/2024 beside 25/03/2024 was read 3 August on the cluster. Typed timestamps still need no
    pass."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from convfm.data.date_formats import decide_day_first
    from train.prepare_distributed import read_files
    from train.prepare_market import _log_dates, _typed

    text = pa.array(["08/03/2024 10:00", "25/03/2024 10:00"])
    column = text.dictionary_encode() if kind == "dictionary" else text.cast(getattr(pa, kind)())
    path = tmp_path / "interactions.parquet"
    pq.write_table(pa.table({"user_id": ["u1", "u2"], "job_id": ["j1", "j2"], "timestamp": column}), path)
    dayfirst = decide_day_first(_log_dates([path], "timestamp"))
    batch = read_files([path], ["user_id", "job_id", "timestamp"]).to_pandas()
    typed = _typed(batch, DataConfig(path=str(tmp_path)), 64, dayfirst)
    assert dayfirst and pd.to_datetime(typed["timestamp"], unit="us").tolist() == [
        pd.Timestamp("2024-03-08 10:00"), pd.Timestamp("2024-03-25 10:00")]
    pq.write_table(pa.table({"timestamp": pa.array([pd.Timestamp("2024-03-08")], pa.timestamp("us"))}), path)
    assert _log_dates([path], "timestamp") == []


def test_gzip_compressed_part_files_are_read_on_the_cluster(ray_local, tmp_path):
    """A folder of .csv.gz parts is a log of part files, its header checked and its rows read by Ray Data; one
    named .CSV.GZ (Windows tools) too, which Ray Data alone would parse compressed."""
    import gzip

    from convfm.data.market_parts import check_interaction_schemas, interaction_files
    from train.prepare_distributed import read_files

    folder = tmp_path / "interactions"
    folder.mkdir()
    for k, (day, suffix) in enumerate((("25/03/2024 10:00", "csv.gz"), ("08/03/2024 22:29", "CSV.GZ"))):
        text = f"user_id,job_id,timestamp\nu{k},j1,{day}\n"
        (folder / f"part-{k}.{suffix}").write_bytes(gzip.compress(text.encode()))
    config = DataConfig(path=str(tmp_path))
    files = interaction_files(config)
    assert check_interaction_schemas(files, config) == ["user_id", "job_id", "timestamp"]
    rows = read_files(files, ["user_id", "timestamp"]).to_pandas()
    assert rows["timestamp"].tolist() == ["25/03/2024 10:00", "08/03/2024 22:29"]
