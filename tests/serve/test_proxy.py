"""The proxy setting's environment for Ray (``serve.proxy``): what ``convfm serve`` sets before Ray starts, what a
user set beforehand keeps, and which proxy a replica reports. The service behind each proxy, end to end:
``tests/serve/test_serve_cli.py``."""
from __future__ import annotations

import itertools

import pytest

from convfm.errors import ConfigError
from serve.proxy import (DRAIN_S, DRAIN_VAR, HAPROXY_VAR, METRICS_PORT_VAR, STATS_PORT_VAR, check_proxy,
                         proxy_in_effect, ray_environment)


def test_serves_own_proxy_changes_nothing_in_rays_environment():
    assert ray_environment("serve", lambda: pytest.fail("no port is needed"), {}) == {}


def test_haproxy_switches_the_mode_holds_a_stopping_replica_briefly_and_gives_each_service_its_own_ports():
    ports = itertools.count(41000)
    environment = ray_environment("haproxy", lambda: next(ports), {})
    assert environment[HAPROXY_VAR] == "1" and environment[DRAIN_VAR] == str(DRAIN_S)
    assert {environment[STATS_PORT_VAR], environment[METRICS_PORT_VAR]} == {"41000", "41001"}  # not 8404, 9101
    assert environment["RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE"] == "1"  # a replica's warnings are not held back


def test_what_the_user_set_in_the_environment_keeps_its_value_but_the_switch_is_always_on():
    user = {DRAIN_VAR: "30", STATS_PORT_VAR: "8404", HAPROXY_VAR: "0"}
    environment = ray_environment("haproxy", lambda: 41000, user)
    assert DRAIN_VAR not in environment and STATS_PORT_VAR not in environment
    assert environment[HAPROXY_VAR] == "1" and environment[METRICS_PORT_VAR] == "41000"


def test_the_proxy_in_effect_is_read_from_rays_environment():
    assert proxy_in_effect({}) == "serve" and proxy_in_effect({HAPROXY_VAR: "0"}) == "serve"
    assert proxy_in_effect({HAPROXY_VAR: "1"}) == "haproxy"
    assert proxy_in_effect(ray_environment("haproxy", lambda: 41000, {})) == "haproxy"


def test_haproxy_asked_of_a_ray_without_it_names_the_variable_and_where_to_set_it():
    check_proxy("serve", {})
    check_proxy("serve", {HAPROXY_VAR: "1"})  # Ray's own choice: the replicas report it (/model's proxy)
    check_proxy("haproxy", {HAPROXY_VAR: "1"})
    with pytest.raises(ConfigError, match=rf"^proxy: haproxy needs {HAPROXY_VAR}=1 in Ray's environment: .*"
                                          r"before `ray start` on every node$"):
        check_proxy("haproxy", {})
