"""``Server-Timing`` on every answer: where the serving process spent a request's time (W3C Server-Timing; shown
by browsers' developer tools, kept by load balancers' logs, read by ``benchmarks/serve_load.py``).

    Server-Timing: read;dur=2.01, score;dur=4.02, total;dur=7.15          (milliseconds)

- ``read``: from the request's arrival in this process until its whole body is here. Behind Ray Serve's proxy
  that is a call back to the proxy, which sent the request without its body.
- ``score``: the model's work on the batch that held the request (a batch's requests share it), on every answer
  a batch gave (a 503 or 422 it found too).
- ``total``: from arrival until the answer starts. The rest of what a client waits is the way to this process and
  back (Serve's proxy, the network).

A 500 has no header: Starlette answers an unhandled error outside every middleware.
"""
from __future__ import annotations

import time
from contextvars import ContextVar
from typing import Any, Optional

HEADER = b"server-timing"
_SPANS: ContextVar[Optional[dict[str, float]]] = ContextVar("server_timing", default=None)


def add(name: str, seconds: float) -> None:
    """Count ``seconds`` under ``name`` for the request the calling task answers (nothing outside a request)."""
    spans = _SPANS.get()
    if spans is not None:
        spans[name] = spans.get(name, 0.0) + seconds


def header_value(spans: dict[str, float]) -> bytes:
    return ", ".join(f"{name};dur={seconds * 1000:.2f}" for name, seconds in spans.items()).encode()


def parse(value: str) -> dict[str, float]:
    """{name: milliseconds} from a Server-Timing value such as this module writes."""
    spans = {}
    for part in filter(None, (p.strip() for p in value.split(","))):
        name, _, rest = part.partition(";")
        if rest.startswith("dur="):
            spans[name.strip()] = float(rest[4:])
    return spans


class ServerTiming:
    """ASGI middleware (the outermost): times each HTTP request and adds the header to its answer."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, spans = time.perf_counter(), {}
        token = _SPANS.set(spans)

        async def timed_receive() -> dict:
            message = await receive()
            if message["type"] == "http.request" and not message.get("more_body") and "read" not in spans:
                spans["read"] = time.perf_counter() - started
            return message

        async def timed_send(message: dict) -> None:
            if message["type"] == "http.response.start":
                spans["total"] = time.perf_counter() - started
                message = {**message, "headers": [*message.get("headers", ()), (HEADER, header_value(spans))]}
            await send(message)

        try:
            await self.app(scope, timed_receive, timed_send)
        finally:
            _SPANS.reset(token)
