"""``POST /jobs`` and the live catalog through the HTTP layer without Ray (LocalBackend): the key, strict
validation with nothing written, new jobs recommended under a filter that matches them, updates and expiry
reflected by ``GET /jobs/{id}``, expired jobs left out, and a restarted or reloaded model catching up."""
from __future__ import annotations

import json
import warnings

import pandas as pd
import pytest

with warnings.catch_warnings():  # starlette's note about its httpx-based TestClient
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from convfm.store.live_catalog import CatalogStore, Delta
from serve.http import LocalBackend, build_http_app
from serve.model_slot import ModelSlot

pytestmark = pytest.mark.timeout(300)
KEY = "live-key-0123456789"
AUTH = {"X-API-Key": KEY}
ATLANTIS = {"user_id": None, "k": 5, "filters": {"location": "Atlantis"}}


def posting(job_id: str, **fields) -> dict:
    return {"job_id": job_id, "title": "Underwater Data Engineer", "description": "python and sql pipelines",
            "skills": ["python", "sql"], "location": "Atlantis", "company": "Deep Co", "job_type": "full_time",
            "experience_level": "senior", "salary_min": 70000, "salary_max": 90000, **fields}


@pytest.fixture()
def service(tiny, tmp_path, local_service):
    """A fresh model slot and live store per test (the live catalog changes the scorer in place)."""
    started = local_service(tiny.entry, tmp_path, KEY)
    user = started.slot.current.extractor.user_ids[1]
    return started.client, started.store, started.slot, {**ATLANTIS, "user_id": user}


def test_writing_jobs_needs_the_api_key(service, tiny, tmp_path):
    client, store, _, _ = service
    body = {"upsert": [posting("n1")]}
    assert client.post("/jobs", json=body).status_code == 401
    assert client.post("/jobs", json=body, headers={"X-API-Key": KEY + "x"}).status_code == 403
    slot = ModelSlot(tiny.entry)
    slot.load()
    keyless = TestClient(build_http_app(LocalBackend(slot, store.root.parent)), base_url="http://localhost")
    response = keyless.post("/jobs", json=body, headers=AUTH)
    assert response.status_code == 403 and "disabled" in response.json()["detail"]
    assert store.latest() == 0


@pytest.mark.parametrize("body, message", [
    ({}, "give jobs to upsert or job ids to expire"),
    ({"upsert": [{"title": "no id"}]}, "upsert.0.job_id: Field required"),
    ({"upsert": [posting("n1", salary_min=9, salary_max=1)]}, "salary_min is above salary_max"),
    ({"upsert": [posting("n1", salary_min="70000")]}, "upsert.0.salary_min: Input should be a valid number"),
    ({"upsert": [posting("n1", posted_at="yesterday")]}, "posted_at: Value error, 'yesterday' is not an ISO-8601"),
    ({"upsert": [posting("n1", posted_at=1_700_000_000_000)]}, "out of range (epoch milliseconds given as seconds?)"),
    ({"upsert": [posting("n1", posted_at=True)]}, "must be an ISO-8601 date/time or epoch seconds, got bool"),
    ({"upsert": [posting("n1", expires_at=10**400)]}, "epoch seconds 10000000000000000000... out of range"),  # was 500
    ({"upsert": [posting("n1", expires_at="1960-01-01")]}, "1960-01-01T00:00:00+00:00 is before 1970-01-01"),
    ({"upsert": [posting("n1", expires_at="2100-01-01")]}, "must be between 1970-01-01 and 2100-01-01"),
    ({"upsert": [posting("n1", posted_at="2026-12-02T10:00:00+02:00", expires_at="2026-12-02T08:00:00Z")]},
     "expires_at must be after posted_at"),
    ({"upsert": [posting("n1"), posting("n1")]}, "each job id once per request"),
    ({"upsert": [posting("n1")], "expire": ["n1"]}, "each job id once per request"),
    ({"upsert": [posting("n1", colour="red")]}, "upsert.0.colour: Extra inputs are not permitted"),
    ({"expire": [""]}, "expire.0: String should have at least 1 character"),  # read "at least 1 item"
    ({"upsert": [posting("   ")]}, "upsert.0.job_id: String should have at least 1 character"),  # was 200, then 500s
    ({"upsert": [posting("n1", posted_at="0001-01-01T00:00:00+05:00")]}, "'0001-01-01T00:00:00+05:00' is out of range"),
    # A lone UTF-16 surrogate: stored before, it failed every later read of the live catalog (all 500s, no restart)
    ({"upsert": [posting("sur-2\udc00")]},
     "upsert.0.job_id: Value error, not valid Unicode text: a lone surrogate (U+DC00) at character 6"),
    ({"upsert": [posting("n1", location="Berlin\ud800")]}, "upsert.0.location: Value error, not valid Unicode text"),
    ({"upsert": [posting("n1", skills=["python", "\ud800"])]}, "upsert.0.skills.1: Value error, not valid Unicode"),
    ({"upsert": [posting("n1", company="\udfff co")]}, "upsert.0.company: Value error, not valid Unicode text"),
    ({"upsert": [posting("n1", extra={"industry": "fin\ud800"})]}, "not valid Unicode text"),
    ({"upsert": [posting("n1", extra={"tags": ["ok", "\ud800"]})]}, "not valid Unicode text"),
    ({"expire": ["x\ud800"]}, "expire.0: Value error, not valid Unicode text"),
    ({"upsert": [posting("n1", skills=["python;sql"])]},  # was stored as two skills
     "upsert.0.skills.0: Value error, a skill cannot contain ';' (it separates skills), got 'python;sql'"),
])
def test_a_malformed_change_is_422_and_writes_nothing(service, body, message):
    client, store, _, _ = service
    escaped = json.dumps(body).encode()  # ASCII JSON text: httpx's json= cannot encode a lone surrogate
    response = client.post("/jobs", content=escaped, headers={**AUTH, "content-type": "application/json"})
    assert response.status_code == 422, response.text
    assert message in response.json()["message"]
    assert store.latest() == 0


