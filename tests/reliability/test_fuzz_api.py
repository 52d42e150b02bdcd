"""Fuzz the HTTP API with its own OpenAPI schema (schemathesis): no 5xx, every response as documented.

In process (ASGI transport, no sockets, no Ray) over a ``LocalBackend`` holding the session's tiny model, with
the API key configured and required on every endpoint. One run carries the key, so every operation is reached;
two more send no key and a wrong one, and must be refused (401/403) everywhere but ``/healthz``.
Deterministic: Hypothesis derandomized, a bounded number of examples per operation, plus schemathesis'
coverage phase (boundary and invalid values of every field). The Ray Serve app gets a smaller run in
``test_serve_faults.py``.
"""
from __future__ import annotations

import collections
import hashlib
import shutil
import tempfile
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance, response_headers_conformance, response_schema_conformance, status_code_conformance,
)

from serve.http import LocalBackend, build_http_app
from serve.model_slot import ModelSlot

pytestmark = pytest.mark.timeout(240)
KEY = "fuzz-key-0123456789abcdef"
HEADERS = {"X-API-Key": KEY}
UNGUARDED = {"GET /healthz"}
KEYS = {"none": None, "wrong": KEY[::-1]}
# Answered before the key is checked, with nothing of the model: 405 (a method the path lacks: the coverage phase
# tries them), 413 (body size) and 422 (a body that is not JSON is parsed before the dependencies run).
BEFORE_AUTH = (405, 413, 422)
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
          response_headers_conformance]
FUZZ = settings(max_examples=30, derandomize=True, deadline=None, database=None,
                suppress_health_check=list(HealthCheck))
# (operation, status) -> count, and ("refused", operation, status) for the runs without the key: for the summary
STATUSES: collections.Counter = collections.Counter()

# The schema is loaded at import (schemathesis' lazy ``from_fixture`` breaks on pytest 9: ``Node._nodeid``); it
# does not depend on the model, so the backend gets its loaded slot from the fixture below.
# POST /events and POST /jobs write a real live store, in a temp folder (removed by the fixture below).
LIVE_STORE = Path(tempfile.mkdtemp(prefix="convfm-fuzz-live-"))
BACKEND = LocalBackend(ModelSlot("model-not-loaded-yet"), live_store=LIVE_STORE)
schema = schemathesis.openapi.from_asgi("/openapi.json", build_http_app(  # its ASGI client's Host is "testserver"
    BACKEND, api_key_digest=hashlib.sha256(KEY.encode()).hexdigest(), auth_all=True, allowed_hosts=("testserver",)))


@pytest.fixture(scope="module", autouse=True)
def loaded_model(tiny):
    slot = ModelSlot(tiny.entry)
    assert slot.load()["ok"]
    BACKEND.slot = slot
    yield slot
    shutil.rmtree(LIVE_STORE, ignore_errors=True)


@schema.parametrize()
@FUZZ
def test_every_response_is_documented_and_not_5xx(case):
    response = case.call(headers=HEADERS)
    STATUSES[(case.operation.label, response.status_code)] += 1
    case.validate_response(response, checks=CHECKS, headers=HEADERS)


@schema.parametrize()
@settings(FUZZ, max_examples=10)
@pytest.mark.parametrize("key", list(KEYS))
def test_without_a_valid_key_every_guarded_operation_is_refused(case, key):
    case.headers = {k: v for k, v in (case.headers or {}).items() if k.lower() != "x-api-key"}  # generated ones
    headers = {} if KEYS[key] is None else {"X-API-Key": KEYS[key]}
    response = case.call(headers=headers)
    sent = response.request.headers.get("X-API-Key")  # negative cases may drop it ("missing header")
    assert sent != KEY
    refused = 403 if sent else 401
    STATUSES[("refused", case.operation.label, response.status_code)] += 1
    case.validate_response(response, checks=CHECKS, headers=headers)
    if case.operation.label not in UNGUARDED:
        assert response.status_code in (refused, *BEFORE_AUTH), (key, case.operation.label, response.status_code)


def test_fuzzing_reached_the_model_and_the_validation(request):
    """The fuzz run must have produced both accepted requests (scored by the model) and refused ones."""
    if not any(item.name.startswith("test_every_response_is_documented") for item in request.session.items):
        pytest.skip("run together with test_every_response_is_documented_and_not_5xx")
    assert STATUSES, "the fuzz test was collected but produced no responses"
    print("\nfuzz responses (operation, status) -> count:", dict(sorted(STATUSES.items(), key=str)))
    for operation in ("POST /recommend", "POST /score"):
        assert STATUSES[(operation, 200)] > 0 and STATUSES[(operation, 422)] > 0, operation
    assert not [key for key in STATUSES if key[-1] >= 500]
    if any(item.name.startswith("test_without_a_valid_key") for item in request.session.items):
        operations = {key[0] for key in STATUSES if len(key) == 2} - UNGUARDED
        for status in (401, 403):  # every guarded operation refused without a key, and with a wrong one
            missing = {op for op in operations if not STATUSES[("refused", op, status)]}
            assert not missing, f"never answered {status}: {missing}"
