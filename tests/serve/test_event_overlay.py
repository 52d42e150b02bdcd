"""``EventOverlay`` and ``LiveEvents`` cut at a ``LogMark``, without Ray: a model trained on the event log records
the last segment it read; the overlay of a process serving it holds only the later events, while the user's
history and seen jobs of the earlier ones come from the model's own data. A version without the mark (a reload,
a split) makes the overlay read every event again, and every served model counts its logged positives once."""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import shutil
import time
import types

import numpy as np
import pandas as pd
import pytest

from convfm.config import EVENTS, DataConfig, ModelConfig, TrainConfig
from convfm.data.prepare import prepare_data
from convfm.data.synth import generate_market, write_market
from convfm.store.artifacts import save_model_dir
from convfm.store.event_log import EventLog, iso, list_segments, parse_time, read_segment
from convfm.store.log_mark import LogMark
from convfm.store.registry import publish
from convfm.store.serving_data import serving_extra_json
from convfm.training.in_process import fit_in_process
from serve.event_overlay import EventOverlay
from serve.events import LiveEvents
from serve.model_slot import ModelSlot, VersionSlots
from serve.schemas import RecommendRequest

pytestmark = pytest.mark.timeout(300)
NOW = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5)
UNPOSTED = "j-posted-later"


def _train(config: DataConfig, out):
    data = prepare_data(config)
    train = TrainConfig(num_epochs=1, batch_size=256, eval_negatives=10, use_amp=False)
    model, history = fit_in_process(data, ModelConfig(embedding_dim=8, conv_filters=8, hidden_dims=(16,)), train)
    return save_model_dir(out, model, data.extractor, metrics=history[-1],
                          extra_json={**serving_extra_json(data), "data_config": data.config.to_dict()})


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    """A market logged as segments of events, then one of ``newcomers`` (users who applied to 3 jobs each after
    every other event; the first also viewed ``UNPOSTED``, a job no catalog holds yet); ``board/v0001`` trained on
    the files (no mark), ``v0002`` on the log (marked at its last segment), ``v0003`` on the log split by global
    time (the newcomers are not in its user catalog); then 2 later segments of applies (``later``: user, job)."""
    root = tmp_path_factory.mktemp("overlay_board")
    write_market(generate_market(users=120, jobs=80, interactions=3000, seed=1), root / "files")
    (root / "jobs_only").mkdir()
    for name in ("jobs.csv", "users.csv"):
        shutil.copy(root / "files" / name, root / "jobs_only" / name)
    log = root / "live" / "events"
    writer = EventLog.open(log)
    rows = pd.read_csv(root / "files" / "interactions.csv", dtype=str).to_dict("records")
    for start in range(0, len(rows), 500):
        writer.append([{"event_id": f"e{start + i}", "type": r["event"], "user_id": r["user_id"],
                        "job_id": r["job_id"], "timestamp": iso(parse_time(r["timestamp"]))}
                       for i, r in enumerate(rows[start:start + 500])])
    last, jobs = max(parse_time(r["timestamp"]) for r in rows), sorted({r["job_id"] for r in rows})
    newcomers = {f"newcomer{u}": [jobs[(u * 7 + k * 3) % len(jobs)] for k in range(3)] for u in range(3)}
    writer.append([{"event_id": f"new-{user}-{k}", "type": "apply", "user_id": user, "job_id": job,
                    "timestamp": iso(last + dt.timedelta(hours=1 + k))}
                   for user, applied in newcomers.items() for k, job in enumerate(applied)]
                  + [{"event_id": "unposted", "type": "view", "user_id": "newcomer0", "job_id": UNPOSTED,
                      "timestamp": iso(last + dt.timedelta(hours=5))}])
    registry, logged = root / "registry", {"path": str(root / "jobs_only"), "events": str(log), "popularity_days": 30}
    publish(_train(DataConfig(path=str(root / "files"), popularity_days=30), root / "plain"), registry, "board")
    publish(_train(DataConfig(**logged), root / "marked"), registry, "board")
    publish(_train(DataConfig(**logged, split="global_time", valid_fraction=0.05, test_fraction=0.05),
                   root / "by_time"), registry, "board")
    positives = [r for r in rows if r["event"] in ("apply", "save")]
    later = [(r["user_id"], positives[-1 - i]["job_id"]) for i, r in enumerate(positives[:12])]
    for start in (0, 6):
        writer.append([{"event_id": f"later-{start + i}", "type": "apply", "user_id": user, "job_id": job,
                        "timestamp": iso(NOW)} for i, (user, job) in enumerate(later[start:start + 6])])
    names = list_segments(log)
    return types.SimpleNamespace(log=log, entry=registry / "board", rows=rows, later=later, writer=writer,
                                 names=names, mark=names[-3], trained=len(names) - 2, newcomers=newcomers,
                                 logged=len(rows) + 10,  # ``after``: a time when the newcomers' events are past
                                 after=int(pd.Timestamp(last + dt.timedelta(hours=6)).value // 1000))


def _slot(board) -> ModelSlot:
    slot = ModelSlot(board.entry)
    slot.overlay = EventOverlay(board.log)
    return slot


def _counts(scorer, jobs) -> np.ndarray:
    """Each job's popularity now, as the scorer reads it (its logged positives counted first)."""
    now = int(pd.Timestamp(dt.datetime.now(dt.timezone.utc)).value // 1000)
    with scorer._time_lock:
        scorer.at(now)
        popularity = scorer.extractor.popularity
        return popularity.counts(np.array([scorer.extractor.job_rows[j] for j in jobs]), now)


def test_a_model_trained_on_the_log_records_its_last_segment(board):
    slot = _slot(board)
    assert slot.load("v0002")["ok"] and slot.current.event_mark == LogMark(board.mark, board.trained, frozenset(EVENTS))
    assert slot.load("v0001")["ok"] and slot.current.event_mark is None


def test_the_overlay_holds_the_events_after_the_mark_and_the_model_the_rest(board):
    slot = _slot(board)
    assert slot.load("v0002")["ok"]
    assert slot.info()["events"] == {"segments": board.trained + 2, "held": 12, "cut_at": board.mark}
    scorer, (user, job) = slot.current, board.later[0]
    trained = {r["job_id"] for r in board.rows if r["user_id"] == user}
    trained_positives = [r["job_id"] for r in board.rows if r["user_id"] == user and r["event"] in ("apply", "save")]
    logged = scorer.live.seen_rows(user, scorer.extractor.job_rows)
    assert {scorer.extractor.job_ids[r] for r in logged} == {job}  # the overlay: the later one
    assert trained <= {scorer.extractor.job_ids[r] for r in scorer.seen[user]}  # the model: the trained ones
    _, _, past = scorer._user(RecommendRequest(user_id=user))
    history = [scorer.extractor.job_ids[r] for r in past]
    assert history[0] == job and trained_positives[-1] in history  # the logged apply first, then the stored ones
    ranked = scorer.recommend_many([RecommendRequest(user_id=user, k=80, filters={"include_expired": True})])[0]
    assert not {i["job_id"] for i in ranked["items"]} & (trained | {job})  # every seen job left out

    board.writer.append([{"event_id": "one-more", "type": "view", "user_id": user, "job_id": board.rows[0]["job_id"],
                          "timestamp": iso(NOW)}])
    try:
        live = slot.overlay.live
        assert live.behind(board.trained + 3) and live.catch_up() == 1  # only the new segment is read
        assert slot.info()["events"] == {"segments": board.trained + 3, "held": 13, "cut_at": board.mark}
    finally:
        (board.log / list_segments(board.log)[-1]).unlink()


def test_a_version_without_the_mark_makes_the_overlay_hold_every_event_again(board):
    slot = _slot(board)
    assert slot.load("v0002")["ok"] and slot.info()["events"]["held"] == 12
    assert slot.load("v0001")["ok"]  # a rollback to a model trained on the files alone
    assert slot.info()["events"] == {"segments": board.trained + 2, "held": board.logged + 12, "cut_at": None}
    assert slot.current.live is slot.overlay.live
    assert slot.load("v0002")["ok"]
    assert slot.info()["events"] == {"segments": board.trained + 2, "held": 12, "cut_at": board.mark}


def test_split_versions_share_one_overlay_and_count_each_logged_positive_once(board):
    slot = _slot(board)
    variants = VersionSlots(slot)
    assert slot.load("v0002")["ok"]
    jobs = sorted({job for _, job in board.later})
    expected = np.array([sum(logged == j for _, logged in board.later) for j in jobs])  # the training data is years old
    assert _counts(slot.current, jobs).tolist() == expected.tolist()
    assert variants.hold(["v0001"])[0]["ok"]  # v0001 needs every event: the overlay is read again, uncut
    assert slot.info()["events"]["cut_at"] is None and variants.get("v0001").live is slot.current.live
    for scorer in (slot.current, variants.get("v0001")):  # the survivor recounts from the new overlay: once
        assert _counts(scorer, jobs).tolist() == expected.tolist()
    variants.hold([])  # the split ends: cut again
    assert slot.info()["events"] == {"segments": board.trained + 2, "held": 12, "cut_at": board.mark}
    assert _counts(slot.current, jobs).tolist() == expected.tolist()


def test_users_and_jobs_the_models_catalogs_lack_keep_what_its_data_holds(board, tmp_path):
    from convfm.store.live_catalog import CatalogStore
    from serve.live_catalog import catch_up

    slot = _slot(board)
    assert slot.load("v0003")["ok"] and slot.info()["events"]["cut_at"] == board.mark
    scorer, user = slot.current, "newcomer0"
    assert user not in scorer.extractor.user_rows  # seen only after the training split

    def ranked(**request) -> tuple[dict, set[str]]:
        answer = scorer.recommend_many([RecommendRequest(user_id=user, k=100, filters={"include_expired": True},
                                                         **request)])[0]
        return answer, {i["job_id"] for i in answer["items"]}

    answer, jobs = ranked()
    assert answer["fallback"] is None and answer["cold_start"]  # scored from its stored history, not the popular
    assert not jobs & set(board.newcomers[user])  # nor offered the jobs it applied to
    store = CatalogStore(tmp_path / "live")  # the job it viewed before any catalog held it, posted now
    store.append(upsert=[{"job_id": UNPOSTED, "title": "Data Engineer", "skills": ["python"], "location": "Berlin"}])
    catch_up(scorer, store)
    assert UNPOSTED not in ranked()[1] and UNPOSTED in ranked(exclude_seen=False)[1]


def test_a_model_admitted_while_another_load_cuts_the_overlay_moves_with_it(board):
    from convfm.store.registry import resolve
    from serve.scorer import Scorer

    overlay = EventOverlay(board.log)
    plain, marked = (Scorer.load(resolve(board.entry, v)) for v in ("v0001", "v0002"))
    overlay.admit(marked)  # admitted, not yet published by its slot, when another load needs every event
    assert overlay.info()["cut_at"] == board.mark
    overlay.admit(plain)
    assert overlay.info()["cut_at"] is None and marked.live is plain.live is overlay.live
    overlay.release([plain])
    assert overlay.info()["cut_at"] == board.mark and marked.live is overlay.live
    assert plain.live is not overlay.live


def test_a_failed_admission_leaves_the_serving_model_following(board):
    from convfm.store.registry import resolve
    from serve.scorer import Scorer

    overlay = EventOverlay(board.log)
    serving, failing, later = (Scorer.load(resolve(board.entry, v)) for v in ("v0001", "v0002", "v0002"))
    overlay.admit(serving)
    failing.follow_events = lambda live: (_ for _ in ()).throw(MemoryError("a re-index"))
    with pytest.raises(MemoryError):
        overlay.admit(failing, replacing=serving)  # the reload fails: v0001 serves on
    overlay.admit(later)  # a split's other version, trained on the log: v0001 still needs every event
    assert overlay.info()["cut_at"] is None and serving.live is later.live is overlay.live
    overlay.release([serving])
    assert overlay.info()["cut_at"] == board.mark and later.live is overlay.live


def test_the_local_service_counts_logged_positives_on_jobs_posted_live(board, tmp_path):
    from convfm.store.live_catalog import CatalogStore
    from serve.http import LocalBackend

    shutil.copytree(board.log.parent, tmp_path / "live")
    CatalogStore(tmp_path / "live").append(upsert=[{"job_id": "j-live", "title": "Data Engineer",
                                                    "skills": ["python"], "location": "Berlin"}])
    EventLog.open(tmp_path / "live" / "events").append([
        {"event_id": f"live-{i}", "type": "apply", "user_id": f"u-{i}", "job_id": "j-live", "timestamp": iso(NOW)}
        for i in range(3)])
    slot = ModelSlot(board.entry)
    assert slot.load("v0002")["ok"]
    LocalBackend(slot, tmp_path / "live")  # the live catalog first, then the events on its jobs
    assert _counts(slot.current, ["j-live"]).tolist() == [3]


def test_a_reload_keeps_the_overlay_when_the_new_one_cannot_be_read(board, monkeypatch):
    from convfm.errors import StorageError
    from convfm.store import event_log

    slot = _slot(board)
    assert slot.load("v0001")["ok"]
    every = slot.info()["events"]
    listing = event_log.list_segments
    monkeypatch.setattr(event_log, "list_segments", lambda root: (_ for _ in ()).throw(StorageError("offline")))
    assert slot.load("v0002")["ok"] and slot.info()["events"] == every  # the old one holds what v0002 needs
    assert slot.current.live is slot.overlay.live
    monkeypatch.setattr(event_log, "list_segments", listing)
    old = slot.overlay.live
    assert slot.load("v0002")["ok"] and slot.info()["events"]["cut_at"] == board.mark  # cut at the next load
    record = {"type": "apply", "user_id": "late", "job_id": board.later[0][1], "timestamp": iso(NOW)}
    old.add(f"{time.time_ns():019d}-00000000.jsonl", [record])  # a broadcast that took the old overlay
    assert slot.overlay.live.positives("late", ("apply",), 5) == [board.later[0][1]]


def test_after_the_cut_the_log_is_read_from_its_bundles(tmp_path, monkeypatch):
    from convfm.store import event_log, log_bundles, storage

    root, start = tmp_path / "events", time.time_ns()
    names = [f"{start + s:019d}-{s:08x}.jsonl" for s in range(2100)]
    for s, name in enumerate(names):
        storage.write_text(root / name, json.dumps({"event_id": f"e{s}", "type": "view", "user_id": f"u{s % 50}",
                                                    "job_id": f"j{s % 70}", "timestamp": iso(NOW)}) + "\n")
    assert event_log.bundle_missing(root)[log_bundles.WRITTEN] == 2
    reads = {"segments": 0, "bundles": 0}
    segment, bundle = event_log.read_segment, log_bundles.bundle_texts
    monkeypatch.setattr(event_log, "read_segment", lambda *a: reads.update(segments=reads["segments"] + 1)
                        or segment(*a))
    monkeypatch.setattr(log_bundles, "bundle_texts", lambda *a: reads.update(bundles=reads["bundles"] + 1)
                        or bundle(*a))
    live = LiveEvents(root, LogMark(names[1049], 1050, frozenset(EVENTS)))
    assert live.catch_up() == 1050 and live.position == 2100
    assert reads == {"segments": 100, "bundles": 1}  # the cut's block from its bundle, the 100 after it alone
    again, reads["segments"] = LiveEvents(root, LogMark(names[1049], 1050, frozenset(EVENTS))), 0
    again.add(names[1050], [])  # a broadcast before the first read (or a read cut short): the block stays whole
    assert again.catch_up() == 1049 and reads == {"segments": 100, "bundles": 2}


def test_types_the_models_data_left_out_keep_their_seen_marks(board):
    viewed = next(r for r in board.rows if r["event"] == "view")
    live = LiveEvents(board.log, LogMark(board.mark, board.trained, frozenset({"apply", "save"})))
    assert live.catch_up() == 2 and (live.position, live.held, live.cut) == (board.trained + 2, 12, board.mark)
    rows = {viewed["job_id"]: 1}
    assert live.seen_rows(viewed["user_id"], rows) == [1]  # a view the model's seen pairs do not hold
    assert not live.add(board.names[0], [])  # a segment up to the cut is never applied again


def test_a_log_without_the_marks_segment_keeps_every_event(board, tmp_path, caplog):
    other = tmp_path / "events"
    shutil.copytree(board.log, other)
    (other / board.mark).unlink()  # not the log the model read
    live = LiveEvents(other, LogMark(board.mark, board.trained, frozenset(EVENTS)))
    caplog.set_level(logging.WARNING, logger="serve.events")  # a Ray test run before may have changed its level
    held = board.logged - len(read_segment(board.log, board.mark)) + 12
    assert live.catch_up() == board.trained + 1 and live.cut is None and live.held == held
    assert f"does not hold segment {board.mark}" in caplog.text


def test_adds_reach_the_overlay_being_built():
    old, new = LiveEvents(), LiveEvents()
    old.forward = new
    record = {"type": "apply", "user_id": "u", "job_id": "j", "timestamp": "2026-12-01T00:00:00.000000Z"}
    assert old.add("s1", [record]) and new.position == 1 and new.positives("u", ("apply",), 5) == ["j"]


def test_the_service_reports_its_overlay_and_counts_a_posted_event_at_once(board, tmp_path):
    from fastapi.testclient import TestClient

    from serve.http import LocalBackend, build_http_app

    shutil.copytree(board.log.parent, tmp_path / "live")
    slot = ModelSlot(board.entry)
    assert slot.load("v0002")["ok"]
    key = "overlay-key-0123456789"
    app = TestClient(build_http_app(LocalBackend(slot, tmp_path / "live"),
                                    api_key_digest=hashlib.sha256(key.encode()).hexdigest()),
                     base_url="http://localhost", headers={"X-API-Key": key})
    assert app.get("/model").json()["events"] == {"segments": board.trained + 2, "held": 12, "cut_at": board.mark}
    user, job = board.rows[0]["user_id"], board.later[0][1]
    body = {"events": [{"event_id": "posted", "type": "dismiss", "user_id": user, "job_id": job,
                        "timestamp": iso(NOW)}]}
    assert app.post("/events", json=body).status_code == 200
    assert app.get("/model").json()["events"]["held"] == 13
    ranked = app.post("/recommend", json={"user_id": user, "k": 80, "filters": {"include_expired": True}}).json()
    assert job not in {i["job_id"] for i in ranked["items"]}