def test_a_new_job_is_recommended_under_a_matching_filter_and_get_follows_its_updates(service):
    client, store, _, request = service
    assert client.post("/recommend", json=request).json()["items"] == []  # nobody is in Atlantis yet
    written = client.post("/jobs", json={"upsert": [posting("n1"), posting("n2", location="Lemuria")]},
                          headers=AUTH)
    assert written.status_code == 200 and written.json() == {"catalog_version": 1, "upserted": 2, "expired": 0,
                                                        "unknown_expire": [], "unread_extra": []}
    answer = client.post("/recommend", json=request).json()
    assert [i["job_id"] for i in answer["items"]] == ["n1"] and answer["catalog_version"] == 1
    assert answer["items"][0]["title"] == "Underwater Data Engineer" and answer["items"][0]["score"] > 0
    salary = client.post("/recommend", json={**request, "filters": {"salary_min": 85000, "location": "atlantis"}})
    assert [i["job_id"] for i in salary.json()["items"]] == ["n1"]
    job = client.get("/jobs/n1").json()
    assert job["company"] == "Deep Co" and not job["expired"] and job["catalog_version"] == 1
    posted = "2024-03-20T08:00:00+00:00"
    client.post("/jobs", json={"upsert": [posting("n1", title="Reef Analyst", location="Lemuria", posted_at=posted)]},
                headers=AUTH)
    job = client.get("/jobs/n1").json()
    assert job["title"] == "Reef Analyst" and job["location"] == "Lemuria" and job["catalog_version"] == 2
    assert job["posted_at"] == posted  # as written; a model job shows its file's date
    assert client.post("/recommend", json=request).json()["items"] == []  # it moved out of Atlantis
    scored = client.post("/score", json={"user_id": request["user_id"], "job_ids": ["n1", "n2"]}).json()
    assert scored["unknown_job_ids"] == [] and scored["catalog_version"] == 2
    assert client.get("/model").json()["catalog_version"] == 2


def test_expired_jobs_are_left_out_unless_asked_for(service):
    client, store, _, request = service
    expired = posting("n2", posted_at="2024-12-01T00:00:00Z", expires_at="2025-01-01T00:00:00Z")
    client.post("/jobs", json={"upsert": [posting("n1"), expired]}, headers=AUTH)
    assert [i["job_id"] for i in client.post("/recommend", json=request).json()["items"]] == ["n1"]
    assert client.post("/jobs", json={"expire": ["n1"]}, headers=AUTH).json()["expired"] == 1
    assert client.post("/recommend", json=request).json()["items"] == []
    popular = client.post("/recommend", json={**request, "user_id": "nobody-knows-me"}).json()
    assert popular["fallback"] == "popular" and popular["items"] == []
    shown = client.post("/recommend", json={**request, "filters": {"location": "Atlantis", "include_expired": True}})
    assert sorted(i["job_id"] for i in shown.json()["items"]) == ["n1", "n2"]
    job = client.get("/jobs/n1").json()
    assert job["expired"] and job["expires_at"] is not None
    assert client.get("/jobs/n2").json()["expires_at"].startswith("2025-01-01T00:00:00")
    again = posting("n1", posted_at=pd.Timestamp.now(tz="UTC").isoformat())  # posted again: live again
    client.post("/jobs", json={"upsert": [again]}, headers=AUTH)
    assert [i["job_id"] for i in client.post("/recommend", json=request).json()["items"]] == ["n1"]


