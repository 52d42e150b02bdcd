"""Fuzz the HTTP API with its own OpenAPI schema (schemathesis): no 5xx, every response as documented.

In process (ASGI transport, no sockets, no Ray) over a ``LocalBackend`` holding the session's tiny model, with
the API key configured and required on every endpoint (the requests carry it, so every operation is reached).
Deterministic: Hypothesis derandomized, a bounded number of examples per operation, plus schemathesis'
coverage phase (boundary and invalid values of every field). The Ray Serve app gets a smaller run in
``test_serve_faults.py``.
"""
from __future__ import annotations

import collections
import hashlib

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance, response_headers_conformance, response_schema_conformance, status_code_conformance,
)

from serve.http import LocalBackend, build_http_app
from serve.scorer import ModelSlot

pytestmark = pytest.mark.timeout(240)
KEY = "fuzz-key-0123456789abcdef"
HEADERS = {"X-API-Key": KEY}
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
          response_headers_conformance]
FUZZ = settings(max_examples=30, derandomize=True, deadline=None, database=None,
                suppress_health_check=list(HealthCheck))
STATUSES: collections.Counter = collections.Counter()  # (operation, status) -> count, for the summary test

# The schema is loaded at import (schemathesis' lazy ``from_fixture`` breaks on pytest 9: ``Node._nodeid``); it
# does not depend on the model, so the backend gets its loaded slot from the fixture below.
BACKEND = LocalBackend(ModelSlot("model-not-loaded-yet"))
schema = schemathesis.openapi.from_asgi("/openapi.json", build_http_app(
    BACKEND, api_key_digest=hashlib.sha256(KEY.encode()).hexdigest(), auth_all=True))


@pytest.fixture(scope="module", autouse=True)
def loaded_model(tiny):
    slot = ModelSlot(tiny.entry)
    assert slot.load()["ok"]
    BACKEND.slot = slot
    return slot


@schema.parametrize()
@FUZZ
def test_every_response_is_documented_and_not_5xx(case):
    response = case.call(headers=HEADERS)
    STATUSES[(case.operation.label, response.status_code)] += 1
    case.validate_response(response, checks=CHECKS, headers=HEADERS)


def test_fuzzing_reached_the_model_and_the_validation(request):
    """The fuzz run must have produced both accepted requests (scored by the model) and refused ones."""
    if not any(item.name.startswith("test_every_response_is_documented") for item in request.session.items):
        pytest.skip("run together with test_every_response_is_documented_and_not_5xx")
    assert STATUSES, "the fuzz test was collected but produced no responses"
    print("\nfuzz responses (operation, status) -> count:", dict(sorted(STATUSES.items())))
    for operation in ("POST /recommend", "POST /score"):
        assert STATUSES[(operation, 200)] > 0 and STATUSES[(operation, 422)] > 0, operation
    assert not [key for key in STATUSES if key[1] >= 500]
