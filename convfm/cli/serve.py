"""`convfm serve`: run the recommendation service (Ray Serve) until Ctrl-C."""
from __future__ import annotations

import argparse
import contextlib
import errno
import json
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterator, Optional

from convfm.cli.common import config_file
from convfm.errors import ConfigError, ConvFMError
from convfm.signals import stop_once
from serve.proxy import PROXIES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, metavar="PATH",
                        help="registry entry (models/NAME, follows `latest`), a version dir or a model dir; "
                        "local or a URI (s3://bucket/models/NAME: downloaded to the local cache)")
    parser.add_argument("--version", dest="model_version", metavar="vNNNN", help="registry version to serve")
    parser.add_argument("--traffic", metavar="vNNNN=W,...",
                        help="A/B split between registry versions, e.g. v0007=0.9,v0008=0.1 (weights sum to 1): "
                        "each user is routed to one version by a hash of the user id; not with --version")
    parser.add_argument("--host", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, help="HTTP port (default 8000)")
    parser.add_argument("--replicas", metavar="N|auto", help="ranking replicas, or 'auto' to autoscale (default 1)")
    parser.add_argument("--api-key-env", metavar="VAR",
                        help="environment variable holding the API key: /admin/*, POST /jobs and POST /events need it")
    parser.add_argument("--auth-all", action="store_true", help="require the API key on every endpoint")
    parser.add_argument("--config", metavar="YAML", help="YAML file whose `serve:` section sets ServeConfig fields")
    parser.add_argument("--num-cpus", type=int, help="CPUs for the local Ray (default: all)")
    parser.add_argument("--proxy", choices=PROXIES, help="HTTP proxy in front: Serve's own (default) or "
                        "HAProxy, Ray's high-throughput mode (its stats page listens on every interface)")


def serve_config(args: argparse.Namespace) -> Any:
    from serve.config import ServeConfig

    flags = {"model": args.model, "model_version": args.model_version, "traffic": args.traffic,
             "host": args.host, "port": args.port,
             "replicas": args.replicas, "api_key_env": args.api_key_env, "proxy": args.proxy,
             "auth_all_endpoints": True if args.auth_all else None}
    overrides = {k: v for k, v in flags.items() if v is not None}
    if not args.config:
        return ServeConfig.from_args(overrides, source="command line")
    file = config_file(args.config)  # a misspelt `serv:` must not fall back to defaults silently
    return file.build(ServeConfig, file.section("serve"), "serve", overrides=overrides,
                      make=lambda values: ServeConfig.from_args(values, source=""))


def wait_ready(url: str, timeout_s: float = 300.0) -> dict[str, Any]:
    """Poll /healthz until 200; ConvFMError with the service's reason if it reports a failed load."""
    deadline, body = time.monotonic() + timeout_s, {}
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=5) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            body = json.loads(exc.read() or b"{}")
            if body.get("status") == "failed":
                raise ConvFMError(f"the model failed to load: {body.get('error')}") from None
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise ConvFMError(f"service not ready after {timeout_s:.0f}s (last health: {body})")


def free_port() -> int:
    """A TCP port that was free (on every interface, so on 127.0.0.1 too) a moment ago."""
    return free_ports(1)[0]


def bind_error(host: str, port: int) -> Optional[OSError]:
    """Why ``host:port`` cannot be listened on now, or None. SO_REUSEADDR as a server sets it: a port a closed
    server left in TIME_WAIT is free."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            return exc
    return None


def check_port_free(host: str, port: int) -> None:
    """ConfigError naming the address when ``host:port`` cannot be listened on (another process listens there, or
    the host is not this machine's): checked before Ray starts, as Serve's proxy would fail with a traceback from
    inside an actor."""
    exc = bind_error(host, port)
    if exc is not None:
        taken = exc.errno == errno.EADDRINUSE
        hint = "another process listens there: choose another --port" if taken else "check --host"
        raise ConfigError(f"{'port' if taken else 'host'}: cannot listen on {host}:{port}: "
                          f"{exc.strerror or exc} ({hint})", field="port" if taken else "host")


class _OwnStartNotice(logging.Filter):
    """Drops Serve's "Connecting to existing Serve app ... New http_options will not be applied": ``serve.run``
    says it after our own ``serve.start``, which did apply the host and port."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Connecting to existing Serve app")


OWN_START_NOTICE = _OwnStartNotice()


