"""The FastAPI layer without Ray (LocalBackend): auth, body limits, 503 before load, error shapes."""
from __future__ import annotations

import hashlib
import json
import warnings

import pytest

with warnings.catch_warnings():  # starlette's note about its httpx-based TestClient
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from serve.http import LocalBackend, build_http_app
from serve.model_slot import ModelSlot

pytestmark = pytest.mark.timeout(60)
KEY = "local-key-0123456789"


@pytest.fixture(scope="module")
def slot(tiny) -> ModelSlot:
    slot = ModelSlot(tiny.entry)
    assert slot.load()["ok"]
    return slot


def client(slot: ModelSlot, **options) -> TestClient:
    return TestClient(build_http_app(LocalBackend(slot), **options), base_url="http://localhost")


def test_auth_all_guards_everything_but_health_and_docs(slot):
    c = client(slot, api_key_digest=hashlib.sha256(KEY.encode()).hexdigest(), auth_all=True)
    body = {"user_id": "someone", "k": 2}
    assert c.post("/recommend", json=body).status_code == 401
    assert c.post("/recommend", json=body, headers={"X-API-Key": KEY + "x"}).status_code == 403
    assert c.post("/recommend", json=body, headers={"X-API-Key": KEY}).status_code == 200
    assert c.get("/model").status_code == 401 and c.get("/jobs/j000001").status_code == 401
    assert c.get("/healthz").status_code == 200 and c.get("/docs").status_code == 200
    schemes = c.get("/openapi.json").json()["components"]["securitySchemes"]
    assert schemes["APIKeyHeader"]["name"] == "X-API-Key"


def test_admin_is_off_without_a_configured_key(slot):
    response = client(slot).post("/admin/reload", json={}, headers={"X-API-Key": "anything"})
    assert response.status_code == 403 and "disabled" in response.json()["detail"]
    assert client(slot).post("/recommend", json={"user_id": "someone"}).status_code == 200


