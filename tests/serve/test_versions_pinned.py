"""Replicas serve one version: the app pins the version ``latest`` had when it was built (replicas started later
by autoscaling or restarts load that one, not a newer publish), and replicas that end on different versions make
a reload a 409, never a 200 that un-pins the service."""
from __future__ import annotations

import shutil

from convfm.store.registry import publish
from serve.config import ServeConfig
from serve.http import reload_outcome


def test_the_app_pins_the_version_latest_had_when_it_was_built(tiny, tmp_path):
    from serve.app import build_app

    entry = tmp_path / "registry" / "tiny"
    shutil.copytree(tiny.entry, entry)
    app = build_app(ServeConfig(model=str(entry), replicas=2))  # model_version null: the shipped default
    one = build_app(ServeConfig(model=str(entry)))  # one replica: the Ranker in the Api's process
    publish(tiny.model_dir, entry.parent, "tiny")  # v0002 becomes latest after the build
    ranker, settings = app._bound_deployment.init_args  # what every replica, early or late, is started with
    assert settings["model_version"] == "v0001"
    assert ranker._bound_deployment.init_args[1] == "v0001"
    assert one._bound_deployment.init_args[0].args[1] == "v0001"  # and a restarted one-replica service
    assert build_app(ServeConfig(model=str(entry)))._bound_deployment.init_args[1]["model_version"] == "v0002"
    single = build_app(ServeConfig(model=str(tiny.model_dir)))  # a plain model directory has no versions
    assert single._bound_deployment.init_args[1]["model_version"] is None


def test_replicas_on_different_versions_are_a_409():
    reports = [{"ok": True, "version": "v0001", "previous_version": "v0001"},
               {"ok": True, "version": "v0002", "previous_version": "v0001"}]
    status, body = reload_outcome(reports, "v0001")
    assert status == 409 and not body["ok"] and "different versions" in body["error"]
    assert reload_outcome(reports[:1], "v0001")[0] == 200
