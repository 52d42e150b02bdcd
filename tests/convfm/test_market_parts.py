"""The job market prepared bucket by bucket (convfm.data.market_parts), Ray-free: a bucket's examples do not depend
on the order its rows arrive in, batches of latest positives merge into the users' true latest history, and bad
logs or settings fail before any work, naming the file, the column or the setting. The whole path on Ray Data
against the in-memory one: tests/train/test_prepare_market.py."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from convfm.config import DataConfig
from convfm.data.liveness import job_windows
from convfm.data.loading import load_job_market
from convfm.data.market_parts import (
    BUCKET, HISTORY, HISTORY_COUNT, PART, bucket_examples, check_interaction_schemas, check_market_config,
    interaction_files, latest_positives, merge_latest, typed_interactions, user_buckets,
)
from convfm.data.splitting import TRAIN_ONLY, SortedTimes, global_starts
from convfm.errors import ConfigError, DataValidationError
from convfm.features.context import UserHistory


@pytest.fixture(scope="module")
def market(market_dir: Path):
    return load_job_market(DataConfig(path=str(market_dir)))


def typed_log(market) -> pd.DataFrame:
    log = market.interactions.copy()
    log["timestamp"] = pd.to_datetime(log["timestamp"], unit="us")
    return typed_interactions(log, Path("log.parquet"), DataConfig())


def test_user_buckets_are_a_fixed_hash_of_the_id():
    ids = np.array(["u1", "u2", "42", "user-000017"], dtype=object)
    np.testing.assert_array_equal(user_buckets(ids), user_buckets(ids.copy()))
    np.testing.assert_array_equal(user_buckets(ids, 1000), [int(h) % 1000 for h in pd.util.hash_array(ids)])
    many = user_buckets(np.array([f"u{i}" for i in range(6400)], dtype=object))
    assert many.min() >= 0 and many.max() < 64 and len(np.unique(many)) == 64


def test_typed_log_reads_dates_as_the_in_memory_loader_does(market):
    typed = typed_log(market)
    np.testing.assert_array_equal(typed["timestamp"].to_numpy(), market.interactions["timestamp"].to_numpy())
    assert (typed["event"] == market.interactions["event"]).all()
    np.testing.assert_array_equal(typed[BUCKET], user_buckets(typed["user_id"].to_numpy()))


def test_a_buckets_examples_do_not_depend_on_row_order(market):
    typed = typed_log(market)
    bucket = typed[typed[BUCKET] == 3]
    config = DataConfig(negative_ratio=2)
    first = bucket_examples(bucket, market.jobs, config)
    again = bucket_examples(bucket.sample(frac=1.0, random_state=1), market.jobs, config)
    pd.testing.assert_frame_equal(first.drop(columns=[HISTORY]), again.drop(columns=[HISTORY]))
    assert [list(h) for h in first[HISTORY]] == [list(h) for h in again[HISTORY]]
    assert set(first[PART]) == {0, 1, 2} and not first.duplicated(["user_id", "job_id"]).any()
    # sampled negatives (pairs the user never touched): ratio per positive, each live at its positive's time
    touched = set(zip(bucket["user_id"], bucket["job_id"]))
    sampled = first[[pair not in touched for pair in zip(first["user_id"], first["job_id"])]]
    positives = int((first["label"] > 0).sum())
    assert (sampled["label"] == 0).all() and 0.95 * 2 * positives <= len(sampled) <= 2 * positives
    windows = job_windows(market.jobs, config.job_lifetime_days)
    live = sampled.merge(pd.DataFrame({"job_id": windows.job_ids, "start": windows.start, "end": windows.end}),
                         on="job_id")
    assert len(live) == len(sampled)
    assert ((live["start"] <= live["timestamp"]) & (live["timestamp"] < live["end"])).all()


@pytest.mark.parametrize("split", ["time", "global_time"])
def test_a_buckets_extra_training_negatives_stay_beside_its_training_examples(market, split):
    """train_negative_ratio in a bucket: the other rows (parts, history) are negative_ratio's; an extra negative
    is in train (0) beside a training example of its user at its time, else dropped (-1)."""
    bucket = typed_log(market).query(f"{BUCKET} == 3")
    plain, more = DataConfig(split=split), DataConfig(split=split, train_negative_ratio=4)
    starts = None
    if split == "global_time":
        starts = global_starts(SortedTimes(bucket_examples(bucket, market.jobs, plain)["timestamp"]), plain)
    want = bucket_examples(bucket, market.jobs, plain, starts)
    got = bucket_examples(bucket, market.jobs, more, starts)
    extra = got[got[TRAIN_ONLY]]
    pd.testing.assert_frame_equal(got[~got[TRAIN_ONLY]].drop(columns=TRAIN_ONLY).reset_index(drop=True),
                                  want.reset_index(drop=True))
    assert set(extra[PART]) == {0, -1} and (extra["label"] == 0).all()
    trained = want[want[PART] == 0]
    at = set(zip(extra["user_id"], extra["timestamp"]))
    assert {p for p, part in zip(zip(extra["user_id"], extra["timestamp"]), extra[PART]) if part == 0} == \
        at & set(zip(trained["user_id"], trained["timestamp"]))
    if split == "global_time":
        assert (bucket_examples(bucket, market.jobs, more)[PART] == -1).all()  # no starts yet: decided later


def test_history_is_the_users_positives_strictly_before_each_example(market):
    typed = typed_log(market)
    examples = bucket_examples(typed[typed[BUCKET] == 5], market.jobs, DataConfig(negative_ratio=0,
                                                                                   history_length=3))
    positives = examples[examples["label"] > 0]
    for row in examples.sample(40, random_state=0).itertuples():
        mine = positives[(positives["user_id"] == row.user_id) & (positives["timestamp"] < row.timestamp)]
        mine = mine.sort_values("timestamp", kind="stable")
        assert getattr(row, HISTORY_COUNT) == len(mine)
        want = mine["job_id"].tolist()[::-1][:3]
        assert list(getattr(row, HISTORY)) == want + [""] * (3 - len(want))


def test_latest_positives_merge_across_batches_into_the_users_latest_history():
    rng = np.random.default_rng(0)
    n = 400
    examples = pd.DataFrame({"user_id": rng.choice([f"u{i}" for i in range(30)], n).astype(object),
                             "job_id": rng.choice([f"j{i}" for i in range(50)], n).astype(object),
                             "timestamp": rng.permutation(n).astype(np.int64) * 10,
                             "label": rng.integers(0, 2, n).astype(np.float32)})
    want = UserHistory.from_frame(examples[examples["label"] > 0]).latest(4)
    got = merge_latest([latest_positives(part, 4) for part in (examples.iloc[i::7] for i in range(7))], 4)
    for name in ("users", "jobs", "times", "earlier"):
        np.testing.assert_array_equal(getattr(got, name), getattr(want, name))
    assert want.earlier.sum() > 0  # some users had more than 4 positives


def test_global_starts_read_the_same_from_an_order_as_from_times():
    times = np.random.default_rng(1).integers(0, 1000, 5000)
    config = DataConfig(split="global_time", valid_fraction=0.15, test_fraction=0.1)
    assert global_starts(SortedTimes(times), config) == global_starts(times, config)
    config = DataConfig(split="global_time", valid_fraction=0.0, test_fraction=0.1)
    t1, t2 = global_starts(SortedTimes(times), config)
    assert t1 == t2 == np.sort(times)[len(times) - 500]


@pytest.mark.parametrize("field, value", [("split", "random"), ("popularity_days", 7.0), ("events", "log/"),
                                          ("negative_sampling", "popularity")])
def test_settings_the_distributed_path_cannot_prepare_are_refused(field, value):
    with pytest.raises(ConfigError, match=f"{field}: distributed preparation of job-market data"):
        check_market_config(DataConfig(**{field: value}))


def test_a_log_without_timestamps_or_ids_fails_naming_the_file_and_column(tmp_path):
    folder = tmp_path / "interactions"
    folder.mkdir()
    good = pd.DataFrame({"user_id": ["u1"], "job_id": ["j1"], "timestamp": pd.to_datetime(["2024-01-01"])})
    good.to_parquet(folder / "part-0.parquet")
    good.drop(columns=["timestamp"]).to_parquet(folder / "part-1.parquet")
    config = DataConfig(path=str(tmp_path))
    files = interaction_files(config)
    assert [f.name for f in files] == ["part-0.parquet", "part-1.parquet"]
    with pytest.raises(DataValidationError, match=r"part-1.parquet: missing column\(s\) \['timestamp'\]"):
        check_interaction_schemas(files, config)
    mapped = DataConfig(path=str(tmp_path), columns={"interactions": {"user_id": "member"}})
    with pytest.raises(DataValidationError, match=r"part-0.parquet: missing column\(s\) \['member'\]"):
        check_interaction_schemas(files[:1], mapped)
    (folder / "part-2.csv").write_text("user_id,job_id,timestamp\nu1,j1,2024-01-01\n")
    with pytest.raises(DataValidationError, match="part files of one format"):
        interaction_files(config)


@pytest.mark.parametrize("column, value, message", [
    ("timestamp", "6", "needs date/time timestamps"),
    ("user_id", "", "column 'user_id', row 2: empty id"),
    ("event", "bought", "column 'event', row 2: unknown event 'bought'"),
])
def test_a_bad_cell_names_the_file_the_column_and_the_row(column, value, message):
    batch = pd.DataFrame({"user_id": ["u1", "u2"], "job_id": ["j1", "j2"], "event": ["view", "apply"],
                          "timestamp": ["2024-01-01", "2024-01-02"]})
    batch.loc[1, column] = value
    if column == "timestamp":
        batch["timestamp"] = ["5", value]  # plain order numbers (epoch seconds would be dates)
    with pytest.raises(DataValidationError, match=f"part-7.csv: .*{message}"):
        typed_interactions(batch, Path("part-7.csv"), DataConfig())


def test_a_binary_label_gives_the_events_as_the_in_memory_loader_reads_it():
    batch = pd.DataFrame({"user_id": ["u1", "u2"], "job_id": ["j1", "j2"], "label": ["1", "0"],
                          "timestamp": ["2024-01-01", "2024-01-02"]})
    typed = typed_interactions(batch, Path("part-7.csv"), DataConfig())
    assert typed["event"].tolist() == ["apply", "view"] and "label" not in typed.columns


def test_epoch_seconds_are_dates_as_the_in_memory_loader_reads_them():
    batch = pd.DataFrame({"user_id": ["u1"], "job_id": ["j1"], "event": ["apply"], "timestamp": ["1704103200"]})
    typed = typed_interactions(batch, Path("part-7.csv"), DataConfig())
    assert typed["timestamp"].tolist() == [pd.Timestamp("2024-01-01T10:00:00").value // 1000]


def test_interaction_files_must_agree_on_their_columns_naming_the_one_that_differs(tmp_path):
    (tmp_path / "part-0.csv").write_text("user_id,job_id,label,timestamp\nu1,j1,1,2024-01-01\n")
    (tmp_path / "part-1.csv").write_text("user_id,job_id,timestamp\nu1,j2,2024-01-02\n")
    with pytest.raises(DataValidationError, match=r"part-1.csv: column\(s\) \['label'\] are in some interactions "
                                                  r"files and not in others"):
        check_interaction_schemas(sorted(tmp_path.iterdir()), DataConfig())


def test_column_mappings_are_checked_as_the_in_memory_loader_checks_them(tmp_path):
    (tmp_path / "interactions.csv").write_text("member,job_id,timestamp\nu1,j1,2024-01-01\n")
    files = [tmp_path / "interactions.csv"]
    with pytest.raises(ConfigError, match=r"columns.interactions: unknown canonical column\(s\) \['when'\]"):
        check_interaction_schemas(files, DataConfig(columns={"interactions": {"when": "ts"}}))
    mapped = {"user_id": "member", "event": "action"}  # an event column named but absent: not every row an apply
    with pytest.raises(DataValidationError, match=r"interactions.csv: missing column\(s\) \['action'\]"):
        check_interaction_schemas(files, DataConfig(columns={"interactions": mapped}))
    assert check_interaction_schemas(files, DataConfig(columns={"interactions": {"user_id": "member"}})) == [
        "user_id", "job_id", "timestamp"]


def test_an_error_in_a_batch_names_the_row_of_its_file(tmp_path):
    from convfm.data.market_parts import locate_error

    path = tmp_path / "part-3.csv"
    path.write_text("user_id,job_id,event,timestamp\nu1,j1,view,2024-01-01\nu2,j2,view,2024-01-02\n"
                    "u3,j3,bought,2024-01-03\n")
    batch = pd.read_csv(path, dtype=str).iloc[1:]  # the batch holds the file's rows 2 and 3
    with pytest.raises(DataValidationError, match="row 2: unknown event") as caught:
        typed_interactions(batch, path, DataConfig())
    assert "part-3.csv: column 'event', row 3: unknown event 'bought'" in str(locate_error(path, DataConfig(),
                                                                                            caught.value))


def test_the_bucket_count_follows_the_logs_size_alone(tmp_path, monkeypatch):
    from convfm.data import market_parts

    rows = pd.DataFrame({"user_id": [f"u{i}" for i in range(1000)], "job_id": "j1",
                         "timestamp": pd.to_datetime("2024-01-01")})
    rows.to_parquet(tmp_path / "part-0.parquet")
    rows.iloc[:300].to_parquet(tmp_path / "part-1.parquet")
    files = [tmp_path / "part-0.parquet", tmp_path / "part-1.parquet"]
    assert market_parts.log_rows(files[1]) == 300
    assert market_parts.bucket_count(files) == 64
    monkeypatch.setattr(market_parts, "BUCKET_INTERACTIONS", 5)  # 1,300 rows: 64 buckets of 5 hold 320
    assert market_parts.bucket_count(files) == 64 * 8  # 512 * 5 = 2,560 >= 1,300 > 256 * 5


def test_a_gzip_logs_rows_are_estimated_from_its_uncompressed_size(tmp_path):
    """A .csv.gz log's rows were estimated from its compressed size (4-10 times too few: the auto path kept too
    large a log in memory, with too few buckets); its gzip trailer gives the size it holds."""
    import gzip

    from convfm.data import market_parts

    text = "".join(f"u{i:06d},j{i % 97:06d},apply,2024-01-{1 + i % 28:02d}T10:00:00\n" for i in range(5000))
    (tmp_path / "log.csv").write_text(text)
    (tmp_path / "log.csv.gz").write_bytes(gzip.compress(text.encode()))
    plain = market_parts.log_rows(tmp_path / "log.csv")
    assert plain == len(text) // market_parts.CSV_BYTES_PER_ROW
    assert market_parts.log_rows(tmp_path / "log.csv.gz") == plain
    # ISIZE is the size mod 2**32: 100 in a 5 GiB file means 8 GiB + 100 (4 GiB + 100 is less than the file)
    assert market_parts.gzip_size(100, 20) == 100 and market_parts.gzip_size(100, 5 << 30) == (2 << 32) + 100


def test_a_canonical_column_in_another_case_is_read_as_the_in_memory_loader_reads_it(tmp_path):
    """``Event``/``Timestamp`` are the event and the time on the cluster too (ignored, every row was an apply);
    files must spell the header one way, as Ray Data reads one list of columns."""
    log = "User_ID,job_id,Event,Timestamp\nu1,j1,view,2024-01-01\nu2,j2,apply,2024-01-02\n"
    (tmp_path / "part-0.csv").write_text(log)
    files = [tmp_path / "part-0.csv"]
    assert check_interaction_schemas(files, DataConfig()) == ["user_id", "job_id", "event", "timestamp"]
    batch = pd.read_csv(files[0], dtype=str)
    typed = typed_interactions(batch, files[0], DataConfig())
    assert typed["event"].tolist() == ["view", "apply"] and typed["user_id"].tolist() == ["u1", "u2"]
    assert typed["timestamp"].tolist() == [pd.Timestamp(d).value // 1000 for d in ("2024-01-01", "2024-01-02")]
    (tmp_path / "part-1.csv").write_text("user_id,job_id,event,timestamp\nu1,j3,view,2024-01-03\n")
    with pytest.raises(DataValidationError, match=r"part-1.csv: column\(s\) \['event', 'timestamp', 'user_id'\] are "
                                                  r"spelt \['User_ID', 'job_id', 'Event', 'Timestamp'\] in .*part-0"):
        check_interaction_schemas(sorted(tmp_path.iterdir()), DataConfig())


def test_numeric_dates_are_typed_as_the_whole_market_reads_them(tmp_path):
    """A part file whose days are all up to 12, typed on its own, was read month-first while the rest of the log
    proved day-first: each batch now reads the market's one reading (``JobMarket.day_first``)."""
    from convfm.data.date_formats import DateOrder

    batch = pd.DataFrame({"user_id": ["u1"], "job_id": ["j1"], "timestamp": ["08/03/2024 22:29"]})
    alone = typed_interactions(batch, Path("part-1.csv"), DataConfig())
    market = typed_interactions(batch, Path("part-1.csv"), DataConfig(), dayfirst=True)
    later = pd.DataFrame({"user_id": ["u1"], "job_id": ["j1"], "timestamp": ["25/03/2024 10:00"]})
    with pytest.raises(DataValidationError, match=r"part-9\.csv: column 'timestamp': '25/03/2024 10:00' is day-first, "
                                                  r"while the market's numeric dates were read month-first"):
        typed_interactions(later, Path("part-9.csv"), DataConfig(), dayfirst=False)  # a batch past the head sample
    assert alone["timestamp"].tolist() == [pd.Timestamp("2024-08-03T22:29").value // 1000]
    assert market["timestamp"].tolist() == [pd.Timestamp("2024-03-08T22:29").value // 1000]
    (tmp_path / "jobs.csv").write_text("job_id,posted_at\nj1,02/03/2024\n")
    proof = DateOrder("part-0.csv: column 'timestamp'", True, day_first=(None, "25/03/2024 10:00"))
    config = DataConfig(path=str(tmp_path))
    assert not load_job_market(config, interactions=False).day_first
    catalogs = load_job_market(config, interactions=False, log_dates=[proof])
    assert catalogs.day_first and catalogs.jobs["posted_at"].tolist() == [pd.Timestamp("2024-03-02")]
    against = DateOrder("part-0.csv: column 'timestamp'", True, month_first=(None, "03/25/2024 10:00"))
    (tmp_path / "jobs.csv").write_text("job_id,posted_at\nj1,25/02/2024\n")
    with pytest.raises(DataValidationError, match=r"jobs.csv: column 'posted_at', row 1: '25/02/2024' is day-first, "
                                                  r"while part-0.csv: column 'timestamp': '03/25/2024 10:00' is "
                                                  r"month-first"):
        load_job_market(config, interactions=False, log_dates=[against])
