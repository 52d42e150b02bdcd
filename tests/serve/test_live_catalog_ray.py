"""The live catalog end to end on Ray Serve (2 Ranker replicas, real HTTP on 127.0.0.1): a job added with
``POST /jobs`` comes back from ``/recommend`` under a filter that matches it on every replica, and after its
replica is killed and replaced, the new replica (started later, from the store) still has it."""
from __future__ import annotations

import os
import shutil

import httpx
import pytest
import ray

from convfm.cli.serve import free_port
from serve.config import ServeConfig

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
KEY = "ray-live-key-0123456789"
KEY_ENV = "CONVFM_TEST_LIVE_KEY"
JOB = {"job_id": "live-1", "title": "Underwater Data Engineer", "skills": ["python", "sql"],
       "location": "Atlantis", "company": "Deep Co", "job_type": "full_time", "salary_min": 70000}


def rankers() -> list[str]:
    return sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                  if a["namespace"] == "serve" and a["name"].startswith("SERVE_REPLICA::convfm#Ranker#"))


def wait_until(predicate, timeout_s: float, what: str):
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.3)
    raise AssertionError(f"not {what} after {timeout_s:.0f}s")


@pytest.fixture(scope="module")
def client(tiny, ray_local, tmp_path_factory):
    from ray import serve

    from serve.app import APP_NAME, build_app

    registry = tmp_path_factory.mktemp("live_ray") / "registry"
    shutil.copytree(tiny.registry, registry)
    os.environ[KEY_ENV] = KEY
    port = free_port()
    config = ServeConfig(model=str(registry / "tiny"), port=port, replicas=2, num_cpus=0.5, api_key_env=KEY_ENV)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(config), name=APP_NAME, route_prefix="/")
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
        wait_until(lambda: all(client.get("/healthz").status_code == 200 for _ in range(8)), 120, "healthy")
        yield client
    serve.shutdown()
    os.environ.pop(KEY_ENV, None)


def test_a_posted_job_is_recommended_on_every_replica_and_survives_a_replica_restart(client, tiny):
    ask = {"user_id": tiny.data.extractor.user_ids[1], "k": 5, "filters": {"location": "Atlantis"}}
    assert client.post("/recommend", json=ask).json()["items"] == []
    assert client.post("/jobs", json={"upsert": [JOB]}).status_code == 401
    written = client.post("/jobs", json={"upsert": [JOB]}, headers={"X-API-Key": KEY})
    assert written.status_code == 200 and written.json()["catalog_version"] == 1
    for _ in range(8):  # requests spread over both replicas: each applies version 1 before it answers
        answer = client.post("/recommend", json=ask).json()
        assert [i["job_id"] for i in answer["items"]] == ["live-1"] and answer["catalog_version"] == 1
    victim = rankers()[0]
    ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
    wait_until(lambda: victim not in rankers() and len(rankers()) == 2, 120, "replaced")
    wait_until(lambda: all(client.get("/healthz").status_code == 200 for _ in range(8)), 120, "healthy again")
    for _ in range(8):
        response = client.post("/recommend", json=ask)
        assert response.status_code == 200 and [i["job_id"] for i in response.json()["items"]] == ["live-1"]
    job = client.get("/jobs/live-1").json()
    assert job["title"] == "Underwater Data Engineer" and job["catalog_version"] == 1 and not job["expired"]
