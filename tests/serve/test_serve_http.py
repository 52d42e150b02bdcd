"""End to end over real HTTP: the Ray Serve app on 127.0.0.1 (a free port), one app for the whole module."""
from __future__ import annotations

import shutil
import time
import types
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from convfm.store.registry import publish, resolve
from serve.config import ServeConfig

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]
API_KEY = "test-key-0123456789abcdef"
KEY_ENV = "CONVFM_TEST_SERVE_KEY"


@pytest.fixture(scope="module")
def service(tiny, serve_app, tmp_path_factory):
    registry = tmp_path_factory.mktemp("serve_http") / "registry"
    shutil.copytree(tiny.registry, registry)  # reload tests publish into it
    with pytest.MonkeyPatch.context() as patch:  # the key's variable, removed again after the module
        patch.setenv(KEY_ENV, API_KEY)
        config = ServeConfig(model=str(registry / "tiny"), num_cpus=0.5, max_batch_size=8, batch_wait_timeout_s=0.05,
                             api_key_env=KEY_ENV)
        with serve_app(config) as url, httpx.Client(base_url=url, timeout=60) as client:
            statuses, deadline = [], time.monotonic() + 90
            while time.monotonic() < deadline:
                response = client.get("/healthz")
                statuses.append((response.status_code, response.json()))
                if response.status_code == 200:
                    break
                time.sleep(0.2)
            yield types.SimpleNamespace(client=client, statuses=statuses, entry=registry / "tiny", data=tiny.data)


def seen_jobs(data, user: str) -> set[str]:
    """The jobs ``user`` interacted with (never their sampled negatives: those were not shown)."""
    return set(data.seen.loc[data.seen["user_id"] == user, "job_id"])


def busiest_user(data) -> str:
    return data.frames["train"]["user_id"].value_counts().index[0]


