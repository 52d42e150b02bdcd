"""The feedback event log (``convfm.store.event_log``): segments in order, written whole, duplicate ids ignored
across a reopen, bad records named by segment and line, the same on S3 (moto), and read as interactions."""
from __future__ import annotations

import datetime as dt
import json

import pytest

from convfm.errors import DataValidationError, StorageError
from convfm.store import event_log, log_bundles, storage
from convfm.store.event_log import EventLog, event_time, interactions_frame, list_segments, read_log


def record(event_id: str, kind: str = "click", user: str = "u1", job: str = "j1",
           when: str = "2026-12-01T10:00:00.000000Z", **extra) -> dict:
    return {"event_id": event_id, "type": kind, "user_id": user, "job_id": job, "timestamp": when, **extra}


def test_segments_read_back_in_write_order(tmp_path):
    log = EventLog.open(tmp_path)
    for i in range(5):
        assert log.append([record(f"e{i}a"), record(f"e{i}b")]).segment is not None
    names = list_segments(tmp_path)
    assert len(names) == 5 == log.position and names == sorted(names)
    ids = [r["event_id"] for _, records in read_log(tmp_path) for r in records]
    assert ids == [f"e{i}{s}" for i in range(5) for s in "ab"]
    assert sorted(p.name for p in tmp_path.iterdir()) == names  # no temp files left beside them


def test_duplicates_are_ignored_within_a_body_and_across_a_reopen(tmp_path):
    first = EventLog.open(tmp_path).append([record("a"), record("b"), record("a")])
    assert [r["event_id"] for r in first.records] == ["a", "b"] and first.duplicates == ["a"]
    reopened = EventLog.open(tmp_path)  # a restarted writer rebuilds the ids from the log
    assert len(reopened) == 2 and reopened.position == 1
    again = reopened.append([record("b"), record("c")])
    assert again.duplicates == ["b"] and [r["event_id"] for r in again.records] == ["c"]
    nothing = reopened.append([record("a"), record("c")])
    assert nothing.segment is None and nothing.position == 2 and len(list_segments(tmp_path)) == 2


def test_a_failed_write_stores_nothing_and_keeps_the_ids_free(tmp_path, monkeypatch):
    log = EventLog.open(tmp_path)

    def broken(path, text, durable=False):
        raise StorageError(f"{path}: disk on fire")

    monkeypatch.setattr(storage, "write_text", broken)
    with pytest.raises(StorageError, match="disk on fire"):
        log.append([record("a")])
    monkeypatch.undo()
    assert list_segments(tmp_path) == [] and log.position == 0
    assert log.append([record("a")]).records  # the retry is not taken for a duplicate


def test_a_record_that_is_not_valid_unicode_is_refused_and_nothing_is_written(tmp_path):
    """A lone UTF-16 surrogate (JSON can carry one) passed the record checks and failed the write itself."""
    log = EventLog.open(tmp_path)
    with pytest.raises(DataValidationError, match="record 2 to append: not valid Unicode text"):
        log.append([record("a", user="ü"), record("b", user="u\ud800")])
    assert list_segments(tmp_path) == [] and log.position == 0
    assert [r["user_id"] for r in log.append([record("a", user="ü")]).records] == ["ü"]


def test_segment_names_keep_increasing_after_a_reopen(tmp_path):
    log = EventLog.open(tmp_path)
    log.append([record("a")])
    future = f"{int(list_segments(tmp_path)[0][:19]) + 10**12:019d}-0123abcd.jsonl"  # a writer with a fast clock
    storage.write_text(tmp_path / future, json.dumps(record("b")) + "\n")
    log = EventLog.open(tmp_path)
    name = log.append([record("c")]).segment
    assert list_segments(tmp_path)[-1] == name and log.position == 3


