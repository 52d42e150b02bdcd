"""The Ray Serve application: a FastAPI ingress (``Api``) in front of a batched ranking deployment (``Ranker``).

    serve run serve.app:app_builder model=models/NAME [port=...]     # builder args are ServeConfig fields
    serve run serve.app:app                                          # model from $CONVFM_MODEL
    serve deploy serve/config.yaml                                   # against `ray start --head`
    convfm serve --model models/NAME                                 # the same, from the CLI

``Ranker`` replicas each hold a ``ModelSlot``; the model loads in a background thread, so ``/healthz`` answers
503 until it is ready. ``@serve.batch`` gathers concurrent requests and scores them in one pass over the
catalog. Model versions change through ``POST /admin/reload`` or the ``Api`` deployment's
``user_config: {model_version: vNNNN}`` (``serve deploy``): both broadcast a reload to every Ranker replica; a
replica whose load fails keeps its model. The ingress then tags requests with the version it wants, so
replicas started later (autoscaling, restarts) catch up in the background. Run one ``Api`` replica: it owns
that version and writes the event log (it is thin; the Ranker is what scales).

Feedback events (``serve.events``): ``POST /events`` is written to the log on the live store by the ``Api``,
then broadcast to every Ranker replica; requests carry the log's position, so a replica that started later or
missed a broadcast reads the segments it lacks before answering.

The live catalog (``POST /jobs``; ``serve.live_catalog``) follows the same pattern: the Api, its one writer,
appends a numbered delta to the live store and tags every later request with that catalog version; a replica
behind reads the deltas it lacks before it answers, and every model (re)load starts from the whole live catalog.
"""
from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Optional

from ray import serve
from ray.exceptions import RayError
from ray.serve.handle import DeploymentHandle

from convfm.errors import ArtifactError, ConvFMError
from convfm.store.live_catalog import CatalogStore
from convfm.store import storage
from convfm.store.registry import VERSION_RE, live_location, locate
from convfm.store.event_log import events_location
from serve.config import DEFAULT_MODEL, DEFAULT_MODEL_ENV, SHUTDOWN_OPTIONS, ServeConfig
from serve.events import EventWriter, LiveEvents, follow_log
from serve.http import build_http_app, reload_outcome, unwrap, wrap
from serve.live_catalog import answer, catch_up, job_detail, write_jobs
from serve.model_slot import ModelSlot
from serve.scorer import ServiceError, public_text

log = logging.getLogger(__name__)
APP_NAME = "convfm"
RETRY_FAILED_VERSION_S = 60.0
# Serve routes to a new replica (a replacement, an autoscaled one) as soon as __init__ returns, while its model
# still loads in the background: requests wait up to this long for that first load instead of failing 503.
FIRST_LOAD_WAIT_S = 15.0


