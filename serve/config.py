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

from convfm.config import BaseConfig, _check
from convfm.errors import ConfigError
from convfm.registry import VERSION_RE

DEFAULT_MODEL_ENV = "CONVFM_MODEL"
DEFAULT_MODEL = "models/convfm"
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _number(value: Any, integer: bool = False) -> bool:
    return not isinstance(value, bool) and isinstance(value, int if integer else (int, float))


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
    max_ongoing_requests: int = 32
    max_batch_size: int = 16
    batch_wait_timeout_s: float = 0.005
    num_cpus: float = 1.0  # per ranking replica
    num_gpus: float = 0.0
    ingress_num_cpus: float = 0.1
    api_key_env: Optional[str] = None  # name of the env var holding the API key; None: no key, /admin/* off
    auth_all_endpoints: bool = False  # with a key: require it on every endpoint but /healthz and /docs
    max_body_bytes: int = 262_144
    request_timeout_s: float = 30.0
    access_log: bool = False

    def __post_init__(self) -> None:
        _check(isinstance(self.model, str) and bool(self.model.strip()), "model",
               f"must be a non-empty path or URI, got {self.model!r}")
        _check(self.model_version is None or (isinstance(self.model_version, str)
                                              and bool(VERSION_RE.match(self.model_version))),
               "model_version", f"must look like v0001 or be null, got {self.model_version!r}")
        _check(isinstance(self.host, str) and bool(self.host), "host", f"must be a host name or IP, got {self.host!r}")
        _check(_number(self.port, True) and 1 <= self.port <= 65535, "port",
               f"must be an integer in [1, 65535], got {self.port!r}")
        _check(self.replicas == "auto" or (_number(self.replicas, True) and 1 <= self.replicas <= 64),
               "replicas", f"must be an integer in [1, 64] or 'auto', got {self.replicas!r}")
        _check(_number(self.min_replicas, True) and 0 <= self.min_replicas <= 64, "min_replicas",
               f"must be an integer in [0, 64], got {self.min_replicas!r}")
        _check(_number(self.max_replicas, True) and max(1, self.min_replicas) <= self.max_replicas <= 64,
               "max_replicas", f"must be an integer in [max(1, min_replicas), 64], got {self.max_replicas!r}")
        _check(_number(self.target_ongoing_requests) and 0 < self.target_ongoing_requests <= 1000,
               "target_ongoing_requests", f"must be in (0, 1000], got {self.target_ongoing_requests!r}")
        _check(_number(self.max_batch_size, True) and 1 <= self.max_batch_size <= 256, "max_batch_size",
               f"must be an integer in [1, 256], got {self.max_batch_size!r}")
        _check(_number(self.max_ongoing_requests, True) and self.max_batch_size <= self.max_ongoing_requests <= 10_000,
               "max_ongoing_requests",
               f"must be an integer in [max_batch_size, 10000] so batches can fill, got {self.max_ongoing_requests!r}")
        _check(_number(self.batch_wait_timeout_s) and 0 <= self.batch_wait_timeout_s <= 1, "batch_wait_timeout_s",
               f"must be in [0, 1] seconds, got {self.batch_wait_timeout_s!r}")
        for name, high in (("num_cpus", 64), ("num_gpus", 8), ("ingress_num_cpus", 8)):
            value = getattr(self, name)
            _check(_number(value) and 0 <= value <= high, name, f"must be in [0, {high}], got {value!r}")
        _check(self.api_key_env is None or (isinstance(self.api_key_env, str) and bool(_ENV_NAME.match(self.api_key_env))),
               "api_key_env", f"must be an environment variable name or null, got {self.api_key_env!r}")
        _check(isinstance(self.auth_all_endpoints, bool), "auth_all_endpoints",
               f"must be true or false, got {self.auth_all_endpoints!r}")
        _check(not self.auth_all_endpoints or self.api_key_env is not None, "auth_all_endpoints",
               "needs api_key_env (the variable that holds the key)")
        _check(_number(self.max_body_bytes, True) and 1024 <= self.max_body_bytes <= 64 * 2**20, "max_body_bytes",
               f"must be an integer in [1024, 67108864], got {self.max_body_bytes!r}")
        _check(_number(self.request_timeout_s) and 0 < self.request_timeout_s <= 600, "request_timeout_s",
               f"must be in (0, 600] seconds, got {self.request_timeout_s!r}")
        _check(isinstance(self.access_log, bool), "access_log", f"must be true or false, got {self.access_log!r}")

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

    def ranker_options(self) -> dict[str, Any]:
        """``Deployment.options`` of the ranking deployment."""
        options: dict[str, Any] = {
            "max_ongoing_requests": self.max_ongoing_requests,
            "ray_actor_options": {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus},
        }
        if self.replicas == "auto":
            options["autoscaling_config"] = {
                "min_replicas": self.min_replicas, "max_replicas": self.max_replicas,
                "target_ongoing_requests": self.target_ongoing_requests,
            }
        else:
            options["num_replicas"] = self.replicas
        return options

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
    if isinstance(default, bool):
        if text.lower() in ("true", "1", "yes"):
            return True
        if text.lower() in ("false", "0", "no"):
            return False
        raise ConfigError(f"{key}: must be true or false, got {text!r}")
    if isinstance(default, int):
        return _convert(key, text, int)
    if isinstance(default, float):
        return _convert(key, text, float)
    return text


def _convert(key: str, text: str, kind: type) -> Any:
    try:
        return kind(text)
    except ValueError:
        raise ConfigError(f"{key}: must be {'an integer' if kind is int else 'a number'}, got {text!r}") from None