def recommend(service, **body) -> dict:
    response = service.client.post("/recommend", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def test_health_goes_ready_after_load(service):
    status, body = service.statuses[-1]
    assert status == 200 and body == {"status": "ok", "model": "tiny", "version": "v0001"}
    assert all(s == 503 and b["status"] in ("loading", "starting") for s, b in service.statuses[:-1])
    assert service.client.get("/docs").status_code == 200
    assert "/recommend" in service.client.get("/openapi.json").json()["paths"]


def test_one_replica_serves_http_and_scores_in_one_deployment(service):
    """No Ranker deployment behind the ingress (serve.in_process); the model info still reports its batches and
    its torch threads (Ray's: one for a replica of under 2 CPUs, docs/SERVING.md "Threads per replica")."""
    from ray import serve

    from serve.app import APP_NAME

    assert set(serve.status().applications[APP_NAME].deployments) == {"Api"}
    recommend(service, user_id="no-such-user", k=1)
    info = service.client.get("/model").json()
    assert info["batching"]["requests"] >= 1
    assert info["torch_threads"] == 1  # num_cpus 0.5 (and the tests' OMP_NUM_THREADS)


def test_answers_carry_server_timing_through_serve(service):
    """Behind Serve's proxy the answer still says how long the replica read, scored and took in all."""
    from serve.timing import parse

    response = service.client.post("/recommend", json={"user_id": busiest_user(service.data), "k": 3})
    spans = parse(response.headers["server-timing"])
    assert response.status_code == 200 and list(spans) == ["read", "score", "total"]
    assert 0 < spans["score"] <= spans["total"] and 0 <= spans["read"] <= spans["total"]


def test_recommend_for_a_known_user(service):
    user = busiest_user(service.data)
    body = recommend(service, user_id=user, k=5, explain=True)
    assert body["user_id"] == user and body["model_version"] == "v0001"
    assert body["fallback"] is None and body["cold_start"] is False
    items = body["items"]
    assert len(items) == 5 and len({i["job_id"] for i in items}) == 5
    assert all(i["title"] and i["company"] and i["location"] and 0 < i["score"] < 1 and i["why"] for i in items)
    assert [i["score"] for i in items] == sorted((i["score"] for i in items), reverse=True)
    user_fields = {f.name for f in service.data.extractor.feature_map.of_side("user").fields}
    assert all(x["user_field"] in user_fields for i in items for x in i["explanation"]["interactions"])


def test_exclude_seen_excludes(service):
    user = busiest_user(service.data)
    seen = seen_jobs(service.data, user)
    with_seen = [i["job_id"] for i in recommend(service, user_id=user, k=100, exclude_seen=False)["items"]]
    without = [i["job_id"] for i in recommend(service, user_id=user, k=100)["items"]]
    assert set(with_seen) & seen, "the check needs a seen job among the user's top 100"
    assert not set(without) & seen
    unseen_order = [j for j in with_seen if j not in seen]
    assert without[: len(unseen_order)] == unseen_order


def test_cold_start_profile(service):
    body = recommend(service, profile={"skills": ["Python", "sql", "docker"], "location": "Remote"}, k=4, explain=True)
    assert body["cold_start"] is True and body["fallback"] is None and len(body["items"]) == 4
    for item in body["items"]:
        assert set(item["explanation"]["matching_skills"]) <= {"python", "sql", "docker"}


def test_unknown_user_gets_popular_jobs_flagged(service):
    body = recommend(service, user_id="no-such-user", k=3)
    assert body["fallback"] == "popular" and body["cold_start"] is False and len(body["items"]) == 3
    assert [i["score"] for i in body["items"]] == sorted((i["score"] for i in body["items"]), reverse=True)


@pytest.mark.parametrize("who", ["known", "unknown"])
def test_filters_really_filter(service, who):
    user = busiest_user(service.data) if who == "known" else "no-such-user"
    body = recommend(service, user_id=user, k=50,
                     filters={"location": "REMOTE", "job_type": "full_time", "salary_min": 100000})
    assert body["items"], "the synthetic market has remote full-time jobs paying 100k+"
    for item in body["items"]:
        assert item["location"].lower() == "remote" and item["job_type"] == "full_time"
        assert max(item["salary_min"] or 0, item["salary_max"] or 0) >= 100000
    assert recommend(service, user_id=user, filters={"location": "Atlantis"})["items"] == []


@pytest.mark.parametrize("path,body,field", [
    ("/recommend", {"user_id": "u", "k": 0}, "k"),
    ("/recommend", {"user_id": "u", "k": 1000}, "k"),
    ("/recommend", {"k": 5}, "user_id, profile or history"),
    ("/recommend", {"user_id": "u", "k": "ten"}, "k"),
    ("/recommend", {"user_id": ["u"]}, "user_id"),
    ("/recommend", {"user_id": "u", "filters": {"salary_min": "lots"}}, "filters.salary_min"),
    ("/recommend", {"user_id": "u", "filter": {}}, "filter"),
    ("/recommend", {"profile": {}}, "profile"),
    ("/score", {"user_id": "u", "job_ids": [f"j{i}" for i in range(1001)]}, "job_ids"),
    ("/score", {"user_id": "u", "job_ids": []}, "job_ids"),
])
def test_bad_bodies_are_422_with_a_useful_message(service, path, body, field):
    response = service.client.post(path, json=body)
    assert response.status_code == 422, response.text
    assert field in response.json()["message"]


def test_a_key_given_twice_is_422(service):
    response = service.client.post("/recommend", content=b'{"user_id": "u000010", "user_id": "u000011"}',
                                   headers={"content-type": "application/json"})
    assert response.status_code == 422 and response.json()["message"] == "body: key 'user_id' given twice"


def test_body_over_the_limit_is_413(service):
    response = service.client.post("/score", content=b" " * 300_000, headers={"content-type": "application/json"})
    assert response.status_code == 413


def test_jobs_endpoint(service):
    job_id = service.data.extractor.job_ids[1]
    assert service.client.get(f"/jobs/{job_id}").json()["job_id"] == job_id
    response = service.client.get("/jobs/no-such-job")
    assert response.status_code == 404 and "no-such-job" in response.json()["detail"]


def test_score_keeps_request_order_and_reports_unknown_ids(service):
    ids = service.data.extractor.job_ids
    body = service.client.post("/score", json={"user_id": busiest_user(service.data),
                                               "job_ids": [ids[3], "nope", ids[1], 12345]}).json()
    assert [s["job_id"] for s in body["scores"]] == [ids[3], "nope", ids[1], "12345"]
    assert body["scores"][1]["score"] is None and body["scores"][0]["score"] is not None
    assert body["unknown_job_ids"] == ["nope", "12345"]


def test_batched_scoring_equals_unbatched(service):
    users = list(service.data.frames["train"]["user_id"].unique()[:12])
    job_ids = service.data.extractor.job_ids[1:41]
    bodies = [{"user_id": u, "job_ids": job_ids[i:] + job_ids[:i]} for i, u in enumerate(users)]
    bodies.append({"profile": {"skills": ["python"]}, "job_ids": job_ids})

    def post(body: dict) -> dict:
        return service.client.post("/score", json=body).json()

    alone = [post(b) for b in bodies]
    with ThreadPoolExecutor(len(bodies)) as pool:
        together = list(pool.map(post, bodies))
    assert service.client.get("/model").json()["batching"]["largest_batch"] > 1
    for a, b in zip(alone, together):
        assert [s["job_id"] for s in a["scores"]] == [s["job_id"] for s in b["scores"]]
        assert [s["score"] for s in a["scores"]] == pytest.approx([s["score"] for s in b["scores"]], abs=1e-6)


def test_admin_reload_needs_the_api_key(service):
    assert service.client.post("/admin/reload", json={}).status_code == 401
    assert service.client.post("/admin/reload", json={}, headers={"X-API-Key": "wrong"}).status_code == 403


def test_reload_to_a_broken_version_keeps_the_old_one(service, break_version):
    version = break_version(service.entry)
    response = service.client.post("/admin/reload", json={"version": version}, headers={"X-API-Key": API_KEY})
    assert response.status_code == 409
    body = response.json()
    assert body["ok"] is False and body["version"] == "v0001" and "weights.pt" in body["error"]
    model = service.client.get("/model").json()
    assert model["version"] == "v0001" and model["last_reload"]["ok"] is False
    assert recommend(service, user_id="no-such-user", k=1)["model_version"] == "v0001"
    assert service.client.get("/healthz").status_code == 200


def test_reload_to_a_good_version_switches(service):
    latest = resolve(service.entry)
    copy = service.entry.parent.parent / "good-copy"
    shutil.copytree(latest, copy)
    version = publish(copy, service.entry.parent, "tiny").name
    response = service.client.post("/admin/reload", json={}, headers={"X-API-Key": API_KEY})
    assert response.status_code == 200, response.text
    assert response.json()["version"] == version and response.json()["previous_version"] == "v0001"
    assert service.client.get("/model").json()["version"] == version
    assert recommend(service, user_id="no-such-user", k=1)["model_version"] == version
