"""``convfm report --events LOG``: rates per version with Wilson intervals, differences with Newcombe's,
checked against published values; events without a logged impression counted apart."""
from __future__ import annotations

import json

import pytest

from convfm.cli.main import main
from convfm.errors import DataValidationError
from convfm.evaluation.feedback import feedback_report, format_feedback, newcombe, wilson
from convfm.store.event_log import IMPRESSION, EventLog, interactions_frame

WHEN = "2026-12-01T10:00:00.000000Z"


def test_intervals_match_published_values():
    # Newcombe (1998), Statistics in Medicine 17: Wilson 81/263 -> 0.2553-0.3662; difference 56/70 - 48/80
    # -> 0.2000 with the hybrid score interval 0.0524-0.3339
    assert wilson(81, 263) == pytest.approx((0.2553, 0.3662), abs=1e-4)
    assert wilson(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert newcombe((56, 70), (48, 80)) == pytest.approx((0.2, 0.0524, 0.3339), abs=1e-4)


def impression(i: int, version: str) -> dict:
    return {"event_id": f"imp{i}", "type": IMPRESSION, "user_id": None, "job_ids": ["j1", "j2"],
            "model_version": version, "timestamp": WHEN}


def event(event_id: str, kind: str, impression_id: str | None) -> dict:
    return {"event_id": event_id, "type": kind, "user_id": "u1", "job_id": "j1", "timestamp": WHEN,
            "impression_id": impression_id}


@pytest.fixture
def log(tmp_path):
    writer = EventLog.open(tmp_path)
    writer.append([impression(i, "v0001") for i in range(100)] + [impression(i, "v0002") for i in range(100, 150)])
    clicks = [event(f"c{i}", "click", f"imp{i}") for i in [*range(10), *range(100, 110)]]
    writer.append(clicks + [event("c0-again", "click", "imp0"), event("a1", "apply", "imp1"),
                            event("lost", "click", "imp-never-logged"), event("bare", "save", None)])
    return tmp_path


def test_rates_per_version_and_the_difference(log):
    report = feedback_report(log)
    v1, v2 = report["versions"]["v0001"], report["versions"]["v0002"]
    assert (v1["impressions"], v2["impressions"]) == (100, 50) and report["baseline"] == "v0001"
    assert v1["click"]["impressions_with"] == 10 and v1["click"]["rate"] == 0.1  # two clicks on imp0 count once
    assert v1["click"]["ci95"] == pytest.approx(wilson(10, 100))
    assert v1["apply"]["rate"] == 0.01 and v1["save"]["rate"] == 0.0 and "difference" not in v1["click"]
    assert v2["click"]["rate"] == 0.2
    assert v2["click"]["difference"]["value"] == pytest.approx(0.1)
    assert v2["click"]["difference"]["ci95"] == pytest.approx(newcombe((10, 50), (10, 100))[1:])
    assert report["events_without_impression"] == 2
    table = format_feedback(report)
    assert "v0002 - v0001" in table and "0.2000 [" in table and "not rated): 2" in table
    assert len(interactions_frame(log)) == 24  # training reads the events, never the impressions


def test_the_command(log, capsys):
    assert main(["report", "--events", str(log)]) == 0
    assert capsys.readouterr().out.splitlines()[1].startswith("v0001")
    assert main(["report", "--events", str(log), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["versions"]["v0002"]["impressions"] == 50


def test_impressions_are_read_from_the_log_beside_the_events_as_the_service_writes_them(tmp_path):
    from convfm.store.event_log import impressions_location

    events = tmp_path / "events"
    EventLog(impressions_location(events), dedupe=False).append([impression(i, "v0001") for i in range(20)])
    EventLog(impressions_location(events), dedupe=False).append([impression(i, "v0002") for i in range(20, 30)])
    EventLog.open(events).append([event(f"c{i}", "click", f"imp{i}") for i in (0, 1, 25)])
    report = feedback_report(events)
    assert report["versions"]["v0001"]["impressions"] == 20 and report["versions"]["v0002"]["impressions"] == 10
    assert report["versions"]["v0002"]["click"]["impressions_with"] == 1 and report["events_without_impression"] == 0


def test_a_log_without_impressions_is_named(tmp_path):
    EventLog.open(tmp_path).append([event("e", "click", None)])
    with pytest.raises(DataValidationError, match=r"neither the event log nor \S+impressions holds impression records"):
        feedback_report(tmp_path)
    assert main(["report", "--events", str(tmp_path / "nowhere")]) == 2
    with pytest.raises(DataValidationError, match=r"nowhere: no event log there \(no segment files\)"):
        feedback_report(tmp_path / "nowhere")
