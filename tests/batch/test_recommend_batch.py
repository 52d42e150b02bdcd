"""`convfm recommend-batch` on the session's Ray: Ray Data actors write every user's top-k as Parquet, over the
model's catalog and the live catalog's deltas; bad input fails before any work, naming the file and column; a
failed run leaves nothing that looks complete."""
from __future__ import annotations

import json
import shutil

import pandas as pd
import pyarrow as pa
import pytest

from convfm.cli.main import main
from convfm.errors import ConfigError
from convfm.model.batch_ranking import BatchRanker
from convfm.store.live_catalog import CatalogStore
from convfm.store.registry import live_location, resolve
from tests.convfm.test_batch_live_catalog import copy_of

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def at(tiny) -> str:
    """The newest posting time as ISO text (the synthetic jobs have all expired by now)."""
    posted = BatchRanker.load(resolve(tiny.entry)).ranker.recency.posted.max()
    return pd.Timestamp(int(posted), unit="us").isoformat()


def users_file(path, ids, kind: str = "string") -> str:
    """Users as Parquet, their ids of Arrow type ``kind`` (``string_view``: Arrow's view layout)."""
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"user_id": pa.array(ids, getattr(pa, kind)())}), path)
    return str(path)


def test_every_user_gets_k_jobs_written_as_parquet_with_a_success_marker(ray_local, tiny, tmp_path, at, capsys):
    """Over the entry's live catalog: a user's best job expired through it, a copy of it posted under a new id."""
    entry = tmp_path / "registry" / "tiny"
    shutil.copytree(tiny.entry, entry, ignore=shutil.ignore_patterns("live"))
    ids = tiny.data.extractor.user_ids[1:121] + ["nobody"]
    micros = int(pd.Timestamp(at).value // 1000)
    best = BatchRanker.load(resolve(entry), at=micros).recommend(ids[:1], k=1)["job_id"].iloc[0]
    store = CatalogStore(live_location(entry))
    store.append([copy_of(tiny, best, "live-copy", posted_at=micros - 10)], [best], now=micros - 10)
    users = users_file(tmp_path / "users.parquet", ids, "string_view")  # a type pandas cannot hold
    from batch.recommend import check_users

    assert check_users(users) == (len(ids), pa.schema([("user_id", pa.large_string())]))
    code = main(["recommend-batch", "--model", str(entry), "--users", users, "-k", "5", "--out",
                 str(tmp_path / "recs"), "--at", at, "--workers", "1", "--batch-size", "50"])
    assert code == 0, capsys.readouterr().err
    out = pd.read_parquet(tmp_path / "recs")
    assert out["user_id"].nunique() == len(ids) and (out.groupby("user_id").size() == 5).all()
    assert set(out["source"]) == {"model", "popular"} and set(out["model_version"]) == {"v0001"}
    assert set(out["catalog_version"]) == {1} and "live-copy" in set(out["job_id"]) and best not in set(out["job_id"])
    summary = json.loads((tmp_path / "recs" / "_SUCCESS.json").read_text())
    assert (summary["users"], summary["rows"], summary["workers"]) == (len(ids), 5 * len(ids), 1)
    assert summary["catalog_version"] == 1 and not list(tmp_path.glob(".recs.staging-*"))
    assert pd.Timestamp(summary["at"]) == pd.Timestamp(summary["at_micros"], unit="us", tz="UTC")
    expected = BatchRanker.load(resolve(entry), at=summary["at_micros"], catalog=store).recommend(ids[:3], k=5)
    got = out.set_index(["user_id", "rank"]).loc[expected.set_index(["user_id", "rank"]).index]
    assert got["job_id"].tolist() == expected["job_id"].tolist()
    assert "users/s per worker" in capsys.readouterr().out


def test_a_file_without_user_ids_fails_before_any_work_naming_file_and_column(ray_local, tiny, tmp_path):
    folder = tmp_path / "users"
    folder.mkdir()
    users_file(folder / "a.parquet", ["u000001"])
    pd.DataFrame({"uid": ["u000002"]}).to_parquet(folder / "b.parquet")
    with pytest.raises(Exception) as caught:
        main(["--debug", "recommend-batch", "--model", str(tiny.entry), "--users", str(folder), "--out",
              str(tmp_path / "recs")])
    assert "b.parquet: column 'user_id' is missing (columns: uid)" in str(caught.value)
    pd.DataFrame({"user_id": [1.5]}).to_parquet(folder / "b.parquet")
    assert main(["recommend-batch", "--model", str(tiny.entry), "--users", str(folder), "--out",
                 str(tmp_path / "recs")]) == 2
    assert not (tmp_path / "recs").exists() and not list(tmp_path.glob(".recs.staging-*"))


def test_a_user_listed_twice_fails_before_any_work(tmp_path):
    """Their rows would be written twice, and the summary would count them twice; 12 and "12" are one user."""
    from batch.recommend import check_users

    folder = tmp_path / "users"
    folder.mkdir()
    pd.DataFrame({"user_id": [12, 13]}).to_parquet(folder / "a.parquet")
    pd.DataFrame({"user_id": ["12"]}).to_parquet(folder / "b.parquet")
    with pytest.raises(ConfigError, match=r"1 user id\(s\) appear more than once \(e.g. \['12'\]\); list each"):
        check_users(str(folder))
    (folder / "b.parquet").unlink()
    assert check_users(str(folder)) == (2, None)
    header = tmp_path / "header.csv"  # a CSV of its header alone: no users, as an empty Parquet file (it read
    header.write_text("user_id\n")  # "column 'user_id' has type null")
    assert check_users(str(header)) == (0, None)


def test_a_run_that_fails_midway_leaves_no_output_that_looks_complete(ray_local, tiny, tmp_path, at):
    users = users_file(tmp_path / "users.parquet", ["u000001", None, "u000003"])
    with pytest.raises(Exception, match="user_id: 1 empty value"):
        main(["--debug", "recommend-batch", "--model", str(tiny.entry), "--users", users, "--out",
              str(tmp_path / "recs"), "--at", at, "--workers", "1"])
    assert not (tmp_path / "recs").exists()
    assert all(not (staging / "_SUCCESS.json").exists() for staging in tmp_path.glob(".recs.staging-*"))
    (tmp_path / "taken").mkdir()
    assert main(["recommend-batch", "--model", str(tiny.entry), "--users", users, "--out",
                 str(tmp_path / "taken")]) == 2


def test_a_time_when_no_job_is_live_fails_before_any_work_naming_the_catalogs_dates(tiny, tmp_path, capsys):
    users = users_file(tmp_path / "users.parquet", ["u000001"])
    assert main(["recommend-batch", "--model", str(tiny.entry), "--users", users, "--out",
                 str(tmp_path / "recs")]) == 2  # by default now, and every synthetic job has expired
    message = capsys.readouterr().err
    assert "no job of" in message and "is live then" in message and "the last expiring at 2024-" in message
    assert not (tmp_path / "recs").exists() and not list(tmp_path.glob(".recs.staging-*"))


def test_no_users_give_an_empty_output_marked_complete(ray_local, tiny, tmp_path, at):
    users = users_file(tmp_path / "users.parquet", pd.Series([], dtype=str))
    assert main(["recommend-batch", "--model", str(tiny.entry), "--users", users, "--out", str(tmp_path / "recs"),
                 "--at", at, "--workers", "1"]) == 0
    summary = json.loads((tmp_path / "recs" / "_SUCCESS.json").read_text())
    assert (summary["users"], summary["users_with_rows"], summary["rows"]) == (0, 0, 0)
    assert not list(tmp_path.glob(".recs.staging-*"))