def test_bodies_over_the_limit_are_413_with_or_without_content_length(slot):
    c = client(slot, max_body_bytes=2048)
    big = {"user_id": "u", "job_ids": [f"job-{i:06d}" for i in range(400)]}
    assert c.post("/score", json=big).status_code == 413

    def chunks():
        yield b'{"user_id": "u", "job_ids": ['
        for i in range(400):
            yield b'"job-%06d",' % i
        yield b'"x"]}'

    response = c.post("/score", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413 and "2048" in response.json()["detail"]
    assert c.post("/score", json={"user_id": "u", "job_ids": ["x"]}).status_code == 200


def test_before_the_model_is_loaded_health_and_requests_are_503(tmp_path):
    c = client(ModelSlot(tmp_path / "not-yet"))
    assert c.get("/healthz").status_code == 503 and c.get("/healthz").json()["status"] == "loading"
    response = c.post("/recommend", json={"user_id": "u"})
    assert response.status_code == 503 and response.json()["detail"] == "model is loading"


def test_malformed_json_is_422_not_500(slot):
    response = client(slot).post("/recommend", content=b'{"user_id": ', headers={"content-type": "application/json"})
    assert response.status_code == 422 and response.json()["message"] == "body is not valid JSON"


@pytest.mark.parametrize("body, message", [
    (b'{"user_id": "caf\xe9"}', "body is not valid JSON: not valid UTF-8"),
    (b'{"user_id": ' + b"9" * 5000 + b"}", "body is not valid JSON: Exceeds the limit (4300 digits)"),
    (b'{"user_id": ' + b"[" * 20_000 + b"]" * 20_000 + b"}", "body is not valid JSON: nested too deeply"),
    (b'{"user_id": "u", "\\ud800": 1}', "body: Input should be a valid string"),
])
def test_undecodable_bodies_are_422_not_an_undocumented_400(tmp_path, body, message):
    """Found by fuzzing: FastAPI answered 400 (not in the schema) for bodies json.loads rejects with a
    ValueError (non-UTF-8 bytes, 5000-digit integers) or a RecursionError."""
    response = client(ModelSlot(tmp_path)).post("/recommend", content=body,
                                                headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    assert response.json()["message"].startswith(message) and response.json()["detail"][0]["loc"] == ["body"]


EVENT = b'{"event_id": "e1", "type": "click", "user_id": "u", "job_id": "j1", "timestamp": 1764979200}'


@pytest.mark.parametrize("path, body, message, loc", [
    ("/recommend", b'{"user_id": "u000010", "user_id": "u000011"}', "body: key 'user_id' given twice", ["body"]),
    ("/recommend", b'{"user_id": "u", "filters": {"location": "Berlin", "job_type": "x", "location": "Paris"}}',
     "filters: key 'location' given twice", ["body", "filters"]),
    ("/recommend", b'{"profile": {"skills": ["a"], "extra": {"tags": [{"k": 1, "k": 2}]}}}',
     "profile.extra.tags.0: key 'k' given twice", ["body", "profile", "extra", "tags", "0"]),
    ("/score", b'{"user_id": "u", "job_ids": ["j1"], "job_ids": ["j2"]}', "body: key 'job_ids' given twice", ["body"]),
    ("/events", b'{"events": [' + EVENT + b", " + EVENT[:-1] + b', "type": "apply"}]}',
     "events.1: key 'type' given twice", ["body", "events", "1"]),
    ("/jobs", b'{"expire": ["j1"], "upsert": [{"job_id": "n1", "title": "a", "title": "b"}]}',
     "upsert.0: key 'title' given twice", ["body", "upsert", "0"]),
    ("/admin/reload", b'{"version": "v0001", "version": "v0002"}', "body: key 'version' given twice", ["body"]),
], ids=["recommend", "nested", "deep", "score", "events", "jobs", "reload"])
def test_a_key_given_twice_in_a_body_is_422_naming_it(slot, path, body, message, loc):
    """json.loads keeps the last of two equal keys, so {"user_id": "a", "user_id": "b"} answered for "b"; requests
    are strict: the same key twice in one object is refused, wherever it is."""
    keyed = client(slot, api_key_digest=hashlib.sha256(KEY.encode()).hexdigest())
    response = keyed.post(path, content=body, headers={"content-type": "application/json", "X-API-Key": KEY})
    assert response.status_code == 422, response.text
    assert response.json() == {"message": message, "detail": [{"loc": loc, "msg": message.split(": ", 1)[1],
                                                                "type": "value_error"}]}


def test_equal_keys_in_different_objects_are_fine(slot):
    body = {"user_id": "u", "profile": {"location": "Berlin"}, "filters": {"location": "Berlin"}}
    assert client(slot).post("/recommend", json=body).status_code == 200


@pytest.mark.parametrize("path, body, message", [
    ("/recommend", {"user_id": "\ud800"}, "user_id: Value error, not valid Unicode text: a lone surrogate (U+D800)"),
    ("/recommend", {"history": ["j1", "j\udc00"]}, "history.1: Value error, not valid Unicode text"),
    ("/recommend", {"profile": {"skills": ["\ud800"]}}, "profile.skills.0: Value error, not valid Unicode text"),
    ("/recommend", {"profile": {"skills": ["python;sql"]}},
     "profile.skills.0: Value error, a skill cannot contain ';'"),
    ("/recommend", {"user_id": "u", "filters": {"location": "\ud800"}}, "filters.location: Value error, not valid"),
    ("/score", {"user_id": "u", "job_ids": ["\ud800"]}, "job_ids.0: Value error, not valid Unicode text"),
    ("/events", {"events": [{"event_id": "e1", "type": "click", "user_id": "\udc00", "job_id": "j1",
                             "timestamp": "2026-12-06T01:00:00Z"}]},
     "events.0.user_id: Value error, not valid Unicode"),
])
def test_text_that_is_not_valid_unicode_is_422_not_500(slot, path, body, message):
    """A lone UTF-16 surrogate, which JSON can carry and no UTF-8 file holds: /recommend and /score failed to
    write the answer (500), after the impression was buffered (the next flush then failed, dropping the valid
    impressions beside it); /events answered 500."""
    escaped = json.dumps(body).encode()  # "\\ud800" as JSON text: httpx's json= cannot encode the str itself
    keyed = client(slot, api_key_digest=hashlib.sha256(KEY.encode()).hexdigest())  # /events takes writes
    response = keyed.post(path, content=escaped, headers={"content-type": "application/json", "X-API-Key": KEY})
    assert response.status_code == 422, response.text
    assert response.json()["message"].startswith(message), response.json()["message"]


def test_a_body_sent_as_another_content_type_is_named(slot):
    response = client(slot).post("/recommend", content=b"user_id=u", headers={"content-type": "text/plain"})
    assert response.status_code == 422
    assert response.json()["message"] == "body must be JSON sent as Content-Type: application/json, got 'text/plain'"
    blank = client(slot).post("/recommend", json={"user_id": "u", "filters": {"location": "  "}})  # matched nothing
    assert blank.status_code == 422 and blank.json()["message"].startswith("filters.location: ")
    nan = client(slot).post("/recommend", content=b'{"user_id": "u", "filters": {"salary_min": NaN}}',
                            headers={"content-type": "application/json"})
    assert nan.json()["message"] == "filters.salary_min: Input should be a finite number"  # read "<= 1e9" before


def test_health_answers_head_and_job_ids_may_hold_a_slash(slot):
    c = client(slot)
    assert c.head("/healthz").status_code == 200  # load balancers' health checks may send HEAD
    job_id = slot.current.extractor.job_ids[1]
    assert c.get(f"/jobs/%20{job_id}").json()["job_id"] == job_id  # outer spaces cut, as in bodies
    missing = c.get("/jobs/a%2Fb")  # the route's own 404 was {"detail": "Not Found"}
    assert missing.status_code == 404 and missing.json()["detail"] == "unknown job id 'a/b'"


def test_service_422_has_the_validation_error_shape():
    """A request the model cannot honour (a filter on a column it lacks) answers like any other 422."""
    from serve.replies import ServiceError

    class NoLocation(LocalBackend):
        async def recommend(self, request):
            raise ServiceError(422, "filters.location: this model's jobs have no location column")

    response = TestClient(build_http_app(NoLocation(None)), base_url="http://localhost").post(
        "/recommend", json={"user_id": "u"})
    assert response.status_code == 422
    assert response.json() == {"message": "filters.location: this model's jobs have no location column", "detail": [
        {"loc": ["body", "filters", "location"], "msg": "filters.location: this model's jobs have no location column",
         "type": "value_error"}]}


def test_every_error_status_is_in_the_schema():
    paths = build_http_app(LocalBackend(None), auth_all=True).openapi()["paths"]
    declared = {(method.upper(), path): set(op["responses"])
                for path, ops in paths.items() for method, op in ops.items()}
    assert declared[("GET", "/jobs/{job_id}")] >= {"200", "401", "403", "404", "422", "503", "504"}
    assert declared[("POST", "/recommend")] >= {"200", "401", "403", "413", "422", "503", "504"}
    assert declared[("POST", "/admin/reload")] >= {"200", "401", "403", "409", "413", "422"}
    assert declared[("GET", "/healthz")] == {"200", "503"}


def test_the_schema_says_times_are_iso_text_or_epoch_seconds():
    schemas = build_http_app(LocalBackend(None)).openapi()["components"]["schemas"]
    either = [{"type": "string", "format": "date-time"}, {"type": "number", "minimum": 0}]
    assert schemas["Event"]["properties"]["timestamp"]["anyOf"] == either
    for field in ("posted_at", "expires_at"):  # optional: null too
        assert schemas["JobPosting"]["properties"][field]["anyOf"] == [*either, {"type": "null"}]


def test_answers_say_where_the_time_went(slot):
    """Server-Timing: the body's read, the batch's scoring (only on answers that scored) and the total, each
    within the total."""
    from serve.timing import parse

    c = client(slot)
    scored = parse(c.post("/recommend", json={"user_id": "someone", "k": 2}).headers["server-timing"])
    assert list(scored) == ["read", "score", "total"] and 0 < scored["score"] <= scored["total"]
    assert 0 <= scored["read"] <= scored["total"]
    assert list(parse(c.post("/score", json={"user_id": "u", "job_ids": ["j000001"]}).headers["server-timing"])) == [
        "read", "score", "total"]
    invalid = c.post("/recommend", json={"user_id": "someone", "k": 0})
    assert invalid.status_code == 422 and list(parse(invalid.headers["server-timing"])) == ["read", "total"]
    assert list(parse(c.get("/healthz").headers["server-timing"])) == ["total"]
    assert client(slot).get("/healthz", headers={"Host": "evil.example"}).headers["server-timing"].startswith("total;")
