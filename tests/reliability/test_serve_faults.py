"""The Ray Serve app under faults and load, over real HTTP on 127.0.0.1 (one app, 2 Ranker replicas).

- A smaller schemathesis run against the running app (its own /openapi.json): no 5xx, responses as documented.
- A bounded load (300 POST /recommend at concurrency 8) while one Ranker replica actor is killed: the service
  recovers (healthz 200, 2 replicas running, requests succeed again) and the error count is small and printed.
- A failed reload keeps the old model serving (tested in tests/serve/test_serve_http.py; here it is checked
  once more right after the replica replacement, on the new replica set).
"""
from __future__ import annotations

import hashlib
import shutil
import threading
import time
import types
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance, response_schema_conformance, status_code_conformance,
)

from serve.config import ServeConfig
from serve.http import LocalBackend, build_http_app
from serve.model_slot import ModelSlot

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]
KEY = "faults-key-0123456789abcdef"
KEY_ENV = "CONVFM_TEST_FAULTS_KEY"
HEADERS = {"X-API-Key": KEY}
REQUESTS, CONCURRENCY, KILL_AFTER = 300, 8, 60
MAX_ERRORS = 8  # the ingress retries a call that hit the dead replica once; a margin for bad luck
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]

# The schema the Ray app must serve (same builder, same auth settings); the test checks they are equal.
EXPECTED_SCHEMA = build_http_app(LocalBackend(ModelSlot("unused")), api_key_digest=hashlib.sha256(
    KEY.encode()).hexdigest(), auth_all=True).openapi()
schema = schemathesis.openapi.from_dict(EXPECTED_SCHEMA).exclude(path="/admin/reload")  # reloads: tests/serve


def ranker_replicas() -> list[str]:
    """Names of the live Ranker replica actors (from the connected GCS: no State API, no address lookup that
    another Ray on the machine could confuse)."""
    import ray

    return sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                  if a["namespace"] == "serve" and a["name"].startswith("SERVE_REPLICA::convfm#Ranker#"))


def running_rankers() -> int:
    """Ranker replicas Serve itself reports RUNNING (routable; a named actor exists earlier, while starting)."""
    from ray import serve

    from serve.app import APP_NAME

    application = serve.status().applications.get(APP_NAME)
    return 0 if application is None else application.deployments["Ranker"].replica_states.get("RUNNING", 0)


def wait_until(predicate, timeout_s: float, what: str, interval_s: float = 0.3):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"not {what} after {timeout_s:.0f}s")


def all_replicas_loaded(client: httpx.Client) -> bool:
    """healthz is answered by one replica: 8 consecutive 200s cover both replicas with high probability."""
    return all(client.get("/healthz").status_code == 200 for _ in range(8))


@pytest.fixture(scope="module")
def service(tiny, serve_app, tmp_path_factory):
    registry = tmp_path_factory.mktemp("serve_faults") / "registry"
    shutil.copytree(tiny.registry, registry)
    with pytest.MonkeyPatch.context() as patch:  # the key's variable, removed again after the module
        patch.setenv(KEY_ENV, KEY)
        config = ServeConfig(model=str(registry / "tiny"), replicas=2, num_cpus=0.5, max_batch_size=8,
                             batch_wait_timeout_s=0.01, api_key_env=KEY_ENV, auth_all_endpoints=True)
        with serve_app(config) as url, httpx.Client(base_url=url, headers=HEADERS, timeout=60) as client:
            wait_until(lambda: all_replicas_loaded(client), 120, "healthy")
            yield types.SimpleNamespace(url=url, client=client, entry=registry / "tiny",
                                        users=list(tiny.data.extractor.user_rows)[:50])


def test_the_app_serves_the_schema_that_is_fuzzed(service):
    assert service.client.get("/openapi.json").json() == EXPECTED_SCHEMA


@schema.parametrize()
@settings(max_examples=8, derandomize=True, deadline=None, database=None, suppress_health_check=list(HealthCheck))
def test_fuzz_the_running_ray_app(case, service):
    response = case.call(base_url=service.url, headers=HEADERS, timeout=60)
    case.validate_response(response, checks=CHECKS, headers=HEADERS)


