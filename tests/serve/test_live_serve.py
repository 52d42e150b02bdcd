"""The live service end to end on Ray Serve (one app, 2 Ranker replicas, a live store, real HTTP on 127.0.0.1),
in the order a day runs:

- a job added with ``POST /jobs`` comes back from ``/recommend`` under a filter that matches it on every
  replica, and after its replica is killed and replaced, the new replica (started later, from the store) still
  has it;
- N acknowledged feedback events are all in the log after every Ranker replica and the Api are killed,
  ``exclude_seen`` honours them on the replacements, and the restarted Api still knows their ids.

One app serves both (starting one costs ~25 s on a 2-core box)."""
from __future__ import annotations

import shutil
import time
import types

import httpx
import pytest
import ray

from convfm.store.event_log import events_location, impressions_location, read_log
from serve.config import ServeConfig

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
KEY = "live-e2e-key-0123456789"
KEY_ENV = "CONVFM_TEST_LIVE_KEY"
WITH_KEY = {"X-API-Key": KEY}
JOB = {"job_id": "live-1", "title": "Underwater Data Engineer", "skills": ["python", "sql"],
       "location": "Atlantis", "company": "Deep Co", "job_type": "full_time", "salary_min": 70000}
N = 6


def replicas(deployment: str) -> list[str]:
    return sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                  if a["namespace"] == "serve" and a["name"].startswith(f"SERVE_REPLICA::convfm#{deployment}#"))


def wait_until(predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"not {what} after {timeout_s:.0f}s")


@pytest.fixture(scope="module")
def service(tiny, serve_app, tmp_path_factory):
    root = tmp_path_factory.mktemp("live_serve")
    shutil.copytree(tiny.registry, root / "registry")
    with pytest.MonkeyPatch.context() as patch:  # the key's variable, removed again after the module
        patch.setenv(KEY_ENV, KEY)
        config = ServeConfig(model=str(root / "registry" / "tiny"), replicas=2, num_cpus=0.5, max_batch_size=8,
                             api_key_env=KEY_ENV, live_store=str(root / "live"))
        with serve_app(config) as url, httpx.Client(base_url=url, timeout=60) as client:
            healthy = lambda: all(client.get("/healthz").status_code == 200 for _ in range(8))  # noqa: E731
            wait_until(healthy, 120, "healthy")
            yield types.SimpleNamespace(client=client, healthy=healthy, live=root / "live")


def test_a_posted_job_is_recommended_on_every_replica_and_survives_a_replica_restart(service, tiny):
    client = service.client
    ask = {"user_id": tiny.data.extractor.user_ids[1], "k": 5, "filters": {"location": "Atlantis"}}
    assert client.post("/recommend", json=ask).json()["items"] == []
    assert client.post("/jobs", json={"upsert": [JOB]}).status_code == 401
    written = client.post("/jobs", json={"upsert": [JOB]}, headers=WITH_KEY)
    assert written.status_code == 200 and written.json()["catalog_version"] == 1
    event = {"event_id": "fresh", "type": "click", "user_id": "fresh-user", "job_id": "live-1",
             "timestamp": time.time()}  # before any replica answered a request of version 1
    assert client.post("/events", json={"events": [event]}, headers=WITH_KEY).json()["unknown_jobs"] == []
    for _ in range(8):  # requests spread over both replicas: each applies version 1 before it answers
        answer = client.post("/recommend", json=ask).json()
        assert [i["job_id"] for i in answer["items"]] == ["live-1"] and answer["catalog_version"] == 1
    victim = replicas("Ranker")[0]
    ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
    wait_until(lambda: victim not in replicas("Ranker") and len(replicas("Ranker")) == 2, 120, "replaced")
    wait_until(service.healthy, 120, "healthy again")
    for _ in range(8):
        response = client.post("/recommend", json=ask)
        assert response.status_code == 200 and [i["job_id"] for i in response.json()["items"]] == ["live-1"]
    job = client.get("/jobs/live-1").json()
    assert job["title"] == "Underwater Data Engineer" and job["catalog_version"] == 1 and not job["expired"]
    body = {"upsert": [{**JOB, "extra": {"sector": "x"}}], "expire": ["no-such-job"]}  # live-1 again, as it was
    unknown = client.post("/jobs", json=body, headers=WITH_KEY).json()
    assert unknown == {"catalog_version": 2, "upserted": 1, "expired": 0, "unknown_expire": ["no-such-job"],
                       "unread_extra": ["sector"]}  # the replicas' model reads no extra column


def test_acknowledged_events_survive_killed_replicas_and_count_on_the_new_ones(service, tiny):
    client = service.client
    user = tiny.data.frames["train"]["user_id"].value_counts().index[0]

    def top(k: int = N) -> list[str]:
        response = client.post("/recommend", json={"user_id": user, "k": k})
        assert response.status_code == 200, response.text
        return [i["job_id"] for i in response.json()["items"]]

    shown = top()
    for i, job in enumerate(shown):  # N POSTs, each acknowledged only once its segment is written
        body = {"events": [{"event_id": f"e{i}", "type": ("view", "click", "dismiss")[i % 3], "user_id": user,
                            "job_id": job, "timestamp": time.time()}]}
        response = client.post("/events", json=body, headers=WITH_KEY)
        assert response.status_code == 200 and response.json()["accepted"] == 1, response.text
        assert not set(shown[: i + 1]) & set(top(20))  # counts at once, whichever replica answers
    unknown = client.post("/events", headers=WITH_KEY, json={"events": [{
        "event_id": "odd", "type": "click", "user_id": user, "job_id": "no-such-job", "timestamp": time.time()}]})
    assert unknown.json()["unknown_jobs"] == ["no-such-job"]

    killed = replicas("Ranker") + replicas("Api")
    assert len(killed) == 3
    for name in killed:
        ray.kill(ray.get_actor(name, namespace="serve"), no_restart=True)
    wait_until(lambda: len(set(replicas("Ranker")) - set(killed)) == 2 and len(replicas("Api")) == 1
               and service.healthy(), 180, "replaced")

    segments = list(read_log(events_location(service.live)))
    records = [r for _, segment in segments for r in segment if r["user_id"] == user]
    assert [r["event_id"] for r in records] == [f"e{i}" for i in range(N)] + ["odd"]
    first_event = next(name for name, segment in segments if any(r["user_id"] == user for r in segment))
    impressions = read_log(impressions_location(events_location(service.live)))
    assert any(name < first_event and any(r["job_ids"] == shown for r in segment)
               for name, segment in impressions)  # written first (segment names sort in write order)
    assert [r["known_job"] for r in records] == [True] * N + [False]
    for _ in range(10):  # both new replicas: they read the log they never received a broadcast of
        assert not set(shown) & set(top(20))
    again = client.post("/events", headers=WITH_KEY, json={"events": [{
        "event_id": "e0", "type": "view", "user_id": user, "job_id": shown[0], "timestamp": time.time()}]})
    assert again.status_code == 200 and again.json()["duplicates"] == ["e0"]  # the new Api read the ids back