@contextlib.contextmanager
def running_service(config: Any, application: Any) -> Iterator[tuple[str, dict[str, Any]]]:
    """Serve ``application`` (``serve.app.build_app(config)``) on the caller's Ray at config.host:port and yield
    (url, health) once it is ready; on exit shut Serve and Ray down, however the block ends.

    The application is deleted (its replicas drain their requests) and then Ray is shut down, which ends Serve's
    controller and proxy with it. ``serve.shutdown()`` is not called: in Ray 2.60 its call waits on the
    controller until the controller kills itself, and the driver then prints "Task
    ServeController.graceful_shutdown failed ... will be retried", a retry that never happens."""
    import ray
    from ray import serve

    from serve.app import APP_NAME

    url = config.local_url()  # an allowed Host header, also when bound to 0.0.0.0
    logging.getLogger("ray.serve").addFilter(OWN_START_NOTICE)  # one filter, however many services start
    try:
        try:
            serve.start(http_options={"host": config.host, "port": config.port})
        except Exception as exc:  # noqa: BLE001 - the port taken since check_port_free: one line, not a traceback
            if "Failed to bind" not in str(exc):
                raise
            raise ConfigError(f"port: cannot listen on {config.host}:{config.port} (taken while Ray started? choose "
                              f"another with --port)", field="port") from None
        serve.run(application, name=APP_NAME, route_prefix="/", blocking=False)
        yield url, wait_ready(url)
    finally:
        try:
            delete_app_while_ray_lives(APP_NAME)
        finally:
            ray.shutdown()


def delete_app_while_ray_lives(name: str) -> None:
    """``serve.delete(name)`` (its replicas drain and write what they buffered), given up if this process's own
    raylet, GCS server or Serve controller ends meanwhile. A SIGTERM sent to every process of a cgroup
    (systemd's default ``KillMode``) reaches the GCS and the raylet as it reaches the driver: the delete waited
    on them 60 s, until Ray aborted the process; it now ends as the raylet does (~15 s)."""
    import psutil  # Ray's own dependency
    from ray import serve

    daemons = [p for p in psutil.Process().children(recursive=True) if ray_daemon(p)]  # a cluster's: none here
    finished, failed = threading.Event(), []

    def delete() -> None:
        try:
            serve.delete(name)
        except BaseException as exc:  # noqa: BLE001 - raised again in the caller's thread
            failed.append(exc)
        finally:
            finished.set()

    threading.Thread(target=delete, name="convfm-serve-delete", daemon=True).start()
    while not finished.wait(0.1):
        if any(map(ended, daemons)):
            print(f"Ray's raylet, GCS server or Serve controller stopped (was every process signalled?): {name}'s "
                  f"replicas could not be drained", file=sys.stderr, flush=True)
            return
    if failed:
        raise failed[0]


def ray_daemon(process: Any) -> bool:
    """A psutil process that is this Ray's raylet, GCS server or Serve controller."""
    import psutil

    try:
        return process.name() in ("raylet", "gcs_server") or process.cmdline()[:1] == ["ray::ServeController"]
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def ended(process: Any) -> bool:
    import psutil

    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def check_local_model(config: Any) -> None:
    """A local model is loaded once here, before Ray starts, so a broken one fails naming its file and what is
    wrong: the service itself tells clients only that the load failed (the details go to its log)."""
    from convfm.store import storage
    from convfm.store.artifacts import load_model_dir
    from convfm.store.registry import locate

    if not storage.is_uri(config.model):  # under a split, its control version (build_app checked the others exist)
        from serve.traffic import control

        load_model_dir(locate(config.model, control(config.traffic) if config.traffic else config.model_version))


def check_live_catalog(config: Any) -> None:
    """The live catalog's deltas read as a replica applies them, before Ray starts: one that cannot be (written by
    hand, or before the service refused text that is not valid Unicode) fails naming its file; the service would
    say only that the model failed to load."""
    from convfm.errors import ArtifactError
    from convfm.store import storage
    from convfm.store.live_catalog import CatalogStore, delta_name, upserted_jobs
    from convfm.store.registry import live_location

    model = config.model if storage.is_uri(config.model) else Path(config.model).expanduser()
    live = config.live_store or live_location(model)
    store = CatalogStore(live if storage.is_uri(live) else Path(live).expanduser())
    for delta in store.read():
        try:
            upserted_jobs(delta.upsert, delta.version)
        except Exception as exc:  # noqa: BLE001 - whatever a replica's apply would raise, named here
            raise ArtifactError(f"{storage.join(store.root, delta_name(delta.version))}: live catalog v{delta.version} "
                                f"cannot be applied: {type(exc).__name__}: {exc}") from None


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports free on every interface a moment ago (each held until all are chosen)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("0.0.0.0", 0))
        return [sock.getsockname()[1] for sock in sockets]


