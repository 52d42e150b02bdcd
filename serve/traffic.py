"""A/B traffic split between model versions: validation and stable per-user routing. Plain Python, no Ray.

A split such as ``{"v0007": 0.9, "v0008": 0.1}`` gives every user one version by a hash of the user id
(BLAKE2b, never Python's salted ``hash()``), so the same user gets the same version across requests, replicas
and restarts. The versions, in version order, own consecutive ranges of [0, 1): ramping the newest version up
(0.1 -> 0.2) only moves users into it, never a user out of it.

A request without a user id (a profile or a history only) has nothing stable to hash: it goes to the *control*
version, the one with the largest weight (ties: the oldest), so untracked traffic never sees an experiment.
"""
from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any, Mapping, Optional

from convfm.errors import ArtifactError, ConfigError
from convfm.store.registry import VERSION_RE, locate

Split = dict[str, float]  # version -> share of users


def parse_traffic(text: str, field: str = "traffic") -> Split:
    """``"v0007=0.9,v0008=0.1"`` (the CLI form) as a split; ConfigError naming ``field`` when malformed."""
    split: Split = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        version, sep, weight = part.partition("=")
        if not sep:
            raise ConfigError(f"{field}: {part!r} is not VERSION=WEIGHT (e.g. v0007=0.9,v0008=0.1)", field=field)
        try:
            split[version.strip()] = float(weight)
        except ValueError:
            raise ConfigError(f"{field}: weight of {version.strip()} must be a number, got {weight!r}",
                              field=field) from None
    return check_traffic(split, field)


def check_traffic(value: Any, field: str = "traffic") -> Split:
    """A valid split (versions like v0001, weights > 0 summing to 1), in version order; else ConfigError."""
    if not isinstance(value, Mapping) or not value:
        raise ConfigError(f"{field}: must be a mapping of versions to weights such as {{v0007: 0.9, v0008: 0.1}}, "
                          f"got {value!r}", field=field)
    for version, weight in value.items():
        if not isinstance(version, str) or not VERSION_RE.match(version):
            raise ConfigError(f"{field}: version {version!r} must look like v0001", field=field)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 < weight <= 1:
            raise ConfigError(f"{field}: weight of {version} must be a number in (0, 1], got {weight!r}", field=field)
    total = math.fsum(value.values())
    if abs(total - 1.0) > 1e-6:
        raise ConfigError(f"{field}: weights must sum to 1, got {total:g}", field=field)
    return {v: float(value[v]) for v in sorted(value, key=lambda v: int(v[1:]))}


def check_versions_exist(model: str | Path, split: Mapping[str, float], field: str = "traffic") -> None:
    """Every version of ``split`` is published in the registry entry ``model``; ConfigError naming ``field``."""
    for version in split:
        try:
            locate(model, version)
        except ArtifactError as exc:
            raise ConfigError(f"{field}: {exc}", field=field) from None


def control(split: Mapping[str, float]) -> str:
    """The version with the largest weight (ties: the oldest): it answers requests without a user id."""
    return max(split, key=lambda v: (split[v], -int(v[1:])))


def bucket(user_id: str) -> float:
    """A user's fixed point in [0, 1): the first 8 bytes of BLAKE2b of the id, as a fraction."""
    digest = hashlib.blake2b(str(user_id).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def route(split: Mapping[str, float], user_id: Optional[str]) -> str:
    """The version that answers ``user_id`` under ``split`` (a checked split, in version order)."""
    if user_id is None:
        return control(split)
    point, edge = bucket(user_id), 0.0
    for version, weight in split.items():
        edge += weight
        if point < edge:
            return version
    return next(reversed(split))  # rounding: a point above the sum of the weights
