"""``ServeConfig``: how the recommendation service runs (model, address, batching, scaling, limits, auth).

Same contract as ``convfm.config``: frozen, validated in ``__post_init__`` with ``ConfigError`` naming the field
and the allowed range, ``from_dict`` rejects unknown keys. ``from_args`` also accepts the strings that
``serve run serve.app:app_builder key=value`` passes. The API key itself is never part of the config: only the
*name* of the environment variable holding it, so the config can be printed, logged and committed.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import re
from typing import Any, Mapping, Optional, Union

from convfm.config import BaseConfig
from convfm.errors import ConfigError
from convfm.model.retrieval import MAX_CANDIDATES
from convfm.model.score_cache import DEFAULT_BUDGET_MIB
from convfm.store.registry import VERSION_RE
from convfm.validate import check_bool, check_int, check_number, check_text, is_integer, require
from serve.events import DEDUPE_DAYS
from serve.proxy import PROXIES
from serve.traffic import check_traffic, parse_traffic

DEFAULT_MODEL_ENV = "CONVFM_MODEL"
DEFAULT_MODEL = "models/convfm"
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")
# A Host header name without port: "*", "*.domain", a DNS name, an IPv4 address or a bracketed IPv6 one.
_LABEL = r"[a-z0-9]([a-z0-9-]*[a-z0-9])?"
_HOST_NAME = re.compile(rf"^(\*|(\*\.)?{_LABEL}(\.{_LABEL})*|\[[0-9a-f:.]+\])$")
_UNSPECIFIED = ("0.0.0.0", "::")
# Stopping a replica waits for its requests at most this long (Serve's default, 20 s per replica, made a stop
# under load exceed the controller's 30 s shutdown limit and take over a minute).
SHUTDOWN_OPTIONS = {"graceful_shutdown_timeout_s": 5.0, "graceful_shutdown_wait_loop_s": 0.5}


@dataclasses.dataclass(frozen=True)
class ServeConfig(BaseConfig):
    """Service settings; ``replicas`` is a fixed count or ``"auto"`` (autoscaling between min and max)."""

    model: str = DEFAULT_MODEL  # registry entry (models/NAME or s3://.../NAME), a version (NAME/v0002) or a model dir
    model_version: Optional[str] = None  # vNNNN inside a registry entry; None: the entry's `latest`
    host: str = "127.0.0.1"
    port: int = 8000
    replicas: Union[int, str] = 1
    min_replicas: int = 1
    max_replicas: int = 2
    target_ongoing_requests: float = 8.0
    # Serve's defaults (30 s up, 600 s down) leave a load spike over before a replica is added, and the extra
    # replica up for 10 minutes after it.
    upscale_delay_s: float = 5.0
    downscale_delay_s: float = 30.0
    max_ongoing_requests: int = 32
    max_batch_size: int = 16
    # 0: a batch is the requests that queued while the previous one ran; a wait only delays a lone request
    # (docs/SERVING.md, "Batching").
    batch_wait_timeout_s: float = 0.0
    num_cpus: Optional[float] = None  # per ranking replica; None: sized to the node (replica_cpus)
    num_gpus: float = 0.0
    ingress_num_cpus: float = 0.1
    api_key_env: Optional[str] = None  # name of the env var holding the API key; None: no key, /admin/* off
    auth_all_endpoints: bool = False  # with a key: require it on every endpoint but /healthz and /docs
    max_body_bytes: int = 262_144
    request_timeout_s: float = 30.0
    access_log: bool = False
    # Host header names served (DNS rebinding: a web page must not read a loopback service through its own
    # domain); the bound ``host`` is added unless it is 0.0.0.0 or ::. "*" turns the check off.
    allowed_hosts: tuple[str, ...] = LOOPBACK_HOSTS
    # Live catalog and event log (path or URI); None: ``live/`` in the model's registry entry (live_location).
    live_store: Optional[str] = None
    # Days a stored event id is recognised when a client sends it again (a retry): the Api holds, and reads back
    # when it starts, the ids of that many days of events; a retry later than that is stored again. None: every
    # id of the log (the Api's memory and start then grow with the log).
    event_dedupe_days: Optional[float] = DEDUPE_DAYS
    # Candidates per request from the retrieval index (convfm.model.retrieval), re-ranked exactly; 0: exact full
    # scan. docs/SERVING.md ("Catalogs beyond a full scan") has the measurements behind the default.
    retrieval_candidates: int = 0
    # MiB per ranking replica for each recent user's exact catalog scan, reused (kept exact) by their next request
    # (convfm.model.score_cache); 0: none. Unused with retrieval_candidates.
    score_cache_mib: int = DEFAULT_BUDGET_MIB
    # A/B split between registry versions, e.g. {v0007: 0.9, v0008: 0.1}: users routed by a hash of their id
    # (serve.traffic); every Ranker replica holds every version of it. Not combined with model_version.
    traffic: Optional[dict[str, float]] = None
    # The HTTP proxy: Serve's own (a Python actor) or HAProxy, Ray's high-throughput mode (serve.proxy; set in Ray's
    # environment when it starts: `convfm serve` does it for the Ray it starts).
    proxy: str = "serve"

    def __post_init__(self) -> None:
        check_text(self.model, "model", "a non-empty path or URI")
        require(self.model_version is None or (isinstance(self.model_version, str)
                                               and bool(VERSION_RE.match(self.model_version))),
                "model_version", f"must look like v0001 or be null, got {self.model_version!r}")
        check_text(self.host, "host", "a host name or IP")
        check_int(self.port, "port", 1, 65535)
        require(self.replicas == "auto" or (is_integer(self.replicas) and 1 <= self.replicas <= 64), "replicas",
                f"must be an integer in [1, 64] or 'auto', got {self.replicas!r}")
        check_int(self.min_replicas, "min_replicas", 0, 64)
        check_int(self.max_replicas, "max_replicas", max(1, self.min_replicas), 64, low_from="max(1, min_replicas)")
        check_number(self.target_ongoing_requests, "target_ongoing_requests", 0, 1000, low_open=True)
        check_int(self.max_batch_size, "max_batch_size", 1, 256)
        check_int(self.max_ongoing_requests, "max_ongoing_requests", self.max_batch_size, 10_000,
                  low_from="max_batch_size")  # so batches can fill
        check_number(self.batch_wait_timeout_s, "batch_wait_timeout_s", 0, 1)
        check_number(self.upscale_delay_s, "upscale_delay_s", 0, 3600)
        check_number(self.downscale_delay_s, "downscale_delay_s", 0, 3600)
        if self.num_cpus is not None:
            check_number(self.num_cpus, "num_cpus", 0, 64)
        for name, high in (("num_gpus", 8), ("ingress_num_cpus", 8)):
            check_number(getattr(self, name), name, 0, high)
        require(self.api_key_env is None or (isinstance(self.api_key_env, str)
                                             and bool(_ENV_NAME.match(self.api_key_env))),
                "api_key_env", f"must be an environment variable name or null, got {self.api_key_env!r}")
        check_bool(self.auth_all_endpoints, "auth_all_endpoints")
        require(not self.auth_all_endpoints or self.api_key_env is not None, "auth_all_endpoints",
                "needs api_key_env (the variable that holds the key)")
        check_int(self.max_body_bytes, "max_body_bytes", 1024, 64 * 2**20)
        check_number(self.request_timeout_s, "request_timeout_s", 0, 600, low_open=True)
        check_bool(self.access_log, "access_log")
        require(isinstance(self.allowed_hosts, tuple) and bool(self.allowed_hosts)
                and all(isinstance(h, str) and bool(_HOST_NAME.match(h)) for h in self.allowed_hosts),
                "allowed_hosts", "must be a non-empty list of host names without port (lower case; '*', "
                f"'*.example.com', an IP, '[::1]'), got {self.allowed_hosts!r}")
        require(self.live_store is None or (isinstance(self.live_store, str) and bool(self.live_store.strip())),
                "live_store", f"must be a non-empty path or URI, or null, got {self.live_store!r}")
        if self.event_dedupe_days is not None:
            check_number(self.event_dedupe_days, "event_dedupe_days", 0, 3650, low_open=True)
        check_int(self.retrieval_candidates, "retrieval_candidates", 0, MAX_CANDIDATES)
        check_int(self.score_cache_mib, "score_cache_mib", 0, 1 << 20)
        require(self.proxy in PROXIES, "proxy", f"must be one of {', '.join(PROXIES)}, got {self.proxy!r}")
        if self.traffic is not None:
            object.__setattr__(self, "traffic", check_traffic(self.traffic))
            require(self.model_version is None, "traffic", "give traffic or model_version, not both (a split "
                    "names its versions)")

    @classmethod
    def from_args(cls, args: Mapping[str, Any], source: str = "serve args") -> "ServeConfig":
        """From builder args, where ``serve run ... key=value`` gives every value as a string."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        values = {}
        for key, value in args.items():
            if isinstance(value, str) and key in fields:
                value = _parse(key, value, fields[key].default)
            values[key] = value
        return cls.from_dict(values, source=source)

    def most_replicas(self) -> int:
        return self.max_replicas if self.replicas == "auto" else self.replicas

    def replica_cpus(self, node_cpus: float) -> float:
        """CPUs each ranking replica asks for: ``num_cpus``, else a share of the largest node such that the most
        replicas there can be and the ingress fit on it (at most 1, at least 0.1). A replica asking for a whole CPU
        that the node lacks stays STARTING forever (seen with 2 replicas + ingress on 2 cores)."""
        if self.num_cpus is not None:
            return self.num_cpus
        share = (node_cpus - self.ingress_num_cpus) / self.most_replicas()
        return max(0.1, min(1.0, int(share * 100) / 100))

    def ranker_options(self, node_cpus: float) -> dict[str, Any]:
        """``Deployment.options`` of the ranking deployment on a cluster whose largest node has ``node_cpus``."""
        options: dict[str, Any] = {
            "max_ongoing_requests": self.max_ongoing_requests,
            "ray_actor_options": {"num_cpus": self.replica_cpus(node_cpus), "num_gpus": self.num_gpus},
            **SHUTDOWN_OPTIONS,
        }
        if self.replicas == "auto":
            options["autoscaling_config"] = {
                "min_replicas": self.min_replicas, "max_replicas": self.max_replicas,
                "target_ongoing_requests": self.target_ongoing_requests,
                "upscale_delay_s": self.upscale_delay_s, "downscale_delay_s": self.downscale_delay_s,
                # Decide on the last 10 s of load, sampled every 2 s (Serve: 30 s and 10 s), so a replica is added
                # while the load that asked for it still runs.
                "look_back_period_s": 10.0, "metrics_interval_s": 2.0,
            }
        else:
            options["num_replicas"] = self.replicas
        return options

    def trusted_hosts(self) -> tuple[str, ...]:
        """``allowed_hosts`` plus the address the service is bound to (as clients on it write it)."""
        if self.host in _UNSPECIFIED:
            return self.allowed_hosts
        host = self._url_host()
        return self.allowed_hosts + (() if host in self.allowed_hosts else (host,))

    def local_url(self) -> str:
        """The service's URL for a client on this machine (loopback when bound to every address)."""
        return f"http://{self._url_host()}:{self.port}"

    def _url_host(self) -> str:
        host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(self.host, self.host).lower()
        return f"[{host}]" if ":" in host else host

    def api_key_digest(self, environ: Mapping[str, str] = os.environ) -> Optional[str]:
        """SHA-256 of the API key read from ``api_key_env`` (the key itself never leaves this process)."""
        if self.api_key_env is None:
            return None
        key = environ.get(self.api_key_env, "")
        if len(key) < 16:
            raise ConfigError(f"api_key_env: environment variable {self.api_key_env} must hold a key of at "
                              f"least 16 characters ({'unset' if not key else 'too short'})")
        return hashlib.sha256(key.encode()).hexdigest()


def _parse(key: str, text: str, default: Any) -> Any:
    """A CLI string as the type of the field's default (``null``/``none`` -> None)."""
    text = text.strip()
    if text.lower() in ("null", "none", ""):
        return None
    if key == "replicas":
        return text if text == "auto" else _convert(key, text, int)
    if key == "traffic":  # v0007=0.9,v0008=0.1
        return parse_traffic(text)
    if key == "num_cpus":  # a number or null (sized to the node)
        return _convert(key, text, float)
    if isinstance(default, tuple):  # a comma-separated list
        return tuple(item.strip() for item in text.split(","))
    if isinstance(default, bool):
        if text.lower() in ("true", "1", "yes"):
            return True
        if text.lower() in ("false", "0", "no"):
            return False
        raise ConfigError(f"{key}: must be true or false, got {text!r}", field=key)
    if isinstance(default, int):
        return _convert(key, text, int)
    if isinstance(default, float):
        return _convert(key, text, float)
    return text


def _convert(key: str, text: str, kind: type) -> Any:
    try:
        return kind(text)
    except ValueError:
        raise ConfigError(f"{key}: must be {'an integer' if kind is int else 'a number'}, got {text!r}",
                          field=key) from None
