"""``Ranker``: the batched ranking deployment behind the ``Api`` ingress (``serve/app.py``).

Each replica holds a primary ``ModelSlot`` (the version the ingress wants; with a traffic split, its control
version) and, under a split, a ``VersionSlots`` with the split's other versions. The ingress routes each request
(``serve.traffic``) and tags it with its version; one ``@serve.batch`` may mix versions, and each version's
requests are scored by that version's model. A replica started later loads what the tags name in the background.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from itertools import groupby
from typing import Any, Optional, Sequence

import torch
from ray import serve

from convfm.errors import ConvFMError
from convfm.model.score_cache import DEFAULT_BUDGET_MIB
from convfm.store.event_log import events_location
from convfm.store.live_catalog import CatalogStore
from serve.event_overlay import EventOverlay
from serve.http import wrap
from serve.live_catalog import answer, catch_up, job_detail
from serve.model_slot import RETRY_FAILED_S, ModelSlot, VersionSlots
from serve.proxy import proxy_in_effect
from serve.replies import ServiceError, utc_now_text
from serve.scorer import Scorer

log = logging.getLogger(__name__)
# Serve routes to a new replica (a replacement, an autoscaled one) as soon as __init__ returns, while its model
# still loads in the background: requests wait up to this long for that first load instead of failing 503.
FIRST_LOAD_WAIT_S = 15.0


@serve.deployment(name="Ranker")
class Ranker:
    """Scores requests in batches with the model of this replica's ``ModelSlot``."""

    def __init__(self, model: str, version: Optional[str], max_batch_size: int, batch_wait_timeout_s: float,
                 device: str = "cpu", live_store: Optional[str] = None, variants: Sequence[str] = (),
                 retrieval_candidates: int = 0, score_cache_mib: int = DEFAULT_BUDGET_MIB) -> None:
        self.slot = ModelSlot(model, device, retrieval_candidates, score_cache_mib)
        self.slot.overlay = EventOverlay(events_location(live_store) if live_store else None)
        self.catalog = None if live_store is None else CatalogStore(live_store)
        self.slot.prepare = lambda scorer: catch_up(scorer, self.catalog)  # a (re)loaded model: the whole live catalog
        self.variants = VersionSlots(self.slot)  # a traffic split's versions other than the primary's
        for method in (self._recommend_batch, self._score_batch):
            method.set_max_batch_size(max_batch_size)
            method.set_batch_wait_timeout_s(batch_wait_timeout_s)
        self.stats = {"batches": 0, "requests": 0, "largest_batch": 0, "compute_s": 0.0}
        self._following: Optional[str] = None
        self._failed: dict[str, float] = {}  # version -> time before which it is not retried
        threading.Thread(target=self.slot.load_first, args=(version,), name="convfm-model-load", daemon=True).start()
        self.variants.follow(variants)

    def check_health(self) -> None:
        """Called by Serve every few seconds: a replica that gave up loading is replaced, not routed to."""
        self.slot.check()

    # ------------------------------------------------------------------------------------------ scoring
    async def _first_load(self) -> None:
        """Wait (bounded) while this replica's first model load runs; after it, or on failure, go on."""
        deadline = time.monotonic() + FIRST_LOAD_WAIT_S
        while self.slot.current is None and self.slot.error is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    async def recommend(self, request: Any, want: Optional[str] = None, events: Optional[int] = None,
                        catalog: Optional[int] = None, routed: Optional[str] = None,
                        others: Sequence[str] = ()) -> dict[str, Any]:
        """``routed``: the version the ingress routed this request to (None: the primary's); ``others``: the
        split's versions besides ``want``, loaded here in the background when missing."""
        return await self._answer(self._recommend_batch, request, want, events, catalog, routed, others)

    async def score(self, request: Any, want: Optional[str] = None, events: Optional[int] = None,
                    catalog: Optional[int] = None, routed: Optional[str] = None,
                    others: Sequence[str] = ()) -> dict[str, Any]:
        return await self._answer(self._score_batch, request, want, events, catalog, routed, others)

    async def _answer(self, batch: Any, request: Any, want: Optional[str], events: Optional[int],
                      catalog: Optional[int], routed: Optional[str], others: Sequence[str]) -> dict[str, Any]:
        await self._first_load()
        self._follow(want)
        self.variants.follow(others)
        routed = None if routed == want else routed
        await self.slot.overlay.follow(events)
        return (await self._catch_up(catalog) or await self._await_version(routed)
                or await batch((routed, request)))

    async def _await_version(self, routed: Optional[str]) -> Optional[dict[str, Any]]:
        """Wait (bounded) for a split version this replica is still loading; a wrapped 503 if it is not there."""
        deadline = time.monotonic() + FIRST_LOAD_WAIT_S
        while routed is not None and self._scorer(routed) is None:
            if time.monotonic() >= deadline:
                return wrap(ServiceError(503, f"model version {routed} is loading on this replica; retry"))
            await asyncio.sleep(0.05)
        return None

    def _scorer(self, routed: Optional[str]) -> Optional[Scorer]:
        """The model answering requests routed to ``routed`` (None: the primary's)."""
        current = self.slot.current
        if routed is None or (current is not None and current.version == routed):
            return current
        return self.variants.get(routed)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.0)
    async def _recommend_batch(self, items: list[tuple[Optional[str], Any]]) -> list[dict[str, Any]]:
        return await self._batch("recommend_many", items)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.0)
    async def _score_batch(self, items: list[tuple[Optional[str], Any]]) -> list[dict[str, Any]]:
        return await self._batch("score_many", items)

    async def _batch(self, method: str, items: list[tuple[Optional[str], Any]]) -> list[dict[str, Any]]:
        """Score a batch on the event loop: the requests that arrive meanwhile wait, unparsed, and all join the
        next batch. Scored in a thread, the scan and the loop took turns at the GIL and each request crawled to the
        queue alone (at concurrency 16, 1.2 requests a batch and ~12 ms of scoring per request against ~4 and ~7
        here; docs/SERVING.md, "Batching"). While a live-catalog catch-up holds a model (it reads the store and
        applies the deltas under the model's lock: seconds on an object store), the batch is scored in a thread
        instead, as before: the loop must not wait for it (health checks, request bodies and timeouts run on it)."""
        held = self._hold_models()
        if held is None:
            return await asyncio.to_thread(self._run_batch, method, items)
        try:  # held while it scores (``answer`` takes the locks again: they are re-entrant)
            return self._run_batch(method, items)
        finally:
            for lock in held:
                lock.release()

    def _hold_models(self) -> Optional[list[Any]]:
        """Every model's live-catalog lock, each taken without waiting; None (none kept) when one is held."""
        held: list[Any] = []
        for scorer in {id(s): s for s in (self.slot.current, *self.variants.scorers()) if s is not None}.values():
            if not scorer.live_jobs.lock.acquire(blocking=False):
                for lock in held:
                    lock.release()
                return None
            held.append(scorer.live_jobs.lock)
        return held

    def _run_batch(self, method: str, items: list[tuple[Optional[str], Any]]) -> list[dict[str, Any]]:
        """Exactly one wrapped result per (version, request), in order (a length mismatch would hang
        @serve.batch callers); each version's requests are scored together by its model."""
        self.stats["batches"] += 1
        self.stats["requests"] += len(items)
        self.stats["largest_batch"] = max(self.stats["largest_batch"], len(items))
        started = time.perf_counter()
        results: list[Any] = [None] * len(items)
        by_version = sorted(range(len(items)), key=lambda i: items[i][0] or "")
        for routed, group in groupby(by_version, key=lambda i: items[i][0] or ""):
            rows = list(group)
            results_of = self._score_group(method, routed or None, [items[i][1] for i in rows])
            for i, result in zip(rows, results_of):
                results[i] = result
        elapsed = time.perf_counter() - started
        self.stats["compute_s"] += elapsed
        return [{**wrap(r), "score_s": elapsed} for r in results]

    def _score_group(self, method: str, routed: Optional[str], requests: list[Any]) -> list[Any]:
        try:
            scorer = self._scorer(routed) if routed is not None else self.slot.require()
            if scorer is None:
                raise ServiceError(503, f"model version {routed} is not loaded on this replica; retry")
            return answer(scorer, method, requests)
        except ServiceError as exc:
            return [exc] * len(requests)
        except Exception:  # noqa: BLE001 - one bad batch must not take the replica down
            log.exception("%s failed for a batch of %d", method, len(requests))
            return [ServiceError(500, "internal error while scoring")] * len(requests)

    # --------------------------------------------------------------------------------------- model state
    def _follow(self, want: Optional[str]) -> None:
        """Load the ingress's wanted version in the background; keep serving the current one meanwhile."""
        current = self.slot.current
        if (want is None or self._following is not None or (current is not None and current.version == want)
                or time.monotonic() < self._failed.get(want, 0.0)):
            return
        self._following = want
        threading.Thread(target=self._load_wanted, args=(want,), name="convfm-model-follow", daemon=True).start()

    def _load_wanted(self, want: str) -> None:
        try:
            if not self.slot.load(want)["ok"]:
                self._failed[want] = time.monotonic() + RETRY_FAILED_S
        finally:
            self._following = None

    # ----------------------------------------------------------------------------------- live catalog
    async def _catch_up(self, catalog: Optional[int]) -> Optional[dict[str, Any]]:
        """Apply the live catalog up to the ingress's version ``catalog`` before answering (a replica that lags,
        restarted or started later reads the deltas it misses); a wrapped 503 when the store cannot be read."""
        behind = [s for s in (self.slot.current, *self.variants.scorers())
                  if catalog is not None and s is not None and s.live_jobs.version < catalog]
        if not behind:
            return None
        try:
            for scorer in behind:
                await asyncio.to_thread(catch_up, scorer, self.catalog, catalog)
        except ConvFMError as exc:
            log.warning("live catalog v%d not applied: %s", catalog, exc)
            return wrap(ServiceError(503, f"live catalog version {catalog} is not readable yet; retry"))
        return None

    async def reload(self, version: Optional[str], others: Optional[Sequence[str]] = None) -> dict[str, Any]:
        """Serve ``version`` alone (``others`` None: loaded again even if current, as before splits), or under
        a split with ``others`` beside it (loaded only if not held). ok only when every load worked; the versions
        that loaded stay, and the ingress keeps its old split unless every replica reports ok."""
        current = self.slot.current
        if others is not None and current is not None and current.version == version:
            report = {"ok": True, "requested": version, "version": version, "previous_version": version,
                      "error": None}
        else:
            report = await asyncio.to_thread(self.slot.load, version)
        if report["ok"]:
            variants = await asyncio.to_thread(self.variants.hold, [v for v in others or () if v != version])
            failed = next((r for r in variants if not r["ok"]), None)
            if failed is not None:
                report = {**report, "ok": False, "error": f"{failed['requested']}: {failed['error']}"}
            report["held"] = sorted({report["version"], *self.variants.slots}, key=str)
        if others is not None:  # a split: /model's last_reload tells of it, also when no load was needed
            self.slot.last_reload = {**report, "at": utc_now_text()}
        report["replica"] = serve.get_replica_context().replica_tag
        return report

    async def job(self, job_id: str, catalog: Optional[int] = None) -> dict[str, Any]:
        await self._first_load()
        try:
            return await self._catch_up(catalog) or wrap(job_detail(self.slot.require(), job_id))
        except ServiceError as exc:
            return wrap(exc)

    def health(self) -> tuple[int, dict[str, Any]]:
        return self.slot.health()

    # ------------------------------------------------------------------------------------------- events
    def apply_events(self, segment: str, records: list[dict[str, Any]]) -> bool:
        """The ingress's broadcast after it wrote ``segment``."""
        return self.slot.overlay.live.add(segment, records)

    async def known_jobs(self, job_ids: list[str], catalog: Optional[int] = None) -> dict[str, Any]:
        """Each id's posting time in the serving catalog, None for an id it does not hold (``Scorer.known_jobs``),
        the live catalog applied up to ``catalog`` first (a job posted a moment before its first event is known)."""
        await self._first_load()
        try:
            return await self._catch_up(catalog) or wrap(self.slot.require().known_jobs(job_ids))
        except ServiceError as exc:
            return wrap(exc)

    async def info(self, catalog: Optional[int] = None) -> dict[str, Any]:
        await self._first_load()
        try:
            return await self._catch_up(catalog) or wrap({**self.slot.info(), "batching": dict(self.stats),
                                                             "torch_threads": torch.get_num_threads(),
                                                             "proxy": proxy_in_effect()})
        except ServiceError as exc:
            return wrap(exc)