@serve.deployment(name="Ranker")
class Ranker:
    """Scores requests in batches with the model of this replica's ``ModelSlot``."""

    def __init__(self, model: str, version: Optional[str], max_batch_size: int, batch_wait_timeout_s: float,
                 device: str = "cpu", live_store: Optional[str] = None) -> None:
        self.slot = ModelSlot(model, device)
        self.slot.live = LiveEvents(events_location(live_store) if live_store else None)
        threading.Thread(target=self._read_events, name="convfm-events-read", daemon=True).start()
        self.catalog = None if live_store is None else CatalogStore(live_store)
        self.slot.prepare = lambda scorer: catch_up(scorer, self.catalog)  # a (re)loaded model: the whole live catalog
        for method in (self._recommend_batch, self._score_batch):
            method.set_max_batch_size(max_batch_size)
            method.set_batch_wait_timeout_s(batch_wait_timeout_s)
        self.stats = {"batches": 0, "requests": 0, "largest_batch": 0, "compute_s": 0.0}
        self._following: Optional[str] = None
        self._failed: dict[str, float] = {}  # version -> time before which it is not retried
        threading.Thread(target=self.slot.load_first, args=(version,), name="convfm-model-load", daemon=True).start()

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
                        catalog: Optional[int] = None) -> dict[str, Any]:
        await self._first_load()
        self._follow(want)
        await follow_log(self.slot.live, events)
        return await self._catch_up(catalog) or await self._recommend_batch(request)

    async def score(self, request: Any, want: Optional[str] = None, events: Optional[int] = None,
                    catalog: Optional[int] = None) -> dict[str, Any]:
        await self._first_load()
        self._follow(want)
        await follow_log(self.slot.live, events)
        return await self._catch_up(catalog) or await self._score_batch(request)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def _recommend_batch(self, requests: list[Any]) -> list[dict[str, Any]]:
        return await asyncio.to_thread(self._run_batch, "recommend_many", requests)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def _score_batch(self, requests: list[Any]) -> list[dict[str, Any]]:
        return await asyncio.to_thread(self._run_batch, "score_many", requests)

    def _run_batch(self, method: str, requests: list[Any]) -> list[dict[str, Any]]:
        """Exactly one wrapped result per request (a length mismatch would hang @serve.batch callers)."""
        self.stats["batches"] += 1
        self.stats["requests"] += len(requests)
        self.stats["largest_batch"] = max(self.stats["largest_batch"], len(requests))
        started = time.perf_counter()
        try:
            results = answer(self.slot.require(), method, requests)
        except ServiceError as exc:
            results = [exc] * len(requests)
        except Exception:  # noqa: BLE001 - one bad batch must not take the replica down
            log.exception("%s failed for a batch of %d", method, len(requests))
            results = [ServiceError(500, "internal error while scoring")] * len(requests)
        self.stats["compute_s"] += time.perf_counter() - started
        return [wrap(r) for r in results]

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
                self._failed[want] = time.monotonic() + RETRY_FAILED_VERSION_S
        finally:
            self._following = None

    # ----------------------------------------------------------------------------------- live catalog
    async def _catch_up(self, catalog: Optional[int]) -> Optional[dict[str, Any]]:
        """Apply the live catalog up to the ingress's version ``catalog`` before answering (a replica that lags,
        restarted or started later reads the deltas it misses); a wrapped 503 when the store cannot be read."""
        scorer = self.slot.current
        if catalog is None or scorer is None or scorer.live_jobs.version >= catalog:
            return None
        try:
            await asyncio.to_thread(catch_up, scorer, self.catalog, catalog)
        except ConvFMError as exc:
            log.warning("live catalog v%d not applied: %s", catalog, exc)
            return wrap(ServiceError(503, f"live catalog version {catalog} is not readable yet; retry"))
        return None

    async def reload(self, version: Optional[str]) -> dict[str, Any]:
        report = await asyncio.to_thread(self.slot.load, version)
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
    def _read_events(self) -> None:
        """At start: the whole log, so the first requests need not wait for it."""
        try:
            self.slot.live.catch_up()
        except Exception as exc:  # noqa: BLE001 - requests catch up again (follow_log); the replica still serves
            log.warning("reading the event log at start failed: %s", exc)

    def apply_events(self, segment: str, records: list[dict[str, Any]]) -> bool:
        """The ingress's broadcast after it wrote ``segment``."""
        return self.slot.live.add(segment, records)

    async def known_jobs(self, job_ids: list[str]) -> dict[str, Any]:
        await self._first_load()
        try:
            return wrap(self.slot.require().known_jobs(job_ids))
        except ServiceError as exc:
            return wrap(exc)

    async def info(self, catalog: Optional[int] = None) -> dict[str, Any]:
        await self._first_load()
        try:
            return await self._catch_up(catalog) or wrap({**self.slot.info(), "batching": dict(self.stats)})
        except ServiceError as exc:
            return wrap(exc)