def test_bad_records_name_the_segment_line_and_field(tmp_path):
    name = "0000000000000000001-00000000.jsonl"
    good = json.dumps(record("a"))
    for line, message in [("{not json", "event is not valid JSON"), ("[1]", "event must hold a JSON object"),
                          (json.dumps(record("b", kind="buy")), "field 'type': unknown event 'buy'"),
                          (json.dumps(record("b", when="yesterday")), "field 'timestamp'"),
                          (json.dumps({"event_id": "b"}), r"missing or empty field\(s\) \['type'")]:
        (tmp_path / name).write_text(f"{good}\n{line}\n")
        with pytest.raises(DataValidationError, match=rf"{name}, line 2: {message}"):
            EventLog.open(tmp_path)


@pytest.mark.parametrize("value, message", [
    ("soon", "not an ISO-8601"), (True, "got bool"), (None, "got NoneType"),
    (1.7e12, r"epoch seconds 1700000000000.0 out of range \(epoch milliseconds given as seconds\?\)$"),
    pytest.param(10**400, r"epoch seconds 10{19}\.\.\. out of range$", id="past-float-range"),  # no OverflowError
    (float("nan"), "out of range"), (-1, "out of range"), ("1969-12-31T23:59:59Z", "before 1970"),
    ("2999-01-01", r"in the future$"), (1.7e10, r"in the future$"),  # (as milliseconds: 1970)
])
def test_event_times_refuse_nonsense(value, message):
    with pytest.raises(ValueError, match=message):
        event_time(value)


def test_event_times_accept_iso_and_epoch_seconds():
    assert event_time(1_700_000_000) == dt.datetime(2023, 11, 14, 22, 13, 20, tzinfo=dt.timezone.utc)
    assert event_time("2023-11-14T23:13:20+01:00") == event_time("2023-11-14T22:13:20Z") == event_time(
        "2023-11-14 22:13:20")


def test_the_log_reads_as_interactions(tmp_path):
    EventLog.open(tmp_path).append([record("a", "apply", "u1", "j1", "2026-12-01T10:00:00.000000Z"),
                                    record("b", "dismiss", "u2", "j2", "2026-12-01T11:00:00.000000Z")])
    frame = interactions_frame(tmp_path)
    assert frame[["user_id", "job_id", "event"]].values.tolist() == [["u1", "j1", "apply"], ["u2", "j2", "dismiss"]]
    assert frame["timestamp"].tolist() == [event_log.micros(event_time(f"2026-12-01T1{h}:00:00Z")) for h in (0, 1)]
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataValidationError, match="holds no events"):
        interactions_frame(tmp_path / "empty")
    with pytest.raises(DataValidationError, match="nope: event log not found"):  # read as "holds no events"
        interactions_frame(tmp_path / "nope")


@pytest.mark.timeout(120)
def test_the_log_on_s3(s3_bucket):
    root = s3_bucket("live/events")
    log = EventLog.open(root)
    log.append([record("a"), record("b")])
    log.append([record("b"), record("c", kind="apply")])
    reopened = EventLog.open(root)
    assert reopened.position == 2 and len(reopened) == 3
    assert reopened.append([record("a")]).segment is None
    assert [r["event_id"] for _, rs in read_log(root) for r in rs] == ["a", "b", "c"]
    assert interactions_frame(root)["event"].tolist() == ["click", "click", "apply"]


def test_the_writer_keeps_the_ids_of_events_alone_and_the_impression_log_keeps_none(tmp_path):
    """One impression record per answer: a writer that kept their ids grew by one per request served."""
    from convfm.store.event_log import IMPRESSION, EventLog

    shown = {"type": IMPRESSION, "user_id": None, "job_ids": ["j1"], "timestamp": "2026-12-01T00:00:00Z"}
    click = {"type": "click", "user_id": "u1", "job_id": "j1", "timestamp": "2026-12-01T00:00:00Z"}
    mixed = EventLog.open(tmp_path / "events")  # as services wrote logs before: impressions among the events
    mixed.append([{**shown, "event_id": "imp1"}, {**click, "event_id": "e1"}])
    assert len(EventLog.open(tmp_path / "events")) == 1
    impressions = EventLog(tmp_path / "impressions", dedupe=False)
    for _ in range(3):
        assert len(impressions.append([{**shown, "event_id": "imp2"}]).records) == 1
    assert len(impressions) == 0 and impressions.position == 3


