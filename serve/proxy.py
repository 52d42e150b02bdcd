"""Which HTTP proxy fronts the service: Ray Serve's own (``serve``, a Python actor) or HAProxy (``haproxy``).

In HAProxy mode (Ray 2.60's high-throughput mode) HAProxy sends each request straight to the ingress replica's
own HTTP server: no hop through a Python actor, and no call back to it for the request's body, which the replica
otherwise fetches from the proxy (2-2.5 ms one at a time, tens of ms under load; docs/SERVING.md, "Proxy").

Ray picks the proxy from its processes' environment when it starts, not per application: ``convfm serve`` starts
its own Ray and sets ``ray_environment(config.proxy)`` first; on a cluster the same variables go in the
environment of ``ray start``. Ray holds a stopping ingress replica open 30 s so that an external load balancer
can deregister it, which made every stop take 34 s: HAProxy retries a refused connection on another replica, so
a short hold is enough for it. Its stats page and metrics listen on every interface at fixed ports (8404, 9101),
so a second service on the machine could not start: each service gets free ports of its own.
"""
from __future__ import annotations

import os
from typing import Callable, Mapping

from convfm.errors import ConfigError

PROXIES = ("serve", "haproxy")
HAPROXY_VAR = "RAY_SERVE_ENABLE_HA_PROXY"
DRAIN_VAR = "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"
STATS_PORT_VAR = "RAY_SERVE_HAPROXY_STATS_PORT"
METRICS_PORT_VAR = "RAY_SERVE_HAPROXY_METRICS_PORT"
# Ray's throughput settings beside it (user code on the replica's event loop, gRPC between deployments), less the
# one that holds a replica's log lines back until 1,000 have gathered: a warning must show when it happens.
THROUGHPUT_VAR = "RAY_SERVE_THROUGHPUT_OPTIMIZED"
LOG_BUFFER_VAR = "RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE"
DRAIN_S = 2  # a stopping replica's hold: HAProxy on the same node takes it out within a second


def ray_environment(proxy: str, pick_port: Callable[[], int],
                    environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The variables to set in the environment of the Ray that serves with ``proxy`` ({} for Serve's own);
    a variable already set in ``environ`` keeps its value, except the switch itself."""
    if proxy != "haproxy":
        return {}
    wanted = {THROUGHPUT_VAR: lambda: "1", LOG_BUFFER_VAR: lambda: "1", DRAIN_VAR: lambda: str(DRAIN_S),
              STATS_PORT_VAR: lambda: str(pick_port()), METRICS_PORT_VAR: lambda: str(pick_port())}
    return {HAPROXY_VAR: "1", **{name: value() for name, value in wanted.items() if name not in environ}}


def proxy_in_effect(environ: Mapping[str, str] = os.environ) -> str:
    """The proxy a Ray started with ``environ`` (a replica's own) puts in front of the service."""
    return "haproxy" if environ.get(HAPROXY_VAR, "0") == "1" else "serve"


def check_proxy(proxy: str, environ: Mapping[str, str] = os.environ) -> None:
    """ConfigError when ``proxy: haproxy`` is asked of a Ray whose environment (``environ``: the process that
    builds the application, started by or beside that Ray) would put Serve's own proxy in front."""
    if proxy == "haproxy" and proxy_in_effect(environ) != "haproxy":
        raise ConfigError(f"proxy: haproxy needs {HAPROXY_VAR}=1 in Ray's environment: `convfm serve` sets it "
                          f"for the Ray it starts; on a cluster, export it (and {DRAIN_VAR}={DRAIN_S}) before "
                          f"`ray start` on every node", field="proxy")