@serve.deployment(name="Api", num_replicas=1)
@serve.ingress()
class Api:
    """HTTP ingress: validation, auth and limits (``serve.http``), then calls into ``Ranker``."""

    def __init__(self, ranker: DeploymentHandle, settings: dict[str, Any]) -> None:
        self.ranker, self.settings = ranker, settings
        self.want: Optional[str] = settings.get("model_version")
        self._configured = False
        self.events = EventWriter(settings.get("live_store"))
        self._tasks: set[asyncio.Task] = set()
        # The live catalog: this (single) replica is its one writer; requests carry the version it wants.
        self.catalog = CatalogStore(settings["live_store"]) if settings.get("live_store") else None
        self.catalog_want = 0
        try:
            self.catalog_want = self.catalog.latest() if self.catalog is not None else 0
        except ConvFMError as exc:  # the replicas still read the latest when they load the model
            log.warning("live catalog: cannot read its version at start-up: %s", exc)

    def __serve_build_asgi_app__(self) -> Any:
        return build_http_app(self, api_key_digest=self.settings.get("api_key_digest"),
                              auth_all=self.settings.get("auth_all_endpoints", False),
                              max_body_bytes=self.settings["max_body_bytes"],
                              allowed_hosts=self.settings["allowed_hosts"])

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        """``user_config: {model_version: vNNNN}``; a change after start-up reloads every Ranker replica."""
        version = (user_config or {}).get("model_version")
        if not self._configured:
            self._configured, self.want = True, version or self.want
            return
        if version != self.want:
            status, body = await self.reload(version)
            log.warning("user_config reload to %s: %s", version, "ok" if status == 200 else body["error"])

    async def _call(self, method: str, *args: Any, timeout: Optional[float] = None) -> Any:
        async def call() -> Any:
            try:
                return await getattr(self.ranker, method).remote(*args)
            except RayError as exc:  # the replica died mid-call; every method sent here is read-only: once more
                log.warning("%s failed on a replica (%s); retrying once", method, type(exc).__name__)
                return await getattr(self.ranker, method).remote(*args)

        try:
            return await asyncio.wait_for(call(), timeout or self.settings["request_timeout_s"])
        except asyncio.TimeoutError:
            raise ServiceError(504, f"{method} timed out") from None
        except RayError as exc:  # replicas died or are restarting: retryable, not a bug in the request
            log.warning("%s failed: %s", method, type(exc).__name__)
            raise ServiceError(503, f"ranking replica unavailable ({type(exc).__name__}); retry") from None

    async def recommend(self, request: Any) -> dict[str, Any]:
        result = unwrap(await self._call("recommend", request, self.want, await self.events.position(),
                                         self.catalog_want))
        result = self.events.impression(result)
        if self.events.due():
            self._background(self._flush_impressions())
        return result

    async def score(self, request: Any) -> dict[str, Any]:
        return unwrap(await self._call("score", request, self.want, await self.events.position(),
                                       self.catalog_want))

    async def post_events(self, events: list[Any]) -> dict[str, Any]:
        """Stored first (the answer waits for the write), then told to every Ranker in the background: one
        that misses it catches up from the log at its next request."""
        try:
            known = unwrap(await self._call("known_jobs", sorted({e.job_id for e in events}), timeout=5.0))
        except ServiceError as exc:  # no replica can say: store the events anyway, known_job null
            log.warning("known_jobs: %s; storing events unflagged", exc.detail)
            known = None
        await self._flush_impressions()  # the impressions these events may cite go first
        body, appended = await self.events.append(events, known)
        if appended.segment is not None:
            self._background(self._tell_rankers(appended.segment, appended.records))
        return body

    def _background(self, work: Any) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)  # a reference until it is done
        task.add_done_callback(self._tasks.discard)

    async def _flush_impressions(self) -> None:
        """Impression records, best effort; their segment is told to the Rankers like any (which skip them)."""
        appended = await self.events.flush()
        if appended is not None and appended.segment is not None:
            self._background(self._tell_rankers(appended.segment, []))

    async def _tell_rankers(self, segment: str, records: list[dict[str, Any]]) -> None:
        try:
            await self.ranker.broadcast("apply_events", segment, records).results_async(
                timeout_s=30.0, return_exceptions=True)
        except Exception as exc:  # noqa: BLE001 - a replica that missed it reads the segment from the log
            log.warning("broadcasting event segment %s: %r", segment, exc)

    async def job(self, job_id: str) -> dict[str, Any]:
        return unwrap(await self._call("job", job_id, self.catalog_want))

    async def put_jobs(self, request: Any) -> dict[str, Any]:
        """One live catalog version (written before this returns); later requests make replicas apply it."""
        body = await asyncio.to_thread(write_jobs, self.catalog, request)
        self.catalog_want = max(self.catalog_want, body["catalog_version"])
        return body

    async def health(self) -> tuple[int, dict[str, Any]]:
        try:
            return tuple(await self._call("health", timeout=5.0))
        except ServiceError:
            return 503, {"status": "starting"}

    async def model_info(self) -> dict[str, Any]:
        return unwrap(await self._call("info", self.catalog_want))

    async def reload(self, version: Optional[str]) -> tuple[int, dict[str, Any]]:
        previous = self.want
        if version is None:  # `latest`, read here once: replicas resolving it each could land on different ones
            try:
                version = await asyncio.to_thread(pinned_version, self.settings["model"], None)
            except ArtifactError as exc:
                log.warning("reload: %s", exc)
                return reload_outcome([{"ok": False, "version": previous, "error": public_text(str(exc))}], previous)
        response = self.ranker.broadcast("reload", version)
        try:
            results = await response.results_async(timeout_s=600.0, return_exceptions=True)
        except TimeoutError:
            results = [TimeoutError("reload timed out")]
        for failure in (r for r in results if not isinstance(r, dict)):
            log.warning("reload to %s failed on a replica: %r", version, failure)
        reports = [r if isinstance(r, dict) else {"ok": False, "version": None, "error": public_text(repr(r))}
                   for r in results]
        status, body = reload_outcome(reports, previous)
        if status == 200:
            self.want = body["version"]
        return status, body