def _bundled_log(root, monkeypatch, segments: int) -> list[str]:
    """A log of ``segments`` segments of two events each, bundled every 5."""
    monkeypatch.setattr(log_bundles, "BUNDLE", 5)
    log = EventLog.open(root)
    for i in range(segments):
        log.append([record(f"e{i}a", user=f"u{i}"), record(f"e{i}b", job=f"j{i}")])
    log.settle()  # the bundles are written in the background
    return list_segments(root)


def test_a_reader_takes_each_whole_block_of_segments_from_its_bundle(tmp_path, monkeypatch, caplog):
    """Every ``BUNDLE``-th segment also writes its block as one file; a reader takes a block it wants two or more
    segments of from its bundle, the rest segment by segment, and reads the segments of a bundle it cannot read."""
    names = _bundled_log(tmp_path, monkeypatch, 12)
    bundles = tmp_path / "bundles"
    assert sorted(p.name for p in bundles.iterdir()) == [f"{names[0][:-6]}--{names[4][:-6]}.json",
                                                         f"{names[5][:-6]}--{names[9][:-6]}.json"]
    one_by_one = [(name, event_log.read_segment(tmp_path, name)) for name in names]
    real, reads = storage.read_text, []
    monkeypatch.setattr(storage, "read_text", lambda path: reads.append(storage.name(path)) or real(path))
    assert list(read_log(tmp_path)) == one_by_one and len(reads) == 2 + 2
    reads.clear()
    assert list(read_log(tmp_path, skip=names[:3])) == one_by_one[3:]  # two of the first block: its bundle
    assert reads[0].endswith(".json") and len(reads) == 4
    reads.clear()
    assert list(read_log(tmp_path, skip=names[:4] + names[6:])) == [one_by_one[4], one_by_one[5]]
    assert reads == [names[4], names[5]]  # one wanted segment per block: no bundle
    first = sorted(bundles.iterdir())[0]
    kept = json.loads(first.read_text())["segments"]
    for broken in ([[names[0], "{}"]], [[n, None] for n, _ in kept], [[n, 3] for n, _ in kept],
                   [[n, [t]] for n, t in kept], kept[:2] + kept[1:4], kept[:2] + kept[1:2] + kept[3:],
                   kept[1:] + kept[:1], [kept] * 5, "{broken"):
        first.write_text(broken if isinstance(broken, str) else json.dumps({"format_version": 1, "segments": broken}))
        caplog.clear()
        assert list(read_log(tmp_path)) == one_by_one  # from the segments, with a warning
        assert f"event log bundle {first} unreadable" in caplog.text
        assert ("not valid JSON" if broken == "{broken" else "does not hold the 5 segments") in caplog.text
    assert event_log.bundle_missing(tmp_path) == {"segments": 12, "written": 1, "large": 0, "failed": 0}
    assert json.loads(first.read_text())["segments"] == kept  # a bundle that is not its block is written again


