"""A/B between versions end to end on Ray Serve (2 Ranker replicas, real HTTP): users hashed to different
versions get answers from their version on every replica, the report splits the logged feedback by version,
a split changes at run time (a bad one is refused and the old one keeps serving), and promote / rollback with
``--url`` switch the running service to one version."""
from __future__ import annotations

import shutil
import time

import httpx
import pytest

from convfm.cli.main import main
from convfm.evaluation.feedback import feedback_report
from convfm.store.event_log import events_location, is_event, read_log
from convfm.store.registry import publish
from serve.config import ServeConfig
from serve.traffic import route

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
KEY = "ab-e2e-key-0123456789"
KEY_ENV = "CONVFM_TEST_AB_KEY"


def test_a_split_routes_users_stably_and_the_report_compares_the_versions(tiny, serve_app, tmp_path, capsys,
                                                                            monkeypatch):
    shutil.copytree(tiny.registry, tmp_path / "registry")
    entry = tmp_path / "registry" / "tiny"
    publish(tiny.model_dir, tmp_path / "registry", "tiny")  # v0002: the same model, a second version
    live = tmp_path / "live"
    monkeypatch.setenv(KEY_ENV, KEY)
    split = {"v0001": 0.5, "v0002": 0.5}
    config = ServeConfig(model=str(entry), replicas=2, num_cpus=0.5, max_batch_size=8,
                         api_key_env=KEY_ENV, live_store=str(live), traffic=split)
    with serve_app(config) as url, httpx.Client(base_url=url, headers={"X-API-Key": KEY}, timeout=60) as client:
        users = list(tiny.data.frames["train"]["user_id"].drop_duplicates()[:40])
        by_version = {v: [u for u in users if route(split, u) == v][:3] for v in split}
        assert all(len(found) == 3 for found in by_version.values())

        def answer(user) -> dict:
            response = client.post("/recommend", json={"user_id": user, "k": 3})
            assert response.status_code == 200, response.text
            return response.json()

        shown = []
        for _ in range(4):  # several times each: both replicas answer, each from the user's version
            for version, found in by_version.items():
                for user in found:
                    body = answer(user)
                    assert body["model_version"] == version
                    shown.append((version, user, body["impression_id"], body["items"][0]["job_id"]))
        profile = client.post("/recommend", json={"profile": {"skills": ["python"]}, "k": 3}).json()
        assert profile["model_version"] == "v0001"  # no user id: the control version (a tie: the older one)

        clicks = [{"event_id": f"c{i}", "type": "click", "user_id": user, "job_id": job, "timestamp": time.time(),
                   "impression_id": impression}
                  for i, (version, user, impression, job) in enumerate(shown) if version == "v0002" or i % 4 == 0]
        assert client.post("/events", json={"events": clicks}).status_code == 200
        logged = [r for _, segment in read_log(events_location(live)) for r in segment if is_event(r)]
        assert [r["model_version"] for r in logged] == [route(split, r["user_id"]) for r in logged]  # filled in
        report = feedback_report(events_location(live))
        v1, v2 = report["versions"]["v0001"], report["versions"]["v0002"]
        assert v1["impressions"] == 12 + 1 and v2["impressions"] == 12  # the profile request's impression too
        assert v2["click"]["rate"] == 1.0 and 0 < v1["click"]["rate"] < 0.5
        low, high = v2["click"]["difference"]["ci95"]
        assert 0 < low < v2["click"]["difference"]["value"] < high <= 1
        assert main(["report", "--events", str(events_location(live))]) == 0
        assert "v0002 - v0001" in capsys.readouterr().out

        reload = lambda body: client.post("/admin/reload", json=body)  # noqa: E731
        changed = reload({"traffic": {"v0001": 0.2, "v0002": 0.8}})
        assert changed.status_code == 200 and changed.json()["traffic"] == {"v0001": 0.2, "v0002": 0.8}
        assert changed.json()["version"] == "v0002"  # the new control
        last = client.get("/model").json()["last_reload"]  # a split that loaded nothing new is still told of
        assert last["ok"] and last["held"] == ["v0001", "v0002"] and last["requested"] == "v0002"
        assert all(answer(u)["model_version"] == route({"v0001": 0.2, "v0002": 0.8}, u) for u in users[:10])
        refused = reload({"traffic": {"v0001": 0.5, "v0003": 0.5}})
        assert refused.status_code == 409 and "v0003: no such version" in refused.json()["error"]
        assert refused.json()["traffic"] == {"v0001": 0.2, "v0002": 0.8}  # the split serving after the call
        assert reload({"traffic": {"v0001": 0.5, "v0002": 0.6}}).status_code == 422
        assert client.get("/model").json()["traffic"] == {"v0001": 0.2, "v0002": 0.8}  # the old split serves

        assert main(["models", "promote", str(entry), "v0001"]) == 0
        assert main(["models", "promote", str(entry), "v0002", "--url", url, "--api-key-env", KEY_ENV]) == 0
        assert {answer(u)["model_version"] for u in users[:10]} == {"v0002"}
        assert client.get("/model").json()["traffic"] is None
        assert main(["models", "rollback", str(entry), "--url", url, "--api-key-env", KEY_ENV]) == 0
        assert {answer(u)["model_version"] for u in users[:10]} == {"v0001"}
        assert (entry / "latest").read_text().strip() == "v0001"
