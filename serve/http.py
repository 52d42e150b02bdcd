"""The HTTP API: one FastAPI app over a backend, run by the Serve ingress (``serve/app.py``) or by plain
uvicorn over a ``LocalBackend`` (benchmarks, tests without Ray).

Security (docs/SERVING.md): a Host header not in ``allowed_hosts`` gets 400 before anything else (DNS
rebinding); bodies over ``max_body_bytes`` get 413 before they are parsed; ``/admin/*`` needs
the ``X-API-Key`` header matching the configured key (401 missing, 403 wrong, 403 when no key is configured:
admin is then off); with ``auth_all`` every endpoint but ``/healthz`` and the docs needs it. Only the key's
SHA-256 is held here. Bad input is 422 with a one-line ``message`` plus per-field ``detail``, also for bodies
that are not JSON at all (non-UTF-8 bytes, absurd nesting) or give a key twice in one object
(``serve.json_body``). Every status an endpoint can answer is declared in its OpenAPI ``responses`` with a body
model; ``tests/reliability/test_fuzz_api.py`` holds the app to that.
"""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import pathlib
import time
from typing import Annotated, Any, Optional, Protocol, Sequence

from fastapi import Depends, FastAPI, HTTPException, Path, Request, Security
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.trustedhost import TrustedHostMiddleware

from serve.config import LOOPBACK_HOSTS
from serve.responses import (
    ErrorResponse, EventsResponse, Health, JobDetail, JobsResponse, ModelInfo, RecommendResponse, ReloadResponse,
    ScoreResponse, ValidationErrorResponse,
)
from serve.schemas import Event, EventsRequest, JobsRequest, RecommendRequest, ReloadRequest, ScoreRequest
from convfm.store.live_catalog import CatalogStore
from serve.event_overlay import EventOverlay
from serve.events import EventWriter
from serve.json_body import DuplicateKey, StrictJsonRoute
from serve.live_catalog import answer, catch_up, job_detail, write_jobs
from serve.model_slot import ModelSlot
from serve.replies import ServiceError
from serve import timing

log = logging.getLogger(__name__)
API_KEY_HEADER = "X-API-Key"
# Every status an endpoint can answer besides 200 is declared in the OpenAPI schema (the fuzz tests in
# tests/reliability check each response against it); a 5xx other than these is a bug.
ERRORS: dict[int, tuple[Any, str]] = {
    401: (ErrorResponse, "missing API key"),
    403: (ErrorResponse, "wrong API key, or admin and writing endpoints disabled (no key configured)"),
    404: (ErrorResponse, "unknown job id"),
    409: (ReloadResponse, "reload failed on some replica; the old model keeps serving"),
    413: (ErrorResponse, "request body larger than max_body_bytes"),
    422: (ValidationErrorResponse, "invalid request: a one-line message and per-field errors"),
    503: (ErrorResponse, "model not loaded yet, a ranking replica or the event log is unavailable (retry)"),
    504: (ErrorResponse, "the ranking replica did not answer in request_timeout_s"),
}


def _responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": ERRORS[code][0], "description": ERRORS[code][1]} for code in codes}


def _text(value: Any) -> str:
    """A string that can be encoded as UTF-8 (JSON allows lone surrogates such as "\\ud800"; UTF-8 does not)."""
    return str(value).encode("utf-8", "backslashreplace").decode("utf-8")


class Backend(Protocol):
    async def recommend(self, request: RecommendRequest) -> dict[str, Any]: ...
    async def score(self, request: ScoreRequest) -> dict[str, Any]: ...
    async def job(self, job_id: str) -> dict[str, Any]: ...
    async def health(self) -> tuple[int, dict[str, Any]]: ...
    async def model_info(self) -> dict[str, Any]: ...
    async def reload(self, version: Optional[str],
                     traffic: Optional[dict[str, float]] = None) -> tuple[int, dict[str, Any]]: ...
    async def post_events(self, events: list[Event]) -> dict[str, Any]: ...
    async def put_jobs(self, request: JobsRequest) -> dict[str, Any]: ...


