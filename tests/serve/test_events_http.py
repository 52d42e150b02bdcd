"""``POST /events`` and the live-event overlay without Ray (``LocalBackend``): auth, 422 with nothing written,
duplicates, unknown jobs flagged, impression ids, and events changing the next answer (``exclude_seen``, the
history) for this process and for one started later on the same live store."""
from __future__ import annotations

import hashlib
import warnings

import pandas as pd
import pytest

with warnings.catch_warnings():  # starlette's note about its httpx-based TestClient
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from convfm.config import EVENTS
from convfm.store.event_log import events_location, impressions_location, list_segments, read_log
from serve.event_overlay import EventOverlay
from serve.http import LocalBackend, build_http_app
from serve.schemas import Event, RecommendRequest
from serve.model_slot import ModelSlot

pytestmark = pytest.mark.timeout(120)
KEY = "events-key-0123456789"
HEADERS = {"X-API-Key": KEY}
NOW = "2026-12-01T12:00:00Z"


def client(live_store, key: str | None = KEY, slot: ModelSlot | None = None, tiny=None) -> TestClient:
    if slot is None:
        slot = ModelSlot(tiny.entry)
        assert slot.load()["ok"]
    digest = hashlib.sha256(key.encode()).hexdigest() if key else None
    return TestClient(build_http_app(LocalBackend(slot, live_store), api_key_digest=digest),
                      base_url="http://localhost")


def event(event_id: str, job: str, kind: str = "apply", user: str = "u-live", **extra) -> dict:
    return {"event_id": event_id, "type": kind, "user_id": user, "job_id": job, "timestamp": NOW, **extra}


def logged(live_store, log=events_location) -> list[dict]:
    return [r for _, records in read_log(log(live_store)) for r in records]


def shown(live_store) -> list[dict]:
    """The impression log's records."""
    return logged(live_store, lambda store: impressions_location(events_location(store)))


def test_the_schema_offers_the_data_schemas_events():
    assert Event.model_json_schema()["properties"]["type"]["enum"] == list(EVENTS)


def test_writing_needs_the_api_key(tiny, tmp_path):
    body = {"events": [event("e1", "j000001")]}
    response = client(tmp_path, key=None, tiny=tiny).post("/events", json=body, headers=HEADERS)
    assert response.status_code == 403 and "disabled" in response.json()["detail"]
    c = client(tmp_path, tiny=tiny)
    assert c.post("/events", json=body).status_code == 401
    assert c.post("/events", json=body, headers={"X-API-Key": KEY + "x"}).status_code == 403
    assert logged(tmp_path) == []
    assert c.post("/events", json=body, headers=HEADERS).status_code == 200


@pytest.mark.parametrize("bad, field", [
    ({"type": "purchase"}, "events.1.type"), ({"timestamp": 1.7e12}, "events.1.timestamp"),
    ({"timestamp": 10**400}, "events.1.timestamp"),  # past float range: was a 500
    ({"timestamp": "last tuesday"}, "events.1.timestamp"), ({"timestamp": True}, "events.1.timestamp"),
    ({"user_id": ""}, "events.1.user_id"), ({"job_id": None}, "events.1.job_id"), ({"extra": 1}, "events.1.extra"),
    ({"event_id": "   "}, "events.1.event_id"), ({"user_id": " \t"}, "events.1.user_id"),  # stored as "" before
    ({"timestamp": 549755813888}, "events.1.timestamp"), ({"timestamp": "0001-01-01T00:00:00+05:00"},
                                                          "events.1.timestamp"),  # overflowed: 500 before
    ({"model_version": "   "}, "events.1.model_version"), ({"impression_id": " "}, "events.1.impression_id"),  # stored
])
def test_a_malformed_event_is_422_and_nothing_is_written(tiny, tmp_path, bad, field):
    body = {"events": [event("good", "j000001"), {**event("bad", "j000002"), **bad}]}
    response = client(tmp_path, tiny=tiny).post("/events", json=body, headers=HEADERS)
    assert response.status_code == 422 and response.json()["message"].startswith(field)
    assert logged(tmp_path) == [] and not list_segments(events_location(tmp_path))


def test_empty_or_missing_event_lists_are_422(tiny, tmp_path):
    c = client(tmp_path, tiny=tiny)
    for body in ({"events": []}, {}, [event("e", "j000001")]):
        assert c.post("/events", json=body, headers=HEADERS).status_code == 422


