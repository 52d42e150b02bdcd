"""Shared fixtures: a small synthetic job market (generated once), one local Ray per test session, a tiny
trained job-market model exported and published once (used by tests/serve and tests/reliability), and
``randomize`` for model tests."""
from __future__ import annotations

import os

# Quieter, faster local Ray (see shared RAY_NOTES): set before anything imports ray.
for key, value in {
    # One torch (OpenMP) thread per process: the suite always has Ray processes beside the one training, and
    # on a 2-core box two spinning OpenMP threads that share a core with them ran 10-15x slower (measured).
    "OMP_NUM_THREADS": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.1",
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
    "RAY_TRAIN_METRICS_ENABLED": "0",
    # No core metrics export (nothing here reads Ray's Prometheus metrics; Serve's autoscaling has its own): an
    # idle local Ray measured 10.6% -> 9.1% of a core, for each of the Rays the suite runs side by side.
    "RAY_enable_metrics_collection": "0",
    "RAY_AUTH_MODE": "disabled",
    "RAY_DEDUP_LOGS": "0",
    # Ray gives its dashboard 60 s to come up; a loaded CI box (two test workers, other Rays starting) needs more.
    "RAY_DASHBOARD_STARTUP_TIMEOUT_S": "180",
    # The S3 tests talk to moto's in-process server, which accepts any credentials: fake ones, set before Ray
    # starts so its workers inherit them, and no EC2 metadata lookups (seconds of timeouts without AWS).
    "AWS_ACCESS_KEY_ID": "convfm-test",
    "AWS_SECRET_ACCESS_KEY": "convfm-test",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}.items():
    os.environ.setdefault(key, value)
# The session's Ray serves behind Serve's own proxy (ServeConfig's default), whatever the shell exported
# (serve.proxy: the ingress refuses another).
os.environ.update({"RAY_SERVE_ENABLE_HA_PROXY": "0", "RAY_SERVE_ENABLE_DIRECT_INGRESS": "0",
                   "RAY_SERVE_THROUGHPUT_OPTIMIZED": "0"})

import logging  # noqa: E402
import shutil  # noqa: E402
import types  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Callable  # noqa: E402

import pytest  # noqa: E402

from convfm.data.synth import generate_market, write_market  # noqa: E402