class BodySizeLimit:
    """ASGI middleware: 413 for bodies over ``max_bytes`` (by Content-Length, or counted while buffering a
    chunked body), before anything parses them."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            return await self._reject(send)
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > self.max_bytes:
                return await self._reject(send)
        body, replayed = b"".join(chunks), False

        async def replay() -> dict:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        return await self.app(scope, replay, send)

    async def _reject(self, send: Any) -> None:
        response = JSONResponse({"detail": f"request body larger than {self.max_bytes} bytes"}, status_code=413)
        await send({"type": "http.response.start", "status": 413, "headers": response.raw_headers})
        await send({"type": "http.response.body", "body": response.body})


def _validation_response(exc: RequestValidationError, content_type: str = "application/json") -> JSONResponse:
    """422 with per-field errors (no echo of the input: it may be huge) and a one-line summary; a body sent as
    another ``content_type`` than JSON is named as such (FastAPI reads it as no object at all)."""
    detail = [{"loc": [_text(p) for p in e.get("loc", ())], "msg": _text(e.get("msg", "")), "type": e.get("type", "")}
              for e in exc.errors()]
    if any(d["type"] == "json_invalid" for d in detail):
        message = "body is not valid JSON"
    elif "json" not in content_type.lower() and any(d["loc"] == ["body"] for d in detail):
        got = _text(content_type)[:80] or "none"
        message = f"body must be JSON sent as Content-Type: application/json, got {got!r}"
    else:
        message = "; ".join(f"{'.'.join(d['loc'][1:]) or 'body'}: {d['msg']}" for d in detail[:5])
    return JSONResponse({"message": message, "detail": detail}, status_code=422)


def _invalid_body(reason: str, loc: tuple[str, ...] = ("body",)) -> JSONResponse:
    return JSONResponse({"message": reason, "detail": [{"loc": list(loc), "msg": reason, "type": "value_error"}]},
                        status_code=422)


def _key_checker(digest: Optional[str]) -> Any:
    header = APIKeyHeader(name=API_KEY_HEADER, auto_error=False, description="the service's API key")

    # No Annotated[...] here: with postponed annotations FastAPI could not resolve the local `header`.
    def check(key: Optional[str] = Security(header)) -> None:
        if digest is None:
            raise HTTPException(403, "admin and writing endpoints are disabled: start the service with an API key "
                                     "(api_key_env)")
        if not key:
            raise HTTPException(401, f"missing {API_KEY_HEADER} header", headers={"WWW-Authenticate": API_KEY_HEADER})
        if not hmac.compare_digest(hashlib.sha256(key.encode()).hexdigest(), digest):
            raise HTTPException(403, "invalid API key")

    return check


def build_http_app(
    backend: Backend, api_key_digest: Optional[str] = None, auth_all: bool = False, max_body_bytes: int = 262_144,
    allowed_hosts: Sequence[str] = LOOPBACK_HOSTS,
) -> FastAPI:
    """The FastAPI app of the service (OpenAPI at /docs) calling ``backend``; requests whose Host header is not
    in ``allowed_hosts`` get 400 before anything else runs."""
    require_key = Depends(_key_checker(api_key_digest))
    guarded = [require_key] if auth_all else []
    auth = (401, 403) if auth_all else ()
    app = FastAPI(title="convfm recommendations", version="1",
                  description="ConvFM job recommendations: top-k for a user or profile, scores, model admin.")
    app.router.route_class = StrictJsonRoute  # a key given twice in a body is a 422, not "the last one wins"
    app.add_middleware(BodySizeLimit, max_bytes=max_body_bytes)
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts), www_redirect=False)
    app.add_middleware(timing.ServerTiming)  # outermost: times everything, parses nothing

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _validation_response(exc, request.headers.get("content-type", ""))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Any:
        # FastAPI answers 400 "error parsing the body" for JSON that json.loads rejects with a ValueError other
        # than JSONDecodeError: bytes that are not UTF-8, integers over 4300 digits (and RecursionError for
        # nesting thousands deep). That is bad input like any other: 422 with a message.
        if exc.status_code == 400 and isinstance(exc.__cause__, DuplicateKey):
            cause = exc.__cause__
            return _validation_response(RequestValidationError([{"loc": cause.loc, "msg": str(cause),
                                                                 "type": "value_error"}]))
        if exc.status_code == 400 and isinstance(exc.__cause__, (ValueError, RecursionError)):
            cause = exc.__cause__
            reason = ("not valid UTF-8" if isinstance(cause, UnicodeDecodeError) else
                      "nested too deeply" if isinstance(cause, RecursionError) else
                      _text(cause).splitlines()[0].split(";")[0][:200])
            return _invalid_body(f"body is not valid JSON: {reason}")
        return await http_exception_handler(request, exc)

    @app.exception_handler(ServiceError)
    async def service_error(_: Request, exc: ServiceError) -> JSONResponse:
        if exc.status == 422:  # the model cannot honour a valid-looking request (e.g. a filter it has no column for)
            field = exc.detail.split(":", 1)[0] if ": " in exc.detail else ""
            return _invalid_body(exc.detail, ("body", *field.split("."))) if field else _invalid_body(exc.detail)
        return JSONResponse({"detail": exc.detail}, status_code=exc.status)

    @app.post("/recommend", response_model=RecommendResponse, dependencies=guarded,
              responses=_responses(*auth, 413, 422, 503, 504))
    async def recommend(request: RecommendRequest) -> dict[str, Any]:
        """Top-k jobs for a known user, a cold-start profile, or (unknown user) popular jobs."""
        return await backend.recommend(request)

    @app.post("/score", response_model=ScoreResponse, dependencies=guarded,
              responses=_responses(*auth, 413, 422, 503, 504))
    async def score(request: ScoreRequest) -> dict[str, Any]:
        """Scores of given jobs in request order; unknown job ids get null and are listed."""
        return await backend.score(request)

    @app.get("/jobs/{job_id:path}", response_model=JobDetail, dependencies=guarded,
             responses=_responses(*auth, 404, 422, 503, 504))
    async def job(job_id: Annotated[str, Path(min_length=1, max_length=200)]) -> dict[str, Any]:
        """Metadata of one job of the serving catalog (the model's plus the live catalog's), with its expiry. An
        id may hold "/" (``/jobs/a%2Fb`` or ``/jobs/a/b``); outer spaces are cut, as in request bodies."""
        return await backend.job(job_id.strip())

    @app.post("/jobs", response_model=JobsResponse, dependencies=[require_key],
              responses={**_responses(401, 403, 413, 422, 503, 504), 409: {
                  "model": ErrorResponse, "description": "another writer took this catalog version; nothing kept"}})
    async def put_jobs(body: JobsRequest) -> dict[str, Any]:
        """Add, replace and expire jobs without retraining: one new live catalog version, which every replica
        applies before its next answer."""
        return await backend.put_jobs(body)

    @app.head("/healthz", include_in_schema=False)  # load balancers' checks may send HEAD
    @app.get("/healthz", response_model=Health,
             responses={503: {"model": Health, "description": "loading, starting, or the first load failed"}})
    async def healthz() -> JSONResponse:
        """200 once a model is loaded and serving, 503 before (loading) or if the first load failed."""
        status, body = await backend.health()
        return JSONResponse(body, status_code=status)

    @app.get("/model", response_model=ModelInfo, dependencies=guarded, responses=_responses(*auth, 503, 504))
    async def model() -> dict[str, Any]:
        """Name, version, training metrics and load time of the serving model, and the last reload."""
        return await backend.model_info()

    @app.post("/admin/reload", response_model=ReloadResponse, dependencies=[require_key],
              responses=_responses(401, 403, 409, 413, 422))
    async def reload(body: Optional[ReloadRequest] = None) -> JSONResponse:
        """Load a registry version (default: latest), or hold an A/B ``traffic`` split, on every replica; on
        failure the old version or split keeps serving."""
        status, result = await backend.reload(body.version if body else None, body.traffic if body else None)
        return JSONResponse(ReloadResponse(**result).model_dump(), status_code=status)

    @app.post("/events", response_model=EventsResponse, dependencies=[require_key],
              responses=_responses(401, 403, 413, 422, 503))
    async def events(body: EventsRequest) -> dict[str, Any]:
        """Store feedback events in the append-only log (answered once stored); they count at once for
        ``exclude_seen`` and the user's history. Duplicate event ids are ignored; unknown jobs are flagged."""
        return await backend.post_events(body.events)

    return app


