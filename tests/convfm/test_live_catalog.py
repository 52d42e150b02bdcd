"""The live catalog's delta store: numbered immutable deltas on a local disk or S3 (moto), one writer that
never loses a concurrent update, a second writer that raced it refused, a reopened store reading it all back."""
from __future__ import annotations

import json
import threading

import pandas as pd
import pytest

from convfm.errors import ArtifactError
from convfm.store import storage
from convfm.store.live_catalog import CatalogConflict, CatalogStore, Delta, delta_name

pytestmark = pytest.mark.timeout(120)


def job(job_id: str, **fields) -> dict:
    return {"job_id": job_id, "title": f"title {job_id}", "skills": ["python"], **fields}


@pytest.fixture(params=["local", "s3"])
def live_store(request, tmp_path):
    if request.param == "local":
        return tmp_path / "live"
    return request.getfixturevalue("s3_bucket")(f"live-{tmp_path.name}")


def test_each_change_is_the_next_numbered_delta_and_a_reopened_store_reads_them(live_store):
    store = CatalogStore(live_store)
    assert store.latest() == 0 and store.read() == []
    first = store.append([job("a"), job("b", posted_at=5, expires_at=99)], now=10)
    second = store.append(expire=["a"], now=20)
    assert (first.version, second.version) == (1, 2)
    assert storage.list_files(storage.join(live_store, "catalog")) == [delta_name(1), delta_name(2)]
    reopened = CatalogStore(live_store)
    assert reopened.latest() == 2
    deltas = reopened.read()
    assert [d.version for d in deltas] == [1, 2]
    assert deltas[0].upsert[0]["posted_at"] is None and deltas[0].upsert[1]["posted_at"] == 5  # None: not given
    assert deltas[0].upsert[1]["expires_at"] == 99 and deltas[1].expire == {"a": 20}
    assert [d.version for d in reopened.read(after=1)] == [2] and reopened.read(after=2) == []
    assert reopened.append([job("c")]).version == 3  # numbering goes on after a reopen


def test_the_store_is_listed_once_then_new_numbers_are_looked_for(live_store, monkeypatch):
    """A writer's change costs one existence check, not a listing of every delta the catalog has had; another
    writer's deltas are found all the same."""
    store, other = CatalogStore(live_store), CatalogStore(live_store)
    listings = []
    real = storage.list_files
    monkeypatch.setattr(storage, "list_files", lambda path: listings.append(path) or real(path))
    for i in range(5):
        store.append([job(f"j{i}")])
    assert len(listings) == 1 and store.latest() == 5
    assert other.append([job("x")]).version == 6 and store.latest() == 6 and len(listings) == 2
    assert store.append([job("y")]).version == 7 and [d.version for d in other.read(after=5)] == [6, 7]


def test_a_long_catalog_is_fetched_many_deltas_at_once_in_order_and_a_missing_one_is_named(live_store):
    store = CatalogStore(live_store)
    for i in range(2 * storage.FETCH_THREADS + 5):
        store.append([job(f"j{i}")], now=i)
    deltas = CatalogStore(live_store).read()
    assert [d.version for d in deltas] == list(range(1, 2 * storage.FETCH_THREADS + 6))
    assert [d.upsert[0]["job_id"] for d in deltas] == [f"j{i}" for i in range(2 * storage.FETCH_THREADS + 5)]
    filesystem, inner = storage._fs(storage.join(live_store, "catalog", delta_name(30)))
    filesystem.delete_file(inner)
    with pytest.raises(ArtifactError, match=r"000030.json\S*: live catalog version 30 is missing"):
        store.read()


def test_jobs_the_replicas_could_not_read_back_are_never_written(tmp_path):
    """A lone surrogate in a job id was written (json escapes it), then failed every replica's apply, for good."""
    store = CatalogStore(tmp_path / "live")
    with pytest.raises(ValueError, match="cannot be read back as a catalog: UnicodeEncodeError"):
        store.append([job("ok"), job("bad-\udc00")])
    assert store.latest() == 0 and store.append([job("ok")]).version == 1