def pinned_version(model: str, version: Optional[str]) -> Optional[str]:
    """The registry version that ``model`` (and ``version``) name now, ``latest`` read once, so that every
    replica loads that one (None for a plain model directory). Raises ArtifactError; downloads nothing."""
    found = storage.name(locate(model, version))
    return found if VERSION_RE.match(found) else None


def largest_node_cpus() -> float:
    """CPUs of the largest alive node of the Ray this process is connected to, else of this machine."""
    import ray

    if ray.is_initialized():
        sizes = [node["Resources"].get("CPU", 0.0) for node in ray.nodes() if node.get("Alive")]
        if sizes:
            return max(sizes)
    return float(os.cpu_count() or 1)


def build_app(config: ServeConfig, node_cpus: Optional[float] = None) -> Any:
    """The application graph for ``config`` (checks that the model path exists; reads the API key env var).
    Replicas are pinned to the version ``latest`` names now: one started later (autoscaling, a restart) must not
    load a version published since, while the others keep this one. Replicas without a configured ``num_cpus``
    are sized to ``node_cpus`` (default: the largest node, see ``largest_node_cpus``)."""
    model = config.model if storage.is_uri(config.model) else str(Path(config.model).expanduser().absolute())
    version = pinned_version(model, config.model_version)  # fails now, not inside a replica, on a wrong path
    device = "cuda" if config.num_gpus > 0 else "cpu"
    logging_config = {"enable_access_log": config.access_log}
    node_cpus = largest_node_cpus() if node_cpus is None else node_cpus
    live = config.live_store or live_location(model)
    live = str(live) if storage.is_uri(live) else str(Path(live).expanduser().absolute())
    ranker = Ranker.options(**config.ranker_options(node_cpus), logging_config=logging_config).bind(
        model, version, config.max_batch_size, config.batch_wait_timeout_s, device, live)
    settings = {"model": model, "model_version": version, "live_store": live,
                "api_key_digest": config.api_key_digest(),
                "auth_all_endpoints": config.auth_all_endpoints, "max_body_bytes": config.max_body_bytes,
                "request_timeout_s": config.request_timeout_s, "allowed_hosts": config.trusted_hosts()}
    # The ingress only forwards: let it hold as many requests as the Rankers can batch.
    ingress_limit = config.max_ongoing_requests * config.most_replicas()
    return Api.options(ray_actor_options={"num_cpus": config.ingress_num_cpus}, logging_config=logging_config,
                       **SHUTDOWN_OPTIONS,
                       max_ongoing_requests=ingress_limit,
                       user_config={"model_version": config.model_version}).bind(ranker, settings)


def app_builder(args: dict[str, Any]) -> Any:
    """``serve run serve.app:app_builder key=value ...``: ServeConfig fields as builder args; ``model``
    defaults to $CONVFM_MODEL, then models/convfm."""
    args = dict(args or {})
    args.setdefault("model", os.environ.get(DEFAULT_MODEL_ENV, DEFAULT_MODEL))
    return build_app(ServeConfig.from_args(args))


# `serve run serve.app:app`: Serve calls a builder function with the (possibly empty) CLI args.
app = app_builder
