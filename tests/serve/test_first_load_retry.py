"""A replica whose first model load fails retries with backoff, and once it gives up its health check fails, so
Serve replaces it instead of routing traffic to a replica that answers 503 forever."""
from __future__ import annotations

import pytest

from serve import scorer as scorer_module
from serve.model_slot import ModelSlot


def flaky_load(monkeypatch, failures: int) -> list[int]:
    """Scorer.load raising OSError (a storage hiccup) ``failures`` times, then loading for real."""
    real, calls = scorer_module.Scorer.load.__func__, []

    def load(cls, path, *args, **kwargs):
        calls.append(1)
        if len(calls) <= failures:
            raise OSError("transient: connection reset by the storage")
        return real(cls, path, *args, **kwargs)

    monkeypatch.setattr(scorer_module.Scorer, "load", classmethod(load))
    return calls


def test_a_transient_first_load_failure_is_retried(tiny, monkeypatch):
    calls = flaky_load(monkeypatch, failures=2)
    slot = ModelSlot(tiny.entry)
    report = slot.load_first("v0001", attempts=4, backoff_s=0.01)
    assert report["ok"] and len(calls) == 3 and slot.current.version == "v0001" and slot.error is None
    slot.check()  # healthy


def test_a_replica_that_gives_up_fails_its_health_check(tiny, monkeypatch):
    calls = flaky_load(monkeypatch, failures=99)
    slot = ModelSlot(tiny.entry)
    slot.check()  # still loading (nothing tried yet): healthy, Serve waits
    report = slot.load_first("v0001", attempts=3, backoff_s=0.01)
    assert not report["ok"] and len(calls) == 3 and slot.current is None
    with pytest.raises(RuntimeError, match="no model after 3 attempts: OSError: transient"):
        slot.check()