def test_concurrent_appends_on_one_store_never_lose_an_update(tmp_path):
    store = CatalogStore(tmp_path / "live")
    threads = [threading.Thread(target=store.append, args=([job(f"j{i}")],)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    deltas = store.read()
    assert [d.version for d in deltas] == list(range(1, 17))
    assert sorted(d.upsert[0]["job_id"] for d in deltas) == sorted(f"j{i}" for i in range(16))


def test_a_second_writer_that_raced_for_a_number_fails_instead_of_overwriting(live_store, monkeypatch):
    one, other = CatalogStore(live_store), CatalogStore(live_store)
    one.append([job("a")])
    monkeypatch.setattr(other, "latest", lambda: 0)  # it read the latest number before `one` wrote
    with pytest.raises(CatalogConflict, match=r"000001.json\S*: another writer wrote live catalog version 1 first"):
        other.append([job("b")])
    assert [d.upsert[0]["job_id"] for d in one.read()] == ["a"]  # what `one` wrote is intact


def test_a_missing_or_broken_delta_is_an_error_naming_the_file(tmp_path):
    store = CatalogStore(tmp_path / "live")
    store.append([job("a")])
    store.append([job("b")])
    (tmp_path / "live" / "catalog" / delta_name(1)).unlink()
    with pytest.raises(ArtifactError, match=r"000001.json: live catalog version 1 is missing"):
        store.read()
    (tmp_path / "live" / "catalog" / delta_name(1)).write_text('{"format_version": 1, "version": 1}')
    with pytest.raises(ArtifactError, match=r"000001.json: version and written_at must be integers"):
        store.read()
    folder = tmp_path / "live" / "catalog"
    (folder / delta_name(2)).replace(folder / delta_name(1))  # a delta under another number
    with pytest.raises(ArtifactError, match=r"000001.json: holds version 2, expected 1"):
        store.read(upto=1)
    # no temp file is left behind by the atomic writes
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]


def test_a_job_field_of_the_wrong_type_is_never_written_and_a_hand_written_one_is_refused_when_read(tmp_path):
    """A delta is applied whole or not at all: one the service would have refused (a number for a location) is
    named when read, before any replica applies it."""
    store = CatalogStore(tmp_path / "live")
    with pytest.raises(ValueError, match=r"upsert 1 \('b'\): field 'location' must be text, got 5"):
        store.append([job("a"), job("b", location=5)])
    with pytest.raises(ValueError, match=r"field 'skills' must be a list of text"):
        store.append([job("a", skills="python")])
    with pytest.raises(ValueError, match=r"field 'salary_min' must be a number, got True"):
        store.append([job("a", salary_min=True)])
    assert store.latest() == 0
    store.append([job("a", salary_min=40000, location=None)])
    path = tmp_path / "live" / "catalog" / delta_name(2)
    path.write_text(json.dumps({"format_version": 2, "version": 2, "written_at": 1, "expire": {},
                                "upsert": [job("c", expires_at="tomorrow")]}))
    with pytest.raises(ArtifactError, match=r"000002.json: upsert 0 \('c'\): expires_at must be an integer or null"):
        store.read()


def test_a_replica_reads_each_whole_block_of_deltas_from_its_bundle(tmp_path, monkeypatch):
    """Every ``BUNDLE``-th change also writes the block's deltas as one file; a reader takes whole blocks in its
    range from their bundles and the rest delta by delta, and reads the deltas of a bundle it cannot read."""
    from convfm.store import live_catalog

    monkeypatch.setattr(live_catalog, "BUNDLE", 5)
    store = CatalogStore(tmp_path / "live")
    for i in range(12):
        store.append([job(f"j{i}")], expire=[f"j{i - 1}"] if i else [], now=i)
    store.settle()
    bundles = tmp_path / "live" / "catalog" / "bundles"
    assert sorted(p.name for p in bundles.iterdir()) == ["000001-000005.json", "000006-000010.json"]
    real, reads = storage.read_text, []
    monkeypatch.setattr(storage, "read_text", lambda path: reads.append(storage.name(path)) or real(path))
    every = CatalogStore(tmp_path / "live").read()
    assert [d.version for d in every] == list(range(1, 13)) and every[6].upsert[0]["job_id"] == "j6"
    assert every[6] == CatalogStore(tmp_path / "live")._read_one(7) and len(reads) == 2 + 2 + 1
    reads.clear()
    assert [d.version for d in store.read(after=3, upto=11)] == list(range(4, 12))
    assert sorted(reads) == sorted([delta_name(4), delta_name(5), "000006-000010.json", delta_name(11)])
    (bundles / "000006-000010.json").write_text("{broken")
    assert [d.version for d in store.read()] == list(range(1, 13))  # from the deltas, with a warning


def test_the_bundles_a_store_lacks_are_written_by_the_command(tmp_path, monkeypatch, capsys):
    """A live catalog written before bundles existed gets them from ``convfm catalog bundle``."""
    import shutil

    from convfm.cli.main import main
    from convfm.store import live_catalog

    monkeypatch.setattr(live_catalog, "BUNDLE", 5)
    store = CatalogStore(tmp_path / "live")
    for i in range(12):
        store.append([job(f"j{i}")], now=i)
    store.settle()  # the bundles are written in a thread of their own
    bundles = tmp_path / "live" / "catalog" / "bundles"
    (bundles / "000006-000010.json").unlink()
    shutil.copy(bundles / "000001-000005.json", tmp_path / "kept.json")
    assert main(["catalog", "bundle", str(tmp_path / "live")]) == 0
    assert "12 deltas; wrote 1 bundle(s)" in capsys.readouterr().out
    assert sorted(p.name for p in bundles.iterdir()) == ["000001-000005.json", "000006-000010.json"]
    assert (bundles / "000001-000005.json").read_text() == (tmp_path / "kept.json").read_text()
    assert [d.version for d in store.read()] == list(range(1, 13))
    (bundles / "000001-000005.json").write_text('{"deltas": [null]}')  # cut short, or written by hand
    assert main(["catalog", "bundle", str(tmp_path / "live")]) == 0
    assert "12 deltas; wrote 1 bundle(s)" in capsys.readouterr().out
    assert (bundles / "000001-000005.json").read_text() == (tmp_path / "kept.json").read_text()
    assert main(["catalog", "bundle", str(tmp_path / "nowhere")]) == 2
    assert "nowhere: no live catalog delta and no event log segment there" in capsys.readouterr().err


def test_a_bundle_that_cannot_be_written_never_fails_the_change(tmp_path, monkeypatch, caplog):
    """The 1,000th change writes its bundle best effort: a delta of the block that cannot be read leaves the
    change written and acknowledged, and no bundle."""
    from convfm.store import live_catalog

    monkeypatch.setattr(live_catalog, "BUNDLE", 3)
    store = CatalogStore(tmp_path / "live")
    store.append([job("j0")], now=0)
    (tmp_path / "live" / "catalog" / delta_name(1)).write_bytes(b"\xff\xfe")
    store.append([job("j1")], now=1)
    assert store.append([job("j2")], now=2).version == 3 and store.latest() == 3
    store.settle()
    assert not (tmp_path / "live" / "catalog" / "bundles").exists() and "bundling versions 1..3 failed" in caplog.text


def test_the_change_that_completes_a_block_does_not_wait_for_its_bundle(tmp_path, monkeypatch):
    """The bundle is written in a thread of its own: the 1,000th ``POST /jobs`` answers without reading the
    block's deltas back (1,000 reads on an object store); ``settle`` waits for it."""
    from convfm.store import live_catalog

    monkeypatch.setattr(live_catalog, "BUNDLE", 3)
    store = CatalogStore(tmp_path / "live")
    for i in range(2):
        store.append([job(f"j{i}")], now=i)
    release, write = threading.Event(), live_catalog.CatalogStore._write_bundle
    monkeypatch.setattr(live_catalog.CatalogStore, "_write_bundle",
                        lambda self, first, replace=False: release.wait(5) and write(self, first, replace))
    assert store.append([job("j2")], now=2).version == 3 and not release.is_set()
    bundles = tmp_path / "live" / "catalog" / "bundles"
    assert not bundles.exists()
    release.set()
    store.settle(30)
    assert [p.name for p in bundles.iterdir()] == ["000001-000003.json"]


def test_on_s3_a_put_overwritten_before_the_read_back_is_a_conflict(s3_bucket, monkeypatch):
    """Object stores have no create-if-absent here: the writer reads its delta back, and another writer's
    PUT that landed after its own makes it fail rather than acknowledge a change that was lost."""
    store = CatalogStore(s3_bucket("live-raced"))
    put = storage.write_text

    def raced(path, text):
        put(path, text)
        put(path, text.replace('"job_id": "mine"', '"job_id": "theirs"'))  # the other writer's PUT lands last

    monkeypatch.setattr(storage, "write_text", raced)
    with pytest.raises(CatalogConflict, match="another writer wrote live catalog version 1 first"):
        store.append([job("mine")])


def test_training_reads_an_update_at_the_jobs_own_posting_and_a_new_job_at_the_deltas_time():
    from convfm.store.live_catalog import jobs_after

    posted, closes = pd.Timestamp("2026-11-01"), pd.Timestamp("2026-12-20")
    jobs = pd.DataFrame({"job_id": ["a", "b"], "title": ["x", "y"], "posted_at": [posted, pd.NaT],
                         "expires_at": [closes, pd.NaT]})
    written = pd.Timestamp("2026-12-01").value // 1000
    upsert = tuple(job(j, title="edited", posted_at=None) for j in ("a", "b", "c"))
    resync = (job("a", title="edited", posted_at=posted.value // 1000),)  # its own posting time: kept expiry
    table, counts = jobs_after(jobs, [Delta(1, written, upsert), Delta(2, written, resync),
                                      Delta(3, written, (job("c", posted_at=None),))])
    assert counts == {"added": 1, "replaced": 2, "expired": 0}  # distinct jobs: "a" twice and "c" again count once
    table = table.set_index("job_id")
    assert table["title"].tolist() == ["edited", "edited", "title c"]
    assert (table.loc["a", "posted_at"], table.loc["a", "expires_at"]) == (posted, closes)  # an edit: kept
    assert pd.isna(table.loc["b", "posted_at"]) and pd.isna(table.loc["b", "expires_at"])  # kept: none
    assert table.loc["c", "posted_at"] == pd.Timestamp("2026-12-01")  # new: posted when written


def test_training_reads_a_job_posted_again_at_its_new_posting_with_no_expiry_of_the_old_one():
    from convfm.store.live_catalog import jobs_after

    posted, closes = pd.Timestamp("2026-11-01"), pd.Timestamp("2026-11-20")
    jobs = pd.DataFrame({"job_id": ["a"], "title": ["x"], "posted_at": [posted], "expires_at": [closes]})
    again = pd.Timestamp("2026-12-01").value // 1000
    table, counts = jobs_after(jobs, [Delta(1, again, (job("a", title="edit", posted_at=None),)),
                                      Delta(2, again, (job("a", title="again", posted_at=again),))])
    assert counts == {"added": 0, "replaced": 1, "expired": 0}
    assert table["posted_at"].tolist() == [pd.Timestamp("2026-12-01")] and table["expires_at"].isna().all()


def test_a_version_1_delta_still_reads_and_an_unknown_format_is_named():
    old = {"format_version": 1, "version": 1, "writer": "old", "written_at": 5,
           "upsert": [job("a", posted_at=3, expires_at=None)], "expire": {}}
    assert Delta.from_text(json.dumps(old), "000001.json").upsert[0]["posted_at"] == 3
    with pytest.raises(ArtifactError, match=r"000001.json: format_version 3, this convfm reads 1, 2"):
        Delta.from_text(json.dumps({**old, "format_version": 3}), "000001.json")


def test_training_reads_an_expire_as_served_a_job_that_closed_sooner_stays_closed_then():
    from convfm.store.live_catalog import jobs_after

    day = pd.Timedelta(days=1)
    t0 = pd.Timestamp("2026-10-01")
    jobs = pd.DataFrame({"job_id": ["lifetime", "dated", "open"], "title": ["x", "y", "z"],
                         "posted_at": [t0, t0, t0], "expires_at": [pd.NaT, t0 + 10 * day, pd.NaT]})
    late = (t0 + 45 * day).value // 1000  # a clean-up expires them all on day 45
    table = jobs_after(jobs, [Delta(1, late, (), {j: late for j in ("lifetime", "dated")}),
                              Delta(2, late, (), {"open": (t0 + 5 * day).value // 1000})], 30.0)[0]
    closes = table.set_index("job_id")["expires_at"]
    assert closes.tolist() == [t0 + 30 * day, t0 + 10 * day, t0 + 5 * day]  # each at its first close


def test_an_id_upserted_twice_in_one_delta_reads_as_its_last_upsert(caplog):
    from convfm.store.live_catalog import jobs_after, upserted_jobs

    twice = tuple(job(j, posted_at=None, **fields) for j, fields in
                  (("a", {"title": "first"}), ("b", {}), (" a ", {"title": "last"})))  # " a ": as "a" in serving
    assert upserted_jobs(twice, 7).frame[["job_id", "title"]].values.tolist() == [["b", "title b"], ["a", "last"]]
    assert "live catalog v7: 1 repeated upsert(s) of a job id: the last of each read" in caplog.text
    jobs = pd.DataFrame({"job_id": ["z"], "title": ["x"], "posted_at": [pd.NaT], "expires_at": [pd.NaT]})
    written = pd.Timestamp("2026-12-01").value // 1000
    table, counts = jobs_after(jobs, [Delta(1, written, twice), Delta(2, written, (), {"a": written})])
    assert table["job_id"].tolist() == ["z", "b", "a"] and table["title"].tolist()[-1] == "last"
    assert counts == {"added": 2, "replaced": 0, "expired": 1}  # (two rows of "a" made its expire fail)