@pytest.fixture(scope="session")
def market_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic market (600 users, 300 jobs, 20k interactions), written once per session."""
    out = tmp_path_factory.mktemp("market")
    write_market(generate_market(users=600, jobs=300, interactions=20_000, seed=0), out)
    return out


def cut_table_example(root: Path, formats: dict[str, str]) -> Path:
    """configs/table_example.csv cut into the folder distributed preparation reads: train (3,000 rows), valid and
    test (500 each), each split as ``formats`` says ("parquet": typed, in 700-row groups; "csv"/"tsv": the text), and
    the spec table.yaml (configs/table_example.yaml with ``path: .``). Returns ``root``."""
    import pandas as pd
    import yaml

    configs = Path(__file__).resolve().parents[1] / "configs"
    text = pd.read_csv(configs / "table_example.csv", dtype=str)
    typed = text.astype({"price": float, "hour": int})  # as Parquet holds them
    root.mkdir(parents=True, exist_ok=True)
    for name, rows in {"train": slice(0, 3000), "valid": slice(3000, 3500), "test": slice(3500, None)}.items():
        if formats[name] == "parquet":
            typed.iloc[rows].to_parquet(root / f"{name}.parquet", row_group_size=700)
        else:
            text.iloc[rows].to_csv(root / f"{name}.{formats[name]}", index=False,
                                   sep="\t" if formats[name] == "tsv" else ",")
    spec = yaml.safe_load((configs / "table_example.yaml").read_text())
    (root / "table.yaml").write_text(yaml.safe_dump({**spec, "path": "."}))
    return root


@pytest.fixture(scope="session")
def table_example() -> Callable[[Path, dict[str, str]], Path]:
    """``table_example(root, formats) -> root``: ``cut_table_example``, for a table written where a test needs it."""
    return cut_table_example


@pytest.fixture(scope="session")
def table_splits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``cut_table_example`` once per session: Parquet train, CSV valid, TSV test (every reader)."""
    formats = {"train": "parquet", "valid": "csv", "test": "tsv"}
    return cut_table_example(tmp_path_factory.mktemp("table"), formats)


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray (2 CPUs, dashboard on: Train's cleanup needs it) for SESSION_RAY_FILES, stopped after the last
    of them (``pytest_runtest_teardown``). A start that times out (Ray waits 30 s for its raylet, whatever the
    load) is tried once more before the tests that need it fail."""
    import ray

    for attempt in (1, 2):
        if ray.is_initialized():
            break
        try:
            ray.init(num_cpus=2, include_dashboard=True, log_to_driver=False, configure_logging=False)
        except Exception as exc:  # noqa: BLE001 - Ray raises a bare Exception on a start-up timeout
            ray.shutdown()
            if attempt == 2:
                raise
            logging.getLogger(__name__).warning("local Ray did not start (%s); trying once more", exc)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def serve_app(ray_local):
    """``with serve_app(config) as url:`` runs ``serve.app.build_app(config)`` on the session's Serve instance
    (controller and HTTP proxy on 127.0.0.1, one free port; ``config.port`` is set to it) and deletes the app
    afterwards. The modules that deploy the app run one after another and share the instance (a Serve start per
    module cost a controller and a proxy each); ``pytest_runtest_teardown`` shuts it down after the last of them.
    """
    import contextlib
    import dataclasses

    from ray import serve

    from convfm.cli.serve import free_port
    from serve.app import APP_NAME, build_app

    port = free_port()

    @contextlib.contextmanager
    def deployed(config):
        serve.start(http_options={"host": "127.0.0.1", "port": port})  # joins the instance while it runs
        serve.run(build_app(dataclasses.replace(config, port=port)), name=APP_NAME, route_prefix="/")
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            serve.delete(APP_NAME)

    yield deployed


SERVE_FILES = pytest.StashKey[frozenset]()  # the files with a test that uses serve_app (set at collection)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None):
    """After the fixtures are finalized, stop what would idle until the session ends: the Serve instance when the
    next test is not in a file that uses ``serve_app`` (a later one starts it again), and the session's Ray after
    the last of SESSION_RAY_FILES (they run first and together, see ``pytest_collection_modifyitems``; an idle Ray
    measured ~10% of a core, an idle Serve controller and proxy 5%, while this worker runs other tests)."""
    yield
    import ray

    if not ray.is_initialized():  # the session's Ray failed to start, or is already stopped
        return
    after = None if nextitem is None else file_of(nextitem.nodeid)
    serve_files = item.config.stash.get(SERVE_FILES, frozenset())
    if file_of(item.nodeid) in serve_files and after not in serve_files:
        from ray import serve

        serve.shutdown()
    if file_of(item.nodeid) in SESSION_RAY_FILES and after not in SESSION_RAY_FILES:
        ray.shutdown()


@pytest.fixture(scope="session")
def tiny(market_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> types.SimpleNamespace:
    """A tiny job-market model (2 epochs, small dims): data, model, model_dir (an export with serving.json and
    train_config.json) and the registry entry ``registry/tiny`` holding v0001."""
    from convfm.store.artifacts import save_model_dir
    from convfm.config import DataConfig, ModelConfig, TrainConfig
    from convfm.data.prepare import prepare_data
    from convfm.store.registry import publish
    from convfm.store.serving_data import serving_extra_json
    from convfm.training.in_process import fit_in_process

    model_config = ModelConfig(embedding_dim=8, conv_filters=8, hidden_dims=(16, 8), dropout_rate=0.1)
    train_config = TrainConfig(num_epochs=2, batch_size=512, eval_negatives=20, use_amp=False, patience=2)
    data = prepare_data(DataConfig(path=str(market_dir)))
    model, history = fit_in_process(data, model_config, train_config)
    root = tmp_path_factory.mktemp("serve_models")
    model_dir = save_model_dir(root / "export", model, data.extractor, metrics=history[-1],
                               extra_json={**serving_extra_json(data), "train_config": train_config.to_dict(),
                                           "data_config": data.config.to_dict()})
    publish(model_dir, root / "registry", "tiny")
    return types.SimpleNamespace(data=data, model=model, model_dir=model_dir, registry=root / "registry",
                                 entry=root / "registry" / "tiny", root=root, market=market_dir)


@pytest.fixture(scope="session")
def extra_board(tmp_path_factory: pytest.TempPathFactory) -> types.SimpleNamespace:
    """A job board with its own columns (``data.extra_columns``: jobs ``Industry``, ``tags`` and ``Requirements``,
    HTML text naming the next job's skills; users ``industry``, ``years``, a number, and ``Headline``, text naming
    their first skill) on a small synthetic market, a tiny model trained on it (1 epoch) published as
    ``registry/board``; ``extra`` the declaration."""
    import numpy as np
    import pandas as pd

    from convfm.config import DataConfig, ModelConfig, TrainConfig
    from convfm.data.prepare import prepare_data
    from convfm.store.artifacts import save_model_dir
    from convfm.store.registry import publish
    from convfm.store.serving_data import serving_extra_json
    from convfm.training.in_process import fit_in_process

    root = tmp_path_factory.mktemp("board")
    write_market(generate_market(users=300, jobs=200, interactions=3000, seed=0), root / "data")
    jobs, users = pd.read_csv(root / "data" / "jobs.csv"), pd.read_csv(root / "data" / "users.csv")
    rng = np.random.default_rng(0)
    jobs["Industry"] = rng.choice(["IT", "Finance", "Health", None], size=len(jobs))
    jobs["tags"] = ["remote;python" if i % 2 else "onsite" for i in range(len(jobs))]
    following = jobs["skills"].fillna("").shift(-1, fill_value="")
    jobs["Requirements"] = [f"<ul><li>{skills.replace(';', ', ')}</li></ul>" for skills in following]
    users["industry"] = rng.choice(["it", " Finance ", "health"], size=len(users))
    users["years"] = np.where(rng.random(len(users)) < 0.2, np.nan, rng.integers(0, 30, size=len(users)))
    users["Headline"] = [f"Senior {skills.split(';')[0]} person" for skills in users["skills"].fillna("")]
    jobs.to_csv(root / "data" / "jobs.csv", index=False)
    users.to_csv(root / "data" / "users.csv", index=False)
    extra = {"jobs": {"Industry": "category", "tags": "list", "Requirements": "text"},
             "users": {"industry": "category", "years": "number", "Headline": "text"}}
    data = prepare_data(DataConfig(path=str(root / "data"), extra_columns=extra))
    model, history = fit_in_process(data, ModelConfig(embedding_dim=8, conv_filters=8, hidden_dims=(16, 8)),
                                    TrainConfig(num_epochs=1, batch_size=256, eval_negatives=20, use_amp=False))
    export = save_model_dir(root / "export", model, data.extractor, metrics=history[-1],
                            extra_json={**serving_extra_json(data), "data_config": data.config.to_dict()})
    publish(export, root / "registry", "board")
    return types.SimpleNamespace(root=root / "data", data=data, model=model, entry=root / "registry" / "board",
                                 extra=extra)


@pytest.fixture(scope="session")
def published_old(tmp_path_factory: pytest.TempPathFactory) -> types.SimpleNamespace:
    """A warm start's two markets: ``market_dir``'s market as it stood at 60% of its log (``older_part``), a
    tiny model trained on it (1 epoch) published as ``registry/old`` v0001; ``old`` its prepared data, ``full``
    the whole market (``market_dir``'s, written again)."""
    from convfm.config import DataConfig, ModelConfig, TrainConfig
    from convfm.data.prepare import prepare_data
    from convfm.data.synth import older_part
    from convfm.store.artifacts import save_model_dir
    from convfm.store.registry import publish
    from convfm.training.in_process import fit_in_process

    root = tmp_path_factory.mktemp("warm")
    market = generate_market(users=600, jobs=300, interactions=20_000, seed=0)
    write_market(market, root / "full")
    write_market(older_part(market, 0.6), root / "old")
    old = prepare_data(DataConfig(path=str(root / "old")))
    model_config = ModelConfig(embedding_dim=8, conv_filters=8, hidden_dims=(16, 8), dropout_rate=0.1)
    model, history = fit_in_process(old, model_config, TrainConfig(num_epochs=1, batch_size=512, use_amp=False))
    model_dir = save_model_dir(root / "export", model, old.extractor, metrics=history[-1])
    publish(model_dir, root / "registry", "old")
    return types.SimpleNamespace(old=old, model=model, entry=root / "registry" / "old", full=root / "full")


def publish_broken(entry: Path, kind: str = "truncated") -> str:
    """Publish a copy of the latest version, then break it on disk; returns the new version name."""
    from convfm.store.registry import publish, resolve

    latest = resolve(entry)
    staging = entry.parent.parent / f"broken-{kind}"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(latest, staging)
    version = publish(staging, entry.parent, entry.name).name
    (entry / "latest").write_text(latest.name + "\n")  # keep `latest` on the good version
    weights = entry / version / "weights.pt"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return version


@pytest.fixture(scope="session")
def break_version():
    """``break_version(entry) -> version``: a published copy of the latest version with truncated weights."""
    return publish_broken


@pytest.fixture(scope="session")
def s3_bucket():
    """``uri(path) -> s3://convfm-test/path?endpoint_override=...`` on moto's S3 server (in this process,
    on a free local port); the endpoint travels in the URI, so Ray workers reach the same server."""
    server_module = pytest.importorskip("moto.server", reason="moto[server] is not installed (dev extra)")
    import boto3

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one log line per S3 request otherwise
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    client = boto3.client("s3", endpoint_url=f"http://{host}:{port}", region_name="us-east-1")
    client.create_bucket(Bucket="convfm-test")
    yield lambda path="": f"s3://convfm-test/{path.strip('/')}?endpoint_override={host}:{port}&scheme=http"
    server.stop()


def randomized(model, seed: int):
    """``model`` (an nn.Module) with large random weights and BatchNorm statistics, in eval mode, so every
    part of its output matters."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.3 if "embedding" in name else 0.2))
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm1d):
                module.running_mean.copy_(torch.randn(module.num_features, generator=g) * 0.2)
                module.running_var.copy_(torch.rand(module.num_features, generator=g) + 0.5)
    return model.eval()


@pytest.fixture()
def served(tiny, randomize):
    """A fresh copy of the tiny model, (model, extractor): its extractor may be changed in place (the live catalog),
    its weights large and random so that every part of a score matters."""
    from convfm.store.artifacts import load_model_dir

    loaded = load_model_dir(tiny.model_dir)
    return randomize(loaded.model, seed=5), loaded.extractor


@pytest.fixture(scope="session")
def randomize():
    """``randomize(model, seed) -> model``: see ``randomized``."""
    return randomized




# Test files with a test that uses the session's local Ray (``ray_local``, directly or through a fixture built on
# it). Under pytest-xdist (``make test`` runs two workers) each such file goes to the same worker, so one worker
# holds that Ray and the runs shared through it (a Ray Train run or a Tune search costs a minute: never twice);
# the other worker takes every other file meanwhile. Collection refuses a file that uses ``ray_local`` and is not
# listed here.
SESSION_RAY_FILES = frozenset({
    "tests/batch/test_recommend_batch.py",
    "tests/reliability/test_serve_faults.py",
    "tests/serve/test_ab_serve.py",
    "tests/serve/test_live_serve.py",
    "tests/serve/test_serve_http.py",
    "tests/train/test_data_shipping.py",
    "tests/train/test_distributed.py",
    "tests/train/test_fault_tolerance.py",
    "tests/train/test_prepare_distributed.py",
    "tests/train/test_prepare_market.py",
    "tests/train/test_ray_configs.py",
    "tests/train/test_seed_pipeline.py",
    "tests/train/test_table_training.py",
    "tests/train/test_warm_start_ray.py",
    "tests/tune/test_search.py",
    "tests/tune/test_storage_search.py",
})


def file_of(nodeid: str) -> str:
    return nodeid.split("::")[0]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Checks SESSION_RAY_FILES, and orders the files for the scheduler below (it hands them out in this order,
    whole): the session-Ray files first, then the files without a ``slow`` test (the other worker runs them while
    the session's Ray starts), then those that start their own Ray, each in collection order; whichever worker is
    free takes the next."""
    unlisted = sorted({file_of(item.nodeid) for item in items if "ray_local" in item.fixturenames}
                      - SESSION_RAY_FILES)
    if unlisted:
        raise pytest.UsageError(f"tests/conftest.py: add {', '.join(unlisted)} to SESSION_RAY_FILES (a test there "
                                "uses the session's Ray, so its file must run on the worker that holds it)")
    slow_files = {file_of(item.nodeid) for item in items if item.get_closest_marker("slow")}
    config.stash[SERVE_FILES] = frozenset(file_of(item.nodeid) for item in items if "serve_app" in item.fixturenames)

    def rank(item: pytest.Item) -> int:
        path = file_of(item.nodeid)
        return 0 if path in SESSION_RAY_FILES else 2 if path in slow_files else 1

    items.sort(key=rank)  # stable: collection order within each rank


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """Work units for pytest-xdist: all of SESSION_RAY_FILES is one unit, every other test file one unit of its
    own (module fixtures, such as the real cluster's, are built once), handed out in collection order."""
    from xdist.scheduler import LoadScopeScheduling

    class SessionRayScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = file_of(nodeid)
            return "session-ray" if path in SESSION_RAY_FILES else path

    config.option.loadscopereorder = False  # keep the order above, not the largest unit first
    return SessionRayScheduling(config, log)