def test_duplicates_are_ignored_and_unknown_jobs_stored_flagged(tiny, tmp_path):
    c = client(tmp_path, tiny=tiny)
    first = c.post("/events", json={"events": [event("e1", "j000001"), event("e2", "no-such-job", "click"),
                                               event("e1", "j000001")]}, headers=HEADERS).json()
    assert first["accepted"] == 2 and first["duplicates"] == ["e1"] and first["unknown_jobs"] == ["no-such-job"]
    again = c.post("/events", json={"events": [event("e2", "no-such-job", "click")]}, headers=HEADERS).json()
    assert again == {"accepted": 0, "duplicates": ["e2"], "unknown_jobs": [], "before_posting": [],
                     "segment": None, "position": 1}
    records = logged(tmp_path)
    assert [(r["event_id"], r["known_job"]) for r in records] == [("e1", True), ("e2", False)]
    assert records[0]["timestamp"] == "2026-12-01T12:00:00.000000Z" and records[0]["received_at"]
    # a process started later on the same live store knows the ids already
    later = client(tmp_path, tiny=tiny).post("/events", json={"events": [event("e1", "j000001")]}, headers=HEADERS)
    assert later.json()["duplicates"] == ["e1"] and len(logged(tmp_path)) == 2


def test_every_recommendation_has_its_own_impression_id(tiny, tmp_path):
    c = client(tmp_path, tiny=tiny)
    bodies = [c.post("/recommend", json={"user_id": user, "k": 3}).json() for user in ("u000001", "stranger") * 3]
    ids = [b["impression_id"] for b in bodies]
    assert len(set(ids)) == 6 and all(len(i) == 32 for i in ids) and bodies[0]["model_version"] == "v0001"


def test_a_posted_event_drops_the_job_from_the_next_answer(tiny, tmp_path):
    c = client(tmp_path, tiny=tiny)
    for user in (tiny.data.frames["train"]["user_id"].iloc[0], "a-new-user"):  # known, and popular fallback
        top = c.post("/recommend", json={"user_id": user, "k": 5}).json()["items"][0]["job_id"]
        body = {"events": [event(f"view-{user}", top, "view", user, impression_id="imp-1", model_version="v0001")]}
        assert c.post("/events", json=body, headers=HEADERS).json()["accepted"] == 1
        after = [i["job_id"] for i in c.post("/recommend", json={"user_id": user, "k": 5}).json()["items"]]
        assert top not in after
        kept = c.post("/recommend", json={"user_id": user, "k": 100, "exclude_seen": False}).json()["items"]
        assert top in [i["job_id"] for i in kept]
        # a process started later reads the log: the event still counts there
        restarted = client(tmp_path, tiny=tiny)
        assert top not in [i["job_id"] for i in restarted.post("/recommend", json={"user_id": user}).json()["items"]]


def test_positive_events_change_the_history_and_the_scores(tiny):
    slot = ModelSlot(tiny.entry)
    assert slot.load()["ok"]
    scorer = slot.current
    assert scorer.positive_events == ("apply", "save")  # from the model's data_config.json
    user = tiny.data.frames["train"]["user_id"].iloc[0]
    request = RecommendRequest(user_id=user, k=5, exclude_seen=False)
    jobs = tiny.data.extractor.job_ids[1:60:7]
    before = scorer.score_many([_score(user, jobs)])[0]["scores"]
    slot.overlay = EventOverlay(None)
    slot.overlay.admit(scorer)
    live = slot.overlay.live
    views = [{"user_id": user, "job_id": j, "type": "view", "timestamp": NOW} for j in jobs[:3]]
    live.add("s1", views)  # not positive: seen, but no history
    assert scorer.score_many([_score(user, jobs)])[0]["scores"] == before
    applies = [{"user_id": user, "job_id": j, "type": "apply", "timestamp": NOW} for j in jobs[:3]]
    live.add("s2", applies)
    after = scorer.score_many([_score(user, jobs)])[0]["scores"]
    assert max(abs(a["score"] - b["score"]) for a, b in zip(after, before)) > 1e-4
    _, _, past = scorer._user(request)
    # the logged positives come first, most recent first (equal times: the log's order, reversed)
    assert [tiny.data.extractor.job_ids[r] for r in past[:3]] == sorted(jobs[:3], reverse=True)
    assert slot.load("v0001")["ok"] and slot.current.live is live  # a reload keeps the overlay
    reloaded = slot.current.score_many([_score(user, jobs)])[0]["scores"]
    assert [s["score"] for s in reloaded] == pytest.approx([s["score"] for s in after])