def test_times_may_be_epoch_seconds_as_for_events(service):
    client, _, _, _ = service
    job = posting("n1", posted_at=1_733_011_200, expires_at=1_735_689_600.5)  # 2024-12-01, 2025-01-01 + 0.5 s
    assert client.post("/jobs", json={"upsert": [job]}, headers=AUTH).status_code == 200
    shown = client.get("/jobs/n1").json()
    assert shown["posted_at"] == "2024-12-01T00:00:00+00:00"
    assert shown["expires_at"] == "2025-01-01T00:00:00.500000+00:00"


def test_a_restarted_process_and_a_reloaded_model_catch_up_from_the_store(service, tiny):
    client, store, slot, request = service
    client.post("/jobs", json={"upsert": [posting("n1"), posting("n2")]}, headers=AUTH)
    client.post("/jobs", json={"expire": ["n2"]}, headers=AUTH)
    assert slot.load()["ok"]  # a model reload starts from the model's catalog and re-applies the live one
    assert [i["job_id"] for i in client.post("/recommend", json=request).json()["items"]] == ["n1"]
    restarted = ModelSlot(tiny.entry)
    assert restarted.load()["ok"]
    again = TestClient(build_http_app(LocalBackend(restarted, store.root.parent)),
                       base_url="http://localhost")
    assert [i["job_id"] for i in again.post("/recommend", json=request).json()["items"]] == ["n1"]
    assert again.get("/jobs/n2").json()["expired"] and again.get("/model").json()["catalog_version"] == 2


def test_replacing_one_model_job_leaves_the_others_served_on_a_replayed_logs_clock(service, tiny):
    client, _, slot, request = service
    info = client.get("/model").json()  # the 2024 market: its jobs read at its data's end
    assert info["model_jobs_expire"] is True and info["model_time"].startswith("2024-")
    ask = {"user_id": request["user_id"], "k": 10}
    before = client.post("/recommend", json=ask).json()["items"]
    job = tiny.data.extractor.job_ids[1]
    client.post("/jobs", json={"upsert": [posting(job)]}, headers=AUTH)
    after = client.post("/recommend", json=ask).json()["items"]
    assert len(before) == len(after) == 10  # (an earlier bug left only live rows once one job was replaced)
    assert client.get("/model").json()["model_time"] == info["model_time"]  # the clock holds for the others


def test_expiring_ids_the_catalog_does_not_hold_lists_them_and_writes_them_all(service, tiny):
    client, store, _, _ = service
    job = tiny.data.extractor.job_ids[1]
    body = client.post("/jobs", json={"expire": [job, "no-such-job"]}, headers=AUTH).json()
    assert body == {"catalog_version": 1, "upserted": 0, "expired": 1, "unknown_expire": ["no-such-job"],
                    "unread_extra": []}
    assert store.latest() == 1 and sorted(store.read()[0].expire) == sorted([job, "no-such-job"])
    assert client.get(f"/jobs/{job}").json()["expires_at"].endswith("+00:00")


def test_expired_counts_only_the_ids_the_catalog_holds(service):
    """``expired`` counted every id given, so ids that expired nothing read as expirations."""
    client, store, _, _ = service
    body = client.post("/jobs", json={"expire": ["nope-1", "nope-2"]}, headers=AUTH).json()
    assert body == {"catalog_version": 1, "upserted": 0, "expired": 0, "unknown_expire": ["nope-1", "nope-2"],
                    "unread_extra": []}
    assert sorted(store.read()[0].expire) == ["nope-1", "nope-2"]  # written all the same


def test_a_job_posted_ahead_is_recommended_once_it_opens(service):
    """The service takes a ``posted_at`` up to a day ahead; such a job was recommended from its upsert on."""
    client, _, _, request = service
    ahead = (pd.Timestamp.now(tz="UTC") + pd.Timedelta(hours=2)).isoformat()
    written = client.post("/jobs", json={"upsert": [posting("n1"), posting("n2", posted_at=ahead)]}, headers=AUTH)
    assert written.status_code == 200
    assert [i["job_id"] for i in client.post("/recommend", json=request).json()["items"]] == ["n1"]
    shown = client.post("/recommend", json={**request, "filters": {**request["filters"], "include_expired": True}})
    assert sorted(i["job_id"] for i in shown.json()["items"]) == ["n1", "n2"]
    assert client.get("/jobs/n2").json()["posted_at"] == pd.Timestamp(ahead).isoformat()


