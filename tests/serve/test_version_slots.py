"""``VersionSlots`` without Ray: a replica's extra split versions are loaded, kept, dropped and (for a replica
that started later) followed in the background; a version that fails to load is reported and not held."""
from __future__ import annotations

import shutil
import time

from convfm.store.registry import publish
from serve.event_overlay import EventOverlay
from serve.model_slot import ModelSlot, VersionSlots


def test_split_versions_are_held_beside_the_primary(tiny, tmp_path, break_version):
    shutil.copytree(tiny.registry, tmp_path / "registry")
    entry = tmp_path / "registry" / "tiny"
    publish(tiny.model_dir, tmp_path / "registry", "tiny")  # v0002
    broken = break_version(entry)  # v0003, truncated weights
    primary = ModelSlot(entry)
    primary.overlay = EventOverlay(None)
    assert primary.load("v0001")["ok"]
    variants = VersionSlots(primary)

    assert variants.hold(["v0002"])[0]["ok"] and variants.get("v0002").version == "v0002"
    assert variants.hold(["v0002"]) == []  # held already: nothing loaded again
    reports = variants.hold(["v0002", broken])
    assert not reports[0]["ok"] and variants.get(broken) is None and set(variants.slots) == {"v0002"}
    variants.hold([])  # one version again: the others are dropped
    assert variants.scorers() == []

    variants.follow(["v0002"])  # a replica that started after the split: loads in the background
    deadline = time.monotonic() + 60
    while variants.get("v0002") is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert variants.get("v0002").version == "v0002"
    assert variants.get("v0002").live is primary.overlay.live  # the same event overlay as the primary