def _score(user: str, jobs: list[str]):
    from serve.schemas import ScoreRequest

    return ScoreRequest(user_id=user, job_ids=jobs)


def test_impressions_are_logged_before_the_events_that_cite_them(tiny, tmp_path):
    from convfm.evaluation.feedback import feedback_report

    c = client(tmp_path, tiny=tiny)
    answers = [c.post("/recommend", json={"user_id": "u000001", "k": 3}).json() for _ in range(3)]
    assert not shown(tmp_path)  # buffered: written after IMPRESSION_FLUSH_S, IMPRESSION_BATCH, or before events
    job = answers[0]["items"][0]["job_id"]
    body = {"events": [event("click-1", job, "click", "u000001", impression_id=answers[0]["impression_id"])]}
    response = c.post("/events", json=body, headers=HEADERS).json()
    assert response["accepted"] == 1 and response["position"] == 1  # the event log holds the events alone
    records = shown(tmp_path)
    assert [r["type"] for r in records] == ["impression"] * 3 and [r["type"] for r in logged(tmp_path)] == ["click"]
    assert [r["event_id"] for r in records] == [a["impression_id"] for a in answers]
    assert records[0]["job_ids"] == [i["job_id"] for i in answers[0]["items"]]
    [written] = list_segments(impressions_location(events_location(tmp_path)))
    assert written < list_segments(events_location(tmp_path))[0]  # names sort in write order, across the logs
    row = feedback_report(events_location(tmp_path))["versions"]["v0001"]
    assert row["impressions"] == 3 and row["click"]["impressions_with"] == 1


def test_an_idle_service_writes_its_impressions_and_so_does_a_stopping_one(tmp_path, monkeypatch):
    """The buffer is written IMPRESSION_FLUSH_S after its first record though no request comes to do it, and at
    close (Serve stops the Api): before, an idle service kept them until the next request, and a SIGTERM lost
    them."""
    import asyncio

    from serve import events as events_module
    from serve.events import EventWriter

    monkeypatch.setattr(events_module, "IMPRESSION_FLUSH_S", 0.05)
    answer = {"user_id": "u1", "model_version": "v0001", "items": [{"job_id": "j1"}]}

    async def scenario() -> list[int]:
        writer = EventWriter(tmp_path)
        writer.impression(answer)
        await asyncio.sleep(0.5)  # idle: the timer writes it
        counts = [len(shown(tmp_path))]
        writer.impression(answer)
        await writer.close()  # stopping: written at once
        counts.append(len(shown(tmp_path)))
        return counts

    assert asyncio.run(scenario()) == [1, 2]


def test_an_event_dated_before_its_jobs_posting_is_stored_and_named(tiny, tmp_path):
    """Training and evaluation read a job as not live before its posting and leave such an event out: the answer
    says which events those are, so a board whose clocks disagree finds out at once."""
    c = client(tmp_path, tiny=tiny)
    jobs = pd.read_csv(tiny.market / "jobs.csv").dropna(subset=["posted_at"]).iloc[0]
    posted = pd.Timestamp(jobs["posted_at"], tz="UTC")
    early = {**event("early", jobs["job_id"]), "timestamp": (posted - pd.Timedelta(days=2)).isoformat()}
    later = {**event("later", jobs["job_id"]), "timestamp": (posted + pd.Timedelta(days=2)).isoformat()}
    body = c.post("/events", json={"events": [early, later, event("x", "no-such-job")]}, headers=HEADERS).json()
    assert body["accepted"] == 3 and body["before_posting"] == ["early"] and body["unknown_jobs"] == ["no-such-job"]


def test_the_api_recognises_retries_within_its_dedupe_window(tiny, tmp_path):
    """``event_dedupe_days`` reaches the Api's writer: the ids of that window are held, no older ones."""
    import asyncio

    from serve.app import build_app
    from serve.config import ServeConfig
    from serve.events import EventWriter

    settings = build_app(ServeConfig(model=str(tiny.entry), event_dedupe_days=2.5))._bound_deployment.init_args[1]
    assert settings["event_dedupe_days"] == 2.5
    writer = EventWriter(tmp_path, settings["event_dedupe_days"])
    assert asyncio.run(writer.position()) == 0 and writer._log.window_ns == 2.5 * 86_400 * 10**9
    unlimited = EventWriter(tmp_path, None)  # None: every id of the log
    assert asyncio.run(unlimited.position()) == 0 and unlimited._log.window_ns is None