def unwrap(result: dict[str, Any]) -> Any:
    """Backend results travel as {"ok": value} or {"error": {"status", "detail"}} (picklable, no exceptions), a
    scored one with its batch's scoring time ("score_s", for the answer's Server-Timing)."""
    if "score_s" in result:
        timing.add("score", result["score_s"])
    if "error" in result:
        raise ServiceError(result["error"]["status"], result["error"]["detail"])
    return result["ok"]


def wrap(value: Any) -> dict[str, Any]:
    if isinstance(value, ServiceError):
        return {"error": {"status": value.status, "detail": value.detail}}
    return {"ok": value}


def reload_outcome(reports: list[dict[str, Any]], previous: Optional[str]) -> tuple[int, dict[str, Any]]:
    """One reload answer from per-replica reports: 200 when every replica serves the new version; 409 when one
    failed or they ended on different versions (a 200 would let the ingress un-pin them)."""
    versions = {r.get("version") for r in reports}
    ok = bool(reports) and all(r.get("ok") for r in reports) and len(versions) == 1
    previous = previous or next((r["previous_version"] for r in reports if r.get("previous_version")), None)
    error = next((r.get("error") for r in reports if not r.get("ok")), None if reports else "no replica answered")
    if error is None and not ok:
        error = f"replicas ended on different versions: {sorted(versions, key=str)}"
    version = versions.pop() if len(versions) == 1 else None
    body = {"ok": ok, "version": version, "previous_version": previous, "error": error, "replicas": reports}
    return (200 if ok else 409), body


