"""What clients may learn, and from which Host: no absolute paths, URIs or query strings in answers (the details
go to the log), and requests only for the service's own names (a loopback service with no key must not be
readable by a web page through DNS rebinding)."""
from __future__ import annotations

import json
import logging
import warnings

import pytest

with warnings.catch_warnings():  # starlette's note about its httpx-based TestClient
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from convfm.errors import ConfigError
from serve.config import ServeConfig
from serve.http import LocalBackend, build_http_app
from serve.model_slot import ModelSlot

pytestmark = pytest.mark.timeout(60)
SIGNED = "?X-Amz-Signature=abcdef0123456789"


def client(slot: ModelSlot, host: str = "localhost", **options) -> TestClient:
    return TestClient(build_http_app(LocalBackend(slot), **options), base_url=f"http://{host}")


def _leaks(text: str, *secrets: str) -> list[str]:
    return [s for s in secrets if s in text]


@pytest.mark.parametrize("kind", ["path", "uri"])
def test_a_failed_first_load_tells_clients_nothing_of_where(tmp_path, caplog, kind):
    where = tmp_path / "private-models" / "entry"
    model = str(where) if kind == "path" else f"file://{where}{SIGNED}"
    slot = ModelSlot(model)
    with caplog.at_level(logging.WARNING, logger="serve.scorer"):
        report = slot.load()
    assert not report["ok"] and str(tmp_path) in caplog.text  # the operator sees the details in the log
    c = client(slot)
    health = c.get("/healthz")
    assert health.status_code == 503 and health.json()["status"] == "failed"
    refused = c.post("/recommend", json={"user_id": "u"})
    assert refused.status_code == 503 and "failed to load" in refused.json()["detail"]
    for answer in (health.text, refused.text, json.dumps(report)):
        assert not _leaks(answer, str(tmp_path), "X-Amz-Signature", "file://"), answer


def test_model_info_and_reload_reports_hold_no_absolute_path(tiny):
    slot = ModelSlot(tiny.entry)
    assert slot.load()["ok"]
    root = str(tiny.entry.parent)
    info = client(slot).get("/model").json()
    assert info["path"] == "tiny/v0001"
    failed = slot.load("v0042")
    assert not failed["ok"] and "no such version" in failed["error"]
    for answer in (json.dumps(info), json.dumps(failed), json.dumps(slot.info())):
        assert root not in answer, answer


@pytest.mark.parametrize("host, status", [
    ("localhost", 200), ("127.0.0.1:8000", 200), ("[::1]:8000", 200), ("LOCALHOST:8000", 200),
    ("rebound.attacker.example", 400), ("127.0.0.1.attacker.example", 400), ("localhost.", 400),
])
def test_only_loopback_names_by_default(tiny, host, status):
    slot = ModelSlot(tiny.entry)
    assert slot.load()["ok"]
    c = client(slot)
    assert c.get("/healthz", headers={"host": host}).status_code == status
    assert c.post("/recommend", json={"user_id": "u"}, headers={"host": host}).status_code == status


def test_configured_hosts_are_allowed(tiny):
    slot = ModelSlot(tiny.entry)
    assert slot.load()["ok"]
    c = client(slot, host="recs.example.com", allowed_hosts=("recs.example.com", "*.svc.cluster.local"))
    assert c.get("/healthz").status_code == 200
    assert c.get("/healthz", headers={"host": "convfm-serve-svc.ml.svc.cluster.local:8000"}).status_code == 200
    assert c.get("/healthz", headers={"host": "localhost"}).status_code == 400  # the list replaces the default


def test_allowed_hosts_config():
    assert set(ServeConfig().allowed_hosts) == {"localhost", "127.0.0.1", "[::1]"}
    config = ServeConfig.from_args({"allowed_hosts": "recs.example.com, *.example.org", "host": "10.1.2.3"})
    assert config.allowed_hosts == ("recs.example.com", "*.example.org")
    assert config.trusted_hosts() == ("recs.example.com", "*.example.org", "10.1.2.3")  # its own address too
    assert ServeConfig(host="::1").trusted_hosts()[-1] == "[::1]"
    assert "0.0.0.0" not in ServeConfig(host="0.0.0.0").trusted_hosts()
    for bad in ((), ("localhost:8000",), ("a b",), ("*foo.com",), ("",), "localhost", (7,)):
        with pytest.raises(ConfigError, match=r"^allowed_hosts: "):
            ServeConfig(allowed_hosts=bad)


@pytest.mark.parametrize("host, url", [("127.0.0.1", "http://127.0.0.1:8000"), ("0.0.0.0", "http://127.0.0.1:8000"),
                                       ("::", "http://[::1]:8000"), ("::1", "http://[::1]:8000"),
                                       ("Recs.Example.com", "http://recs.example.com:8000")])
def test_the_local_url_is_a_trusted_host(host, url):
    """`convfm serve` polls /healthz at this URL: bound to 0.0.0.0 it must not send Host 0.0.0.0 (refused)."""
    config = ServeConfig(host=host)
    assert config.local_url() == url
    assert url.split("//")[1].rsplit(":", 1)[0] in config.trusted_hosts()