def test_a_reopened_writer_and_the_impression_writer_bundle_the_same_blocks(tmp_path, monkeypatch):
    """The blocks are counted over the whole log: a writer opened mid-block, or one never opened (the impression
    log's), ends the block where a writer that wrote it all would."""
    names = _bundled_log(tmp_path / "a", monkeypatch, 3)
    log = EventLog.open(tmp_path / "a")
    log.append([record("x")])
    assert not (tmp_path / "a" / "bundles").exists()
    log.append([record("y")])
    log.settle()
    last = list_segments(tmp_path / "a")[-1]
    assert [p.name for p in (tmp_path / "a" / "bundles").iterdir()] == [f"{names[0][:-6]}--{last[:-6]}.json"]
    shown = {"type": event_log.IMPRESSION, "user_id": None, "job_ids": ["j1"], "timestamp": "2026-12-01T00:00:00Z"}
    for i in range(3):
        EventLog(tmp_path / "imp", dedupe=False).append([{**shown, "event_id": f"i{i}"}])
    impressions = EventLog(tmp_path / "imp", dedupe=False)
    for i in range(7):
        impressions.append([{**shown, "event_id": f"j{i}"}])
    impressions.settle()
    assert impressions.position == 10 and len(list((tmp_path / "imp" / "bundles").iterdir())) == 2
    ids = [r["event_id"] for _, rs in read_log(tmp_path / "imp") for r in rs]
    assert ids == [f"i{i}" for i in range(3)] + [f"j{i}" for i in range(7)]


def test_the_bundles_a_log_lacks_are_written_by_the_command(tmp_path, monkeypatch, capsys, caplog):
    """A live store's logs written before bundles existed get theirs from ``convfm catalog bundle``; a bad record
    in a bundled segment is still named by its segment and line."""
    from convfm.cli.main import main

    live = tmp_path / "live"
    events = live / "events"
    monkeypatch.setattr(log_bundles, "BUNDLE", 5)
    for i in range(11):  # as a writer before bundles wrote them
        storage.write_text(events / f"{1_000 + i:019d}-0000000{i % 10}.jsonl", json.dumps(record(f"e{i}")) + "\n")
    assert main(["catalog", "bundle", str(live)]) == 0
    assert f"{events}: 11 segments; wrote 2 bundle(s)" in capsys.readouterr().out
    assert len(list((events / "bundles").iterdir())) == 2
    assert main(["catalog", "bundle", str(live)]) == 0 and "wrote 0 bundle(s)" in capsys.readouterr().out
    assert [r["event_id"] for _, rs in read_log(events) for r in rs] == [f"e{i}" for i in range(11)]
    bad = events / f"{1_006:019d}-00000006.jsonl"
    bad.write_text(json.dumps(record("e6", when="yesterday")) + "\n")
    (events / "bundles").rename(tmp_path / "kept")
    assert main(["catalog", "bundle", str(live)]) == 0
    with pytest.raises(DataValidationError, match=f"{bad}, line 1: field 'timestamp'"):
        list(read_log(events))
    assert main(["catalog", "bundle", str(tmp_path / "nowhere")]) == 2
    assert "no live catalog delta and no event log segment there" in capsys.readouterr().err


def test_with_a_dedupe_window_the_writer_holds_and_reads_back_only_its_ids(tmp_path, monkeypatch):
    """An id is a duplicate while its segment is younger than the window; the writer reads back only those
    segments when it opens, forgets ids as they age out, and a retry after the window is stored again (training
    counts it once)."""
    day, now = 86_400 * 10**9, time_ns_at("2026-12-10")
    for age_days, event in ((9, "old"), (8, "older-retried"), (1, "recent")):
        storage.write_text(tmp_path / f"{now - age_days * day:019d}-0000000{age_days}.jsonl",
                           json.dumps(record(event)) + "\n")
    monkeypatch.setattr(event_log.time, "time_ns", lambda: now)
    real, reads = storage.read_text, []
    monkeypatch.setattr(storage, "read_text", lambda path: reads.append(storage.name(path)) or real(path))
    log = EventLog.open(tmp_path, window_s=7 * 86_400)
    assert len(log) == 1 and log.position == 3 and reads == [list_segments(tmp_path)[-1]]
    again = log.append([record("old"), record("recent"), record("new")])
    assert [r["event_id"] for r in again.records] == ["old", "new"] and again.duplicates == ["recent"]
    assert len(EventLog.open(tmp_path)) == 4  # without a window: every id of the log
    monkeypatch.setattr(event_log.time, "time_ns", lambda: now + 6 * day + 1)  # "recent" is 7 days old now
    later = log.append([record("recent"), record("new")])
    assert [r["event_id"] for r in later.records] == ["recent"] and later.duplicates == ["new"]
    assert sorted(log._ids) == ["new", "old", "recent"]  # the first "old" and "recent" segments are forgotten
    assert interactions_frame(tmp_path)["event"].tolist() == ["click"] * 4  # old, older-retried, recent, new
    for bad in (0, -1.0, 1e-12, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="dedupe window must be positive seconds"):
            EventLog(tmp_path, window_s=bad)