def test_a_job_id_holding_a_slash_is_read_back(service):
    """``GET /jobs/{id}`` routed "ats/42" nowhere (the router's own 404), so such a posted job was write-only."""
    client, _, _, _ = service
    assert client.post("/jobs", json={"upsert": [posting("ats/42")]}, headers=AUTH).status_code == 200
    assert client.get("/jobs/ats%2F42").json()["job_id"] == "ats/42" == client.get("/jobs/ats/42").json()["job_id"]


def test_a_blank_job_id_in_an_older_delta_is_left_out(tiny, tmp_path):
    store = CatalogStore(tmp_path / "live")
    store.root.mkdir(parents=True)
    (store.root / "000001.json").write_text(Delta(1, 1, ({"job_id": "", "title": "blank", "posted_at": 1},
                                                         {"job_id": "n1", "title": "x", "posted_at": 1})).to_text("old"))
    with pytest.raises(ValueError, match="must not be blank"):
        store.append([{"job_id": " ", "posted_at": 1}])
    slot = ModelSlot(tiny.entry)
    assert slot.load()["ok"]
    client = TestClient(build_http_app(LocalBackend(slot, store.root.parent)), base_url="http://localhost")
    answer = client.post("/recommend", json={"user_id": slot.current.extractor.user_ids[1], "k": 5})
    assert answer.status_code == 200 and len(answer.json()["items"]) == 5  # 500 for every model answer before
    assert "n1" in slot.current.extractor.job_rows and "" not in slot.current.extractor.job_ids[1:]


def test_an_upsert_of_a_jobs_own_posting_keeps_its_posting_time_and_expiry(service):
    """A salary change (or a daily re-sync of the board's file) leaves a job's age and closing as they were:
    without ``posted_at``, or with the one it has, a job the catalog holds keeps its posting time and, without
    ``expires_at``, its expiry (an ``expire`` included), the model's own jobs too; a new job is posted when
    written and closes ``job_lifetime_days`` (30) after it."""
    client, _, slot, _ = service
    now = pd.Timestamp.now(tz="UTC")
    ten_days_ago = (now - pd.Timedelta(days=10)).floor("s")
    client.post("/jobs", json={"upsert": [posting("n1", posted_at=ten_days_ago.isoformat()), posting("n2")]},
                headers=AUTH)
    model_job = slot.current.extractor.job_ids[1]
    before = client.get(f"/jobs/{model_job}", headers=AUTH).json()
    client.post("/jobs", json={"upsert": [posting("n1", salary_max=120000), posting(model_job)]}, headers=AUTH)
    edited = client.get("/jobs/n1", headers=AUTH).json()
    assert edited["salary_max"] == 120000 and pd.Timestamp(edited["posted_at"]) == ten_days_ago
    assert pd.Timestamp(edited["expires_at"]) == ten_days_ago + pd.Timedelta(days=30)
    after = client.get(f"/jobs/{model_job}", headers=AUTH).json()
    assert (after["posted_at"], after["expires_at"]) == (before["posted_at"], before["expires_at"])
    new = client.get("/jobs/n2", headers=AUTH).json()
    assert abs(pd.Timestamp(new["posted_at"]) - now) < pd.Timedelta(minutes=5)
    assert pd.Timestamp(new["expires_at"]) - pd.Timestamp(new["posted_at"]) == pd.Timedelta(days=30)
    client.post("/jobs", json={"expire": ["n1"]}, headers=AUTH)
    for again in (posting("n1"), posting("n1", posted_at=ten_days_ago.isoformat())):  # a re-sync, with or
        client.post("/jobs", json={"upsert": [again]}, headers=AUTH)  # without the posting time it has
        assert client.get("/jobs/n1", headers=AUTH).json()["expired"]  # leaves it closed
    closed = posting("n3", expires_at=(now - pd.Timedelta(days=1)).isoformat())  # an export's closed job
    assert client.post("/jobs", json={"upsert": [closed]}, headers=AUTH).status_code == 200
    detail = client.get("/jobs/n3", headers=AUTH).json()
    assert detail["expired"] and detail["posted_at"] is None  # no posting after its close
