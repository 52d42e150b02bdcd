"""Feedback events end to end on Ray Serve (2 Ranker replicas, real HTTP): N acknowledged events are all in the
log after every Ranker replica and the Api are killed, ``exclude_seen`` honours them on the replacements, and
the restarted Api still knows their ids."""
from __future__ import annotations

import os
import shutil
import time

import httpx
import pytest

from convfm.cli.serve import free_port
from convfm.store.event_log import events_location, is_event, read_log
from serve.config import ServeConfig

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
KEY = "events-e2e-key-0123456789"
KEY_ENV = "CONVFM_TEST_EVENTS_KEY"
N = 6


def replicas(deployment: str) -> list[str]:
    import ray

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


def test_acknowledged_events_survive_killed_replicas_and_count_on_the_new_ones(tiny, ray_local, tmp_path):
    import ray
    from ray import serve

    from serve.app import APP_NAME, build_app

    registry = tmp_path / "registry"
    shutil.copytree(tiny.registry, registry)
    live = tmp_path / "live"
    os.environ[KEY_ENV] = KEY
    port = free_port()
    config = ServeConfig(model=str(registry / "tiny"), port=port, replicas=2, num_cpus=0.5, max_batch_size=8,
                         api_key_env=KEY_ENV, live_store=str(live))
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(config), name=APP_NAME, route_prefix="/")
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"X-API-Key": KEY}, timeout=60)
    try:
        healthy = lambda: all(client.get("/healthz").status_code == 200 for _ in range(8))  # noqa: E731
        wait_until(healthy, 120, "healthy")
        user = tiny.data.frames["train"]["user_id"].value_counts().index[0]

        def top(k: int = N) -> list[str]:
            response = client.post("/recommend", json={"user_id": user, "k": k})
            assert response.status_code == 200, response.text
            return [i["job_id"] for i in response.json()["items"]]

        shown = top()
        for i, job in enumerate(shown):  # N POSTs, each acknowledged only once its segment is written
            body = {"events": [{"event_id": f"e{i}", "type": ("view", "click", "dismiss")[i % 3], "user_id": user,
                                "job_id": job, "timestamp": time.time()}]}
            response = client.post("/events", json=body)
            assert response.status_code == 200 and response.json()["accepted"] == 1, response.text
            assert not set(shown[: i + 1]) & set(top(20))  # counts at once, whichever replica answers
        unknown = client.post("/events", json={"events": [{"event_id": "odd", "type": "click", "user_id": user,
                                                           "job_id": "no-such-job", "timestamp": time.time()}]})
        assert unknown.json()["unknown_jobs"] == ["no-such-job"]

        killed = replicas("Ranker") + replicas("Api")
        assert len(killed) == 3
        for name in killed:
            ray.kill(ray.get_actor(name, namespace="serve"), no_restart=True)
        wait_until(lambda: len(set(replicas("Ranker")) - set(killed)) == 2 and len(replicas("Api")) == 1
                   and healthy(), 180, "replaced")

        logged = [r for _, segment in read_log(events_location(live)) for r in segment]
        records = [r for r in logged if is_event(r)]
        assert [r["event_id"] for r in records] == [f"e{i}" for i in range(N)] + ["odd"]
        assert logged[0]["type"] == "impression" and logged[0]["job_ids"] == shown  # flushed before e0
        assert [r["known_job"] for r in records] == [True] * N + [False]
        for _ in range(10):  # both new replicas: they read the log they never received a broadcast of
            assert not set(shown) & set(top(20))
        again = client.post("/events", json={"events": [{"event_id": "e0", "type": "view", "user_id": user,
                                                         "job_id": shown[0], "timestamp": time.time()}]})
        assert again.status_code == 200 and again.json()["duplicates"] == ["e0"]  # the new Api read the ids back
    finally:
        client.close()
        serve.shutdown()
        os.environ.pop(KEY_ENV, None)