class LocalBackend:
    """Backend over a ``ModelSlot`` in this process (no Ray): each request scored on its own; with a
    ``live_store``, events and catalog changes are written there and the slot's scorers follow both."""

    def __init__(self, slot: ModelSlot, live_store: Optional[str | pathlib.Path] = None) -> None:
        self.slot = slot
        self.events = EventWriter(live_store)  # None: POST /events answers 503
        self.catalog = None if live_store is None else CatalogStore(live_store)  # None: POST /jobs answers 503
        if slot is not None and self.catalog is not None:
            slot.overlay = EventOverlay(self.events.root)
            slot.prepare = lambda scorer: catch_up(scorer, self.catalog)
            if slot.current is not None:  # as ``ModelSlot.load``: the live catalog first, then the events on it
                catch_up(slot.current, self.catalog)
                slot.overlay.admit(slot.current)

    async def _run(self, method: str, request: Any) -> dict[str, Any]:
        started = time.perf_counter()
        result = (await asyncio.to_thread(answer, self.slot.require(), method, [request]))[0]
        return unwrap({**wrap(result), "score_s": time.perf_counter() - started})

    async def put_jobs(self, request: JobsRequest) -> dict[str, Any]:
        known = columns = None
        if self.slot.current is not None:
            columns = self.slot.current.extractor.extra_columns.get("jobs", {})
        if self.slot.current is not None and request.expire:  # after the deltas another writer may have added
            await asyncio.to_thread(catch_up, self.slot.current, self.catalog)
            known = self.slot.current.known_jobs(request.expire)
        body = await asyncio.to_thread(write_jobs, self.catalog, request, known, columns)
        await asyncio.to_thread(catch_up, self.slot.require(), self.catalog, body["catalog_version"])
        return body

    async def recommend(self, request: RecommendRequest) -> dict[str, Any]:
        await self._follow_events()
        result = self.events.impression(await self._run("recommend_many", request))
        if self.events.due():
            await self.events.flush()
        return result

    async def score(self, request: ScoreRequest) -> dict[str, Any]:
        await self._follow_events()
        return await self._run("score_many", request)

    async def _follow_events(self) -> None:
        if self.slot.overlay is not None:
            await self.slot.overlay.follow(await self.events.position())

    async def job(self, job_id: str) -> dict[str, Any]:
        return job_detail(self.slot.require(), job_id)

    async def health(self) -> tuple[int, dict[str, Any]]:
        return self.slot.health()

    async def model_info(self) -> dict[str, Any]:
        return self.slot.info()

    async def reload(self, version: Optional[str],
                     traffic: Optional[dict[str, float]] = None) -> tuple[int, dict[str, Any]]:
        previous = self.slot.current.version if self.slot.current else None
        if traffic is not None:  # one model in this process: splits need the Serve app's Rankers
            return reload_outcome([{"ok": False, "version": previous, "error": "traffic splits need the Ray Serve "
                                    "app (convfm serve); this backend serves one version"}], previous)
        return reload_outcome([await asyncio.to_thread(self.slot.load, version)], previous)

    async def post_events(self, events: list[Event]) -> dict[str, Any]:
        await self.events.flush()  # the impressions these events may cite go first
        known = self.slot.current.known_jobs([e.job_id for e in events]) if self.slot.current else None
        body, appended = await self.events.append(events, known)
        if appended.segment is not None and self.slot.overlay is not None:
            self.slot.overlay.live.add(appended.segment, appended.records)
        return body