def test_an_id_stored_twice_stays_held_until_its_last_segment_ages_out(tmp_path, monkeypatch):
    """A log can hold an id twice (a retry stored after a shorter window); its older segment aging out must not
    free the id that the newer one still holds."""
    day, now = 86_400 * 10**9, time_ns_at("2026-12-10")
    for age_days in (6, 1):
        storage.write_text(tmp_path / f"{now - age_days * day:019d}-0000000{age_days}.jsonl",
                           json.dumps(record("twice")) + "\n")
    monkeypatch.setattr(event_log.time, "time_ns", lambda: now)
    log = EventLog.open(tmp_path, window_s=7 * 86_400)
    monkeypatch.setattr(event_log.time, "time_ns", lambda: now + 2 * day)  # the 6-day-old segment is out
    assert log.append([record("twice")]).duplicates == ["twice"]


def time_ns_at(day: str) -> int:
    return int(dt.datetime.fromisoformat(day).replace(tzinfo=dt.timezone.utc).timestamp()) * 10**9


def test_a_bundle_that_cannot_be_written_never_fails_the_append(tmp_path, monkeypatch, caplog):
    """The 1,000th append writes the bundle best effort: a segment of the block that cannot be read (not UTF-8)
    or a failed write leave the segments as the record and the append acknowledged; a block of more text than
    ``MAX_BYTES`` is left as segments."""
    monkeypatch.setattr(log_bundles, "BUNDLE", 3)
    log = EventLog.open(tmp_path)
    log.append([record("a")])
    (tmp_path / list_segments(tmp_path)[0]).write_bytes(b"\xff\xfe not text\n")
    log.append([record("b")])
    assert log.append([record("c")]).segment is not None and log.position == 3
    log.settle()
    assert not (tmp_path / "bundles").exists() and "bundling" in caplog.text
    monkeypatch.setattr(log_bundles, "MAX_BYTES", 200)
    for i in range(3):
        log.append([record(f"d{i}")])  # ~170 bytes each: over 200 together
    log.settle()
    assert not (tmp_path / "bundles").exists() and log.position == 6
    assert event_log.bundle_missing(tmp_path) == {"segments": 6, "written": 0, "large": 1, "failed": 1}
    monkeypatch.setattr(log_bundles, "MAX_BYTES", 10_000)
    (tmp_path / list_segments(tmp_path)[0]).write_text(json.dumps(record("a")) + "\n")
    assert event_log.bundle_missing(tmp_path) == {"segments": 6, "written": 2, "large": 0, "failed": 0}


def test_the_append_does_not_wait_for_its_bundle(tmp_path, monkeypatch):
    """The 1,000th append returns while its bundle is still being written (in a thread of its own)."""
    import threading

    monkeypatch.setattr(log_bundles, "BUNDLE", 2)
    release, real = threading.Event(), log_bundles.write_bundle
    monkeypatch.setattr(log_bundles, "write_bundle", lambda *args: release.wait(30) and real(*args))
    log = EventLog.open(tmp_path)
    log.append([record("a")])
    assert log.append([record("b")]).position == 2 and log.append([record("c")]).position == 3
    assert not (tmp_path / "bundles").exists()  # still waiting
    release.set()
    log.settle()
    assert len(list((tmp_path / "bundles").iterdir())) == 1