def run_load(service, requests: int, on_response=None, until=None) -> tuple[list[int], list[str], float]:
    """``requests`` POST /recommend at ``CONCURRENCY`` (or, with ``until``, as many as it takes until
    ``until()`` is true, at most ``requests``) -> (statuses, error details, seconds); 0: connection error."""
    statuses: list[int] = []
    details: list[str] = []
    stop = threading.Event()

    def one(i: int) -> None:
        if stop.is_set():
            return
        body = {"user_id": service.users[i % len(service.users)], "k": 5}
        try:
            response = service.client.post("/recommend", json=body)
            statuses.append(response.status_code)
            if response.status_code != 200:
                details.append(f"{response.status_code} {response.text[:120]}")
        except httpx.HTTPError as exc:
            statuses.append(0)
            details.append(f"0 {type(exc).__name__}")
        if on_response is not None:
            on_response(len(statuses))
        if until is not None and until():
            stop.set()

    started = time.perf_counter()
    with ThreadPoolExecutor(CONCURRENCY) as pool:
        list(pool.map(one, range(requests)))
    return statuses, details, time.perf_counter() - started


def test_killing_a_replica_under_load_recovers_with_few_errors(service):
    import ray

    replicas = ranker_replicas()
    assert len(replicas) == 2 and running_rankers() == 2, replicas
    victim, lock = replicas[0], threading.Lock()
    killed_at: list[float] = []

    def kill_once(count: int) -> None:
        with lock:
            if count >= KILL_AFTER and not killed_at:
                killed_at.append(time.monotonic())
                ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)

    statuses, details, seconds = run_load(service, REQUESTS, on_response=kill_once)
    errors = [s for s in statuses if s != 200]
    print(f"\nload: {len(statuses)} requests at concurrency {CONCURRENCY} in {seconds:.1f}s, replica "
          f"{victim} killed after {KILL_AFTER}: {len(errors)} errors {sorted(set(errors))}")

    # Keep the load on while Serve replaces the replica and the new one loads the model.
    def replaced() -> bool:
        current = ranker_replicas()
        return len(current) == 2 and victim not in current and running_rankers() == 2

    replaced_at: list[float] = []

    def recovered() -> bool:
        if not replaced_at and replaced():
            replaced_at.append(time.monotonic())
        return bool(replaced_at) and time.monotonic() > replaced_at[0] + 3.0

    during, late_details, seconds = run_load(service, 20_000, until=recovered)
    late = [s for s in during if s != 200]
    print(f"during replacement: {len(during)} requests in {seconds:.1f}s (replica back "
          f"{replaced_at[0] - killed_at[0] if replaced_at else float('nan'):.1f}s after the kill): "
          f"{len(late)} errors {sorted(set(late))}")
    for detail in sorted(set(details + late_details)):
        print("  error:", detail)
    assert killed_at and len(statuses) == REQUESTS and replaced_at, "the replica was not replaced"
    assert len(errors) + len(late) <= MAX_ERRORS, f"{len(errors)} + {len(late)} errors"
    assert set(errors + late) <= {503}, "a dead or starting replica must answer a retryable 503, nothing else"
    assert not [d for d in details + late_details if "model is loading" in d], \
        "Serve routed requests to the new replica before its model loaded, and they failed instead of waiting"

    wait_until(lambda: all_replicas_loaded(service.client), 90, "healthy again")
    after = [service.client.post("/recommend", json={"user_id": u, "k": 3}).status_code for u in service.users[:20]]
    assert after == [200] * 20


def test_a_failed_reload_keeps_the_old_model_on_the_new_replica_set(service, break_version):
    version = break_version(service.entry)
    response = service.client.post("/admin/reload", json={"version": version})
    assert response.status_code == 409 and response.json()["version"] == "v0001"
    assert len(response.json()["replicas"]) == 2 and not any(r["ok"] for r in response.json()["replicas"])
    assert service.client.get("/healthz").status_code == 200
    assert service.client.post("/recommend", json={"user_id": "nobody", "k": 1}).json()["model_version"] == "v0001"
