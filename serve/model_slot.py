"""``ModelSlot``: the serving ``Scorer`` of one process and its replacement. A version that fails to load or
validate leaves the current one serving and is reported; the first load is retried, then given up (Serve's
health check replaces the replica). Plain Python, no Ray.
"""
from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

from convfm.model.score_cache import DEFAULT_BUDGET_MIB
from convfm.store.registry import resolve as resolve_model
from convfm.store.storage import is_uri
from serve.replies import ServiceError, public_text, utc_now_text
from serve.scorer import Scorer

if TYPE_CHECKING:
    from serve.event_overlay import EventOverlay

log = logging.getLogger(__name__)
LOAD_FAILED = "model failed to load (details in the service log)"
RETRY_FAILED_S = 60.0  # a version that failed to load is not tried again in the background before this


class ModelSlot:
    """The serving Scorer of one process and its replacement; thread-safe, loads never raise."""

    def __init__(self, model_path: str | Path, device: str = "cpu", retrieval_candidates: int = 0,
                 score_cache_mib: int = DEFAULT_BUDGET_MIB) -> None:
        self.model_path = model_path if is_uri(model_path) else Path(model_path)  # a Path would mangle s3://
        self.device = device
        self.retrieval_candidates = retrieval_candidates  # ServeConfig.retrieval_candidates, for every Scorer
        self.score_cache_mib = score_cache_mib  # ServeConfig.score_cache_mib, likewise
        self.current: Optional[Scorer] = None
        self.error: Optional[str] = None  # why the *first* load failed (later failures keep the old model)
        self.last_reload: Optional[dict[str, Any]] = None
        self.gave_up: Optional[str] = None  # set when the first load failed every attempt: see check()
        self.prepare: Optional[Callable[[Scorer], None]] = None  # run on a new Scorer before it serves
        self._lock = threading.Lock()
        self.overlay: Optional["EventOverlay"] = None  # logged events: admits every Scorer loaded here

    def load_first(self, version: Optional[str], attempts: int = 4, backoff_s: float = 2.0) -> dict[str, Any]:
        """The first load, retried ``attempts`` times with doubling waits (storage hiccups pass); then give up."""
        for attempt in range(attempts):
            report = self.load(version)
            if report["ok"] or self.current is not None:
                return report
            if attempt + 1 < attempts:
                time.sleep(backoff_s * 2**attempt)
        self.gave_up = f"no model after {attempts} attempts: {self.error}"
        return report

    def check(self) -> None:
        """Serve's health check: raise once the first load gave up, so Serve replaces the replica."""
        if self.current is None and self.gave_up:
            raise RuntimeError(self.gave_up)

    def load(self, version: Optional[str] = None) -> dict[str, Any]:
        """Load + validate ``version`` (a registry version next to the configured model; None: the configured
        path itself, following ``latest``; URIs are downloaded) and swap it in; on any failure keep serving
        the current model."""
        with self._lock:
            previous = self.current.version if self.current is not None else None
            started = time.perf_counter()
            try:
                scorer = Scorer.load(resolve_model(self.model_path, version), self.device, self.retrieval_candidates,
                                     self.score_cache_mib)
                if self.prepare is not None:
                    self.prepare(scorer)
                if self.overlay is not None:
                    self.overlay.admit(scorer, self.current)
            except Exception as exc:  # noqa: BLE001 - any failure of a new version must leave the old one serving
                error = f"{type(exc).__name__}: {exc}"
                log.warning("model load failed (%s); still serving %s", error, previous)
                if self.current is None:
                    self.error = error
                self.last_reload = {"ok": False, "requested": version, "version": previous,
                                    "previous_version": previous, "error": public_text(error), "at": utc_now_text()}
                return dict(self.last_reload)
            self.current, self.error = scorer, None
            self.last_reload = {"ok": True, "requested": version, "version": scorer.version,
                                "previous_version": previous, "error": None, "at": utc_now_text(),
                                "seconds": round(time.perf_counter() - started, 3)}
            return dict(self.last_reload)

    def require(self) -> Scorer:
        scorer = self.current
        if scorer is None:
            raise ServiceError(503, LOAD_FAILED if self.error else "model is loading")
        return scorer

    def health(self) -> tuple[int, dict[str, Any]]:
        scorer = self.current
        if scorer is not None:
            return 200, {"status": "ok", "model": scorer.name, "version": scorer.version}
        if self.error:
            return 503, {"status": "failed", "error": LOAD_FAILED}  # /healthz is open to anyone
        return 503, {"status": "loading"}

    def info(self) -> dict[str, Any]:
        events = {} if self.overlay is None else {"events": self.overlay.info()}
        return {**self.require().info(), "last_reload": self.last_reload, **events}


class VersionSlots:
    """The other versions of a traffic split held by one replica, one ``ModelSlot`` each, beside its primary
    slot (which serves the split's control version). They share the primary's event overlay and catalog step."""

    def __init__(self, primary: ModelSlot) -> None:
        self.primary = primary
        self.slots: dict[str, ModelSlot] = {}
        self._loading: set[str] = set()
        self._failed: dict[str, float] = {}  # version -> time before which ``follow`` does not retry it
        self._lock = threading.Lock()

    def get(self, version: str) -> Optional[Scorer]:
        slot = self.slots.get(version)
        return slot.current if slot is not None else None

    def scorers(self) -> list[Scorer]:
        return [s.current for s in list(self.slots.values()) if s.current is not None]

    def hold(self, versions: Sequence[str]) -> list[dict[str, Any]]:
        """Load the ``versions`` not held yet (now, in this thread), then drop every other one; the load
        reports. A version that fails is not held (the caller keeps its old split)."""
        reports = [self._load(v) for v in versions if self.get(v) is None]
        failed = {r["requested"] for r in reports if not r["ok"]}
        with self._lock:
            dropped = [s.current for v, s in self.slots.items() if v not in versions and s.current is not None]
            self.slots = {v: s for v, s in self.slots.items() if v in versions and v not in failed}
        if dropped and self.primary.overlay is not None:
            self.primary.overlay.release(dropped)  # the overlay may now leave out more of the log
        return reports

    def follow(self, versions: Sequence[str]) -> None:
        """Load the ``versions`` not held in the background (a replica that started after a split change)."""
        for version in versions:
            with self._lock:
                if (self.get(version) is not None or version in self._loading
                        or time.monotonic() < self._failed.get(version, 0.0)):
                    continue
                self._loading.add(version)
            threading.Thread(target=self._load, args=(version,), name="convfm-variant-load", daemon=True).start()

    def _load(self, version: str) -> dict[str, Any]:
        slot = ModelSlot(self.primary.model_path, self.primary.device, self.primary.retrieval_candidates,
                         self.primary.score_cache_mib)
        slot.overlay, slot.prepare = self.primary.overlay, self.primary.prepare
        try:
            report = slot.load(version)
        finally:
            with self._lock:
                self._loading.discard(version)
        with self._lock:
            if report["ok"]:
                self.slots[version] = slot
            else:
                self._failed[version] = time.monotonic() + RETRY_FAILED_S
        return report