@contextlib.contextmanager
def proxy_environment(proxy: str, service_port: Optional[int] = None) -> Iterator[None]:
    """Within the block, ``os.environ`` holds what a Ray started in it needs to serve behind ``proxy``
    (``serve.proxy.ray_environment``); HAProxy's ports are checked first (free on every interface, apart from each
    other and from ``service_port``), naming the variable of one that is not. After it the variables it set are as
    before, and HAProxy's private directory is gone."""
    from serve.proxy import check_haproxy_installed, ray_environment

    before, private, changed = dict(os.environ), None, {}
    try:
        if proxy == "haproxy":
            check_haproxy_installed()
            # short, under /tmp: HAProxy takes a log socket's path of at most 97 bytes, and Ray adds a 56-character
            # node id (/tmp/convfm-XXXXXXXX/<node id>/metrics.sock: 90)
            private = Path(tempfile.mkdtemp(prefix="convfm-", dir="/tmp" if os.path.isdir("/tmp") else None))
        changed = ray_environment(proxy, free_ports, private)
        os.environ.update(changed)
        if proxy == "haproxy":
            check_haproxy_ports(service_port)
        yield
    finally:
        try:
            if private is not None:
                shutil.rmtree(private, ignore_errors=True)
        finally:
            for name in changed:  # only what it set: another thread's writes stay
                if name in before:
                    os.environ[name] = before[name]
                else:
                    os.environ.pop(name, None)


def check_haproxy_ports(service_port: Optional[int]) -> None:
    """ConfigError naming the variable when HAProxy's stats or metrics port (``os.environ``) is not a port, is the
    other's or the service's, or cannot be listened on on every interface: HAProxy would not start, and the service
    would wait for it in silence."""
    from serve.proxy import PORT_VARS

    seen = {} if service_port is None else {service_port: "the service's --port"}
    for name in PORT_VARS:
        value = os.environ[name]
        port = int(value) if value.strip().isdigit() else -1
        if not 1 <= port <= 65535:
            raise ConfigError(f"{name}={value}: HAProxy cannot listen there: not a port number (1-65535)", field=name)
        if port in seen:
            raise ConfigError(f"{name}={value}: HAProxy cannot listen there: it is {seen[port]}", field=name)
        seen[port] = name
        exc = bind_error("0.0.0.0", port)
        if exc is not None:
            raise ConfigError(f"{name}={value}: HAProxy cannot listen there: {exc.strerror or exc} (choose another "
                              f"value for {name})", field=name)


def run(args: argparse.Namespace) -> int:
    config = serve_config(args)
    with proxy_environment(config.proxy, config.port):  # read by the Ray started below, and its proxy
        return serve_until_stopped(config, args)


def serve_until_stopped(config: Any, args: argparse.Namespace) -> int:
    """``convfm serve``'s checks, then its own Ray and the service until a Ctrl-C or a SIGTERM."""
    import ray

    from serve.app import build_app

    application = build_app(config, node_cpus=args.num_cpus)  # checks the model path before starting anything
    check_local_model(config)
    check_live_catalog(config)
    check_port_free(config.host, config.port)
    ray.init(address="local", num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False,  # never a
             configure_logging=False)  # cluster an earlier `ray start` recorded: Serve and Ray stop with this command
    previous = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, stop_once(signal.default_int_handler))  # `kill` shuts down as cleanly as Ctrl-C
    try:
        with running_service(config, application) as (url, health):
            split = "" if not config.traffic else " (traffic split: " + ", ".join(
                f"{version} {weight * 100:g}%" for version, weight in config.traffic.items()) + ")"
            print(f"convfm serving {health.get('model')} {health.get('version')}{split} at {url}  "
                  f"(API docs: {url}/docs)")
            if config.proxy == "haproxy":
                from serve.proxy import METRICS_PORT_VAR, STATS_PORT_VAR

                print(f"HAProxy in front; its stats page (port {os.environ[STATS_PORT_VAR]}) and metrics (port "
                      f"{os.environ[METRICS_PORT_VAR]}) listen on every interface")
            if config.host not in ("127.0.0.1", "localhost", "::1"):
                past = ", as is the replica's own port (30000-31000) past HAProxy" if config.proxy == "haproxy" else ""
                print(f"warning: bound to {config.host}: reachable from other machines{past}", flush=True)
            print("Ctrl-C to stop", flush=True)
            while True:
                time.sleep(1.0)
    except KeyboardInterrupt:  # also while starting: Serve and Ray are shut down either way
        print("\nstopped: Serve and Ray shut down", flush=True)
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0
