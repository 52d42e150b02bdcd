"""The Ray Serve application: a FastAPI ingress (``Api``) in front of a batched ranking deployment (``Ranker``).

    serve run serve.app:app_builder model=models/NAME [port=...]     # builder args are ServeConfig fields
    serve run serve.app:app                                          # model from $CONVFM_MODEL
    serve deploy serve/config.yaml                                   # against `ray start --head`
    convfm serve --model models/NAME                                 # the same, from the CLI

With one replica (the default) the ``Ranker`` runs inside the ``Api``'s process (``serve.in_process``): one
deployment, no actor hop per request; everything below holds the same, with one replica to tell.

``Ranker`` replicas (``serve.ranker``) each hold a ``ModelSlot``; the model loads in a background thread, so ``/healthz`` answers
503 until it is ready. ``@serve.batch`` gathers concurrent requests and scores them in one pass over the
catalog. Model versions change through ``POST /admin/reload`` or the ``Api`` deployment's
``user_config: {model_version: vNNNN}`` (``serve deploy``): both broadcast a reload to every Ranker replica; a
replica whose load fails keeps its model. The ingress then tags requests with the version it wants, so
replicas started later (autoscaling, restarts) catch up in the background. Run one ``Api`` replica: it owns
that version and writes the event log (it is thin; the Ranker is what scales).

A/B splits (``traffic: {v0007: 0.9, v0008: 0.1}``, ``serve.traffic``): the Api routes each user by a hash of
the user id and tags the request with that version; every Ranker replica holds every version of the split. The
split changes like a version does: ``POST /admin/reload {"traffic": ...}`` or ``user_config: {traffic: ...}``
broadcast it, and the Api routes by the new split only once every replica holds all of its versions.

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
from pathlib import Path
from typing import Any, Optional

from ray import serve
from ray.exceptions import RayError
from ray.serve.handle import DeploymentHandle

from convfm.errors import ArtifactError, ConfigError, ConvFMError
from convfm.store.live_catalog import CatalogStore
from convfm.store import storage
from convfm.store.registry import VERSION_RE, live_location, locate
from serve.config import DEFAULT_MODEL, DEFAULT_MODEL_ENV, SHUTDOWN_OPTIONS, ServeConfig
from serve.events import CLOSE_SETTLE_S, DEDUPE_DAYS, EventWriter
from serve.http import build_http_app, reload_outcome, unwrap
from serve.in_process import InProcess, LocalHandle
from serve.live_catalog import write_jobs
from serve.proxy import check_proxy
from serve.ranker import Ranker
from serve.replies import ServiceError, public_text
from serve.traffic import Split, check_traffic, check_versions_exist, control, route

log = logging.getLogger(__name__)
APP_NAME = "convfm"


@serve.deployment(name="Api", num_replicas=1)
@serve.ingress()
class Api:
    """HTTP ingress: validation, auth and limits (``serve.http``), then calls into ``Ranker``."""

    def __init__(self, ranker: DeploymentHandle | InProcess, settings: dict[str, Any]) -> None:
        check_proxy(settings.get("proxy", "serve"))  # here: Ray's environment is this process's, not the builder's
        # One replica: the Ranker runs here, in this process (``serve.in_process``); else behind its handle.
        self.ranker = ranker.start() if isinstance(ranker, InProcess) else ranker
        self.settings = settings
        self.want: Optional[str] = settings.get("model_version")
        self.split: Optional[Split] = settings.get("traffic")  # with a split, ``want`` is its control version
        self._configured = False
        self.events = EventWriter(settings.get("live_store"), settings.get("event_dedupe_days", DEDUPE_DAYS))
        self._tasks: set[asyncio.Task] = set()
        # The live catalog: this (single) replica is its one writer; requests carry the version it wants.
        self.catalog = CatalogStore(settings["live_store"]) if settings.get("live_store") else None
        self.catalog_want = 0
        try:
            self.catalog_want = self.catalog.latest() if self.catalog is not None else 0
        except ConvFMError as exc:  # the replicas still read the latest when they load the model
            log.warning("live catalog: cannot read its version at start-up: %s", exc)

    async def __del__(self) -> None:
        """Serve awaits this when it stops the replica (SIGTERM, a redeploy): buffered impressions are written,
        and the logs' and the live catalog's bundle writes in flight get a moment to finish."""
        await self.events.close()
        if self.catalog is not None:
            await asyncio.to_thread(self.catalog.settle, CLOSE_SETTLE_S)

    def check_health(self) -> None:
        """Called by Serve every few seconds: with the Ranker in this process, a replica whose model gave up
        loading is replaced, as a Ranker replica would be."""
        if isinstance(self.ranker, LocalHandle):
            self.ranker.check_health()

    def __serve_build_asgi_app__(self) -> Any:
        return build_http_app(self, api_key_digest=self.settings.get("api_key_digest"),
                              auth_all=self.settings.get("auth_all_endpoints", False),
                              max_body_bytes=self.settings["max_body_bytes"],
                              allowed_hosts=self.settings["allowed_hosts"])

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        """``user_config: {model_version: vNNNN}`` or ``{traffic: {vNNNN: weight, ...}}``; a change after
        start-up reloads every Ranker replica (a bad split is refused and logged; the old one keeps serving)."""
        version, traffic = (user_config or {}).get("model_version"), (user_config or {}).get("traffic")
        if not self._configured:  # the replicas follow what the requests name
            self._configured = True
            if traffic is None:
                self.want = version or self.want
                return
            try:
                split = check_traffic(traffic, "user_config.traffic")
                check_versions_exist(self.settings["model"], split, "user_config.traffic")
            except ConfigError as exc:
                log.warning("%s; serving %s", exc, self.split or self.want)
                return
            self.split, self.want = split, control(split)
            return
        if (traffic is not None and traffic != self.split) or (traffic is None and (version != self.want or self.split)):
            status, body = await self.reload(version, traffic)
            log.warning("user_config reload to %s: %s", traffic or version, "ok" if status == 200 else body["error"])

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

    def _routing(self, request: Any) -> tuple[Optional[str], tuple[str, ...]]:
        """(the version this request's user is routed to, the split's other versions); (None, ()) without one."""
        if self.split is None:
            return None, ()
        return route(self.split, request.user_id), tuple(v for v in self.split if v != self.want)

    def _version_of(self, user_id: str) -> Optional[str]:
        """The version ``user_id`` is routed to now: what an event that names none records."""
        return route(self.split, user_id) if self.split else self.want

    async def recommend(self, request: Any) -> dict[str, Any]:
        result = unwrap(await self._call("recommend", request, self.want, await self.events.position(),
                                         self.catalog_want, *self._routing(request)))
        result = self.events.impression(result)
        if self.events.due():
            self._background(self.events.flush())
        return result

    async def score(self, request: Any) -> dict[str, Any]:
        return unwrap(await self._call("score", request, self.want, await self.events.position(),
                                       self.catalog_want, *self._routing(request)))

    async def post_events(self, events: list[Any]) -> dict[str, Any]:
        """Stored first (the answer waits for the write), then told to every Ranker in the background: one
        that misses it catches up from the log at its next request."""
        try:
            known = unwrap(await self._call("known_jobs", sorted({e.job_id for e in events}), self.catalog_want,
                                            timeout=5.0))
        except ServiceError as exc:  # no replica can say: store the events anyway, known_job null
            log.warning("known_jobs: %s; storing events unflagged", exc.detail)
            known = None
        events = [e if e.model_version else e.model_copy(update={"model_version": self._version_of(e.user_id)})
                  for e in events]
        await self.events.flush()  # the impressions these events may cite go first
        body, appended = await self.events.append(events, known)
        if appended.segment is not None:
            self._background(self._tell_rankers(appended.segment, appended.records))
        return body

    def _background(self, work: Any) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)  # a reference until it is done
        task.add_done_callback(self._tasks.discard)

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
        known = columns = None
        if request.expire:
            try:
                known = unwrap(await self._call("known_jobs", request.expire, self.catalog_want, timeout=5.0))
            except ServiceError as exc:  # no replica can say: unknown_expire stays empty
                log.warning("known_jobs: %s; expiries not checked", exc.detail)
        if any(job.extra for job in request.upsert):
            try:
                info = unwrap(await self._call("info", self.catalog_want, timeout=5.0))
                columns = info.get("extra_columns", {}).get("jobs", {})
            except ServiceError as exc:  # no replica can say: extra values not checked
                log.warning("model info: %s; extra values not checked", exc.detail)
        body = await asyncio.to_thread(write_jobs, self.catalog, request, known, columns)
        self.catalog_want = max(self.catalog_want, body["catalog_version"])
        return body

    async def health(self) -> tuple[int, dict[str, Any]]:
        try:
            return tuple(await self._call("health", timeout=5.0))
        except ServiceError:
            return 503, {"status": "starting"}

    async def model_info(self) -> dict[str, Any]:
        return {**unwrap(await self._call("info", self.catalog_want)), "traffic": self.split}

    async def reload(self, version: Optional[str], traffic: Optional[dict[str, float]] = None
                     ) -> tuple[int, dict[str, Any]]:
        """One version for all traffic (None: the entry's ``latest``), or a ``traffic`` split; 200 once every
        Ranker replica holds it, else 409 and the old version or split keeps serving (``traffic``: the split
        serving after the call, either way)."""
        status, body = await self._reload(version, traffic)
        return status, {**body, "traffic": self.split}

    async def _reload(self, version: Optional[str], traffic: Optional[dict[str, float]]
                      ) -> tuple[int, dict[str, Any]]:
        previous = self.want
        split, others = None, None
        if traffic is not None:
            try:
                split = check_traffic(traffic)
                await asyncio.to_thread(check_versions_exist, self.settings["model"], split)
            except ConfigError as exc:
                return reload_outcome([{"ok": False, "version": previous, "error": public_text(str(exc))}], previous)
            version, others = control(split), [v for v in split if v != control(split)]
        if version is None:  # `latest`, read here once: replicas resolving it each could land on different ones
            try:
                version = await asyncio.to_thread(pinned_version, self.settings["model"], None)
            except ArtifactError as exc:
                log.warning("reload: %s", exc)
                return reload_outcome([{"ok": False, "version": previous, "error": public_text(str(exc))}], previous)
        response = self.ranker.broadcast("reload", version, others)
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
            self.want, self.split = body["version"], split
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
    others: list[str] = []
    if config.traffic is not None:
        check_versions_exist(model, config.traffic)
        version = control(config.traffic)
        others = [v for v in config.traffic if v != version]
    device = "cuda" if config.num_gpus > 0 else "cpu"
    logging_config = {"enable_access_log": config.access_log}
    node_cpus = largest_node_cpus() if node_cpus is None else node_cpus
    live = config.live_store or live_location(model)
    live = str(live) if storage.is_uri(live) else str(Path(live).expanduser().absolute())
    ranker_args = (model, version, config.max_batch_size, config.batch_wait_timeout_s, device, live, others,
                   config.retrieval_candidates, config.score_cache_mib)
    settings = {"model": model, "model_version": version, "traffic": config.traffic, "live_store": live,
                "event_dedupe_days": config.event_dedupe_days,
                "api_key_digest": config.api_key_digest(),
                "auth_all_endpoints": config.auth_all_endpoints, "max_body_bytes": config.max_body_bytes,
                "request_timeout_s": config.request_timeout_s, "allowed_hosts": config.trusted_hosts(),
                "proxy": config.proxy}
    api_options: dict[str, Any] = {"logging_config": logging_config, **SHUTDOWN_OPTIONS,
                                   "user_config": {"model_version": config.model_version, "traffic": config.traffic}}
    if config.replicas == 1:  # one deployment: HTTP and scoring in one replica, no hop between them
        ranker: Any = InProcess(ranker_args)
        ranker_options = config.ranker_options(node_cpus)
        api_options.update(ray_actor_options=ranker_options["ray_actor_options"],
                           max_ongoing_requests=ranker_options["max_ongoing_requests"])
    else:
        ranker = Ranker.options(**config.ranker_options(node_cpus), logging_config=logging_config).bind(*ranker_args)
        # The ingress only forwards: let it hold as many requests as the Rankers can batch.
        api_options.update(ray_actor_options={"num_cpus": config.ingress_num_cpus},
                           max_ongoing_requests=config.max_ongoing_requests * config.most_replicas())
    return Api.options(**api_options).bind(ranker, settings)


def app_builder(args: dict[str, Any]) -> Any:
    """``serve run serve.app:app_builder key=value ...``: ServeConfig fields as builder args; ``model``
    defaults to $CONVFM_MODEL, then models/convfm."""
    args = dict(args or {})
    args.setdefault("model", os.environ.get(DEFAULT_MODEL_ENV, DEFAULT_MODEL))
    return build_app(ServeConfig.from_args(args))


# `serve run serve.app:app`: Serve calls a builder function with the (possibly empty) CLI args.
app = app_builder
