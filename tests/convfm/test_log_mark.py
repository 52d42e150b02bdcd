"""``convfm.store.log_mark``: the mark's JSON form and its checks, the mark that suits several versions, and the
segments a reader of seen pairs must read beside a marked model."""
from __future__ import annotations

import pytest

from convfm.config import EVENTS
from convfm.errors import ArtifactError
from convfm.store.log_mark import LogMark, common_mark, seen_segments, segments_through

NAMES = [f"{n:019d}-0000000{n}.jsonl" for n in range(1, 6)]
EVERY = frozenset(EVENTS)


def test_the_common_mark_covers_every_version():
    early, late = LogMark(NAMES[0], 1, EVERY), LogMark(NAMES[3], 4, frozenset({"apply"}))
    both = common_mark([early, late])
    assert both == LogMark(NAMES[0], 1, frozenset({"apply"}))
    assert both.covers(early) and both.covers(late) and not late.covers(early) and not early.covers(late)
    assert common_mark([early, None]) is None and common_mark([]) is None and not early.covers(None)


def test_a_mark_round_trips_and_a_bad_one_names_its_field():
    mark = LogMark(NAMES[2], 3, frozenset({"view", "apply"}))
    assert mark.to_dict() == {"last_segment": NAMES[2], "segments": 3, "seen_types": ["apply", "view"]}
    assert LogMark.from_dict(mark.to_dict(), "m/serving.json") == mark
    for field, value, message in (("last_segment", "x.jsonl", "not an event log segment name"),
                                  ("segments", 0, "a segment count of 1 or more"),
                                  ("seen_types", ["like"], "a list of event types")):
        with pytest.raises(ArtifactError, match=f"m/serving.json: event_log.{field}: {message}"):
            LogMark.from_dict({**mark.to_dict(), field: value}, "m/serving.json")
    with pytest.raises(ArtifactError, match="event_log: expected an object"):
        LogMark.from_dict([], "m/serving.json")


def test_readers_of_seen_pairs_skip_what_the_model_holds():
    assert segments_through(NAMES, NAMES[2]) == 3
    assert segments_through(NAMES[:2] + NAMES[3:], NAMES[2]) is None  # not this log
    assert seen_segments(NAMES, LogMark(NAMES[2], 3, EVERY)) == NAMES[3:]
    assert seen_segments(NAMES, LogMark(NAMES[4], 5, EVERY)) == []
    assert seen_segments(NAMES, LogMark(NAMES[2], 3, frozenset({"apply"}))) == NAMES  # its seen pairs lack views
    assert seen_segments(NAMES, None) == NAMES and seen_segments(NAMES[3:], LogMark(NAMES[2], 3, EVERY)) == NAMES[3:]
