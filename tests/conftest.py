"""Shared fixtures: small synthetic job markets (generated once) and one local Ray per test session."""
from __future__ import annotations

import os

# Quieter, faster local Ray (see shared RAY_NOTES): set before anything imports ray.
for key, value in {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.1",
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
    "RAY_TRAIN_METRICS_ENABLED": "0",
    "RAY_AUTH_MODE": "disabled",
    "RAY_DEDUP_LOGS": "0",
}.items():
    os.environ.setdefault(key, value)

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from convfm.synth import generate_market, write_market  # noqa: E402


@pytest.fixture(scope="session")
def market_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic market (600 users, 300 jobs, 20k interactions), written once per session."""
    out = tmp_path_factory.mktemp("market")
    write_market(generate_market(users=600, jobs=300, interactions=20_000, seed=0), out)
    return out


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray (2 CPUs, dashboard on: Train's cleanup needs it) for the whole session."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=True, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()
