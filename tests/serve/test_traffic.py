"""A/B traffic splits without Ray: stable hash routing and its proportions, the config field and the reload
request that carry a split, and the check that its versions exist in the registry entry."""
from __future__ import annotations

import collections
from pathlib import Path

import pytest
from pydantic import ValidationError

from convfm.errors import ConfigError
from serve.config import ServeConfig
from serve.schemas import ReloadRequest
from serve.traffic import bucket, check_traffic, check_versions_exist, control, parse_traffic, route

USERS = [f"u{i:06d}" for i in range(10_000)]


def test_users_split_in_proportion_and_stably():
    split = check_traffic({"v0007": 0.9, "v0008": 0.1})
    counts = collections.Counter(route(split, u) for u in USERS)
    # binomial sd of the share with n=10k, p=0.1 is 0.003: 4 sd
    assert counts["v0008"] / len(USERS) == pytest.approx(0.1, abs=0.012)
    assert [route(split, u) for u in USERS[:500]] == [route(dict(split), u) for u in USERS[:500]]
    three = check_traffic({"v0001": 0.5, "v0002": 0.3, "v0003": 0.2})
    shares = collections.Counter(route(three, u) for u in USERS)
    assert [shares[v] / len(USERS) for v in three] == pytest.approx([0.5, 0.3, 0.2], abs=0.015)


def test_the_hash_is_fixed_across_processes_and_machines():
    """Golden values: Python's hash() of a str changes with every process (PYTHONHASHSEED), BLAKE2b never."""
    assert bucket("u000001") == pytest.approx(0.09223361220515795, abs=1e-15)
    assert bucket("") == pytest.approx(0.8931675160897388, abs=1e-15)
    routed = "".join(route({"v0001": 0.5, "v0002": 0.5}, f"u{i}")[-1] for i in range(20))
    assert routed == "22112222211221212112"


def test_ramping_the_new_version_up_only_moves_users_into_it():
    before = {u: route(check_traffic({"v0007": 0.9, "v0008": 0.1}), u) for u in USERS}
    after = {u: route(check_traffic({"v0007": 0.8, "v0008": 0.2}), u) for u in USERS}
    assert all(after[u] == "v0008" for u in USERS if before[u] == "v0008")
    assert sum(after[u] != before[u] for u in USERS) == pytest.approx(1000, abs=120)


def test_requests_without_a_user_go_to_the_control_version():
    assert route(check_traffic({"v0007": 0.9, "v0008": 0.1}), None) == "v0007"
    assert route(check_traffic({"v0007": 0.3, "v0008": 0.7}), None) == "v0008"
    assert control({"v0003": 0.5, "v0004": 0.5}) == "v0003"  # a tie: the older one


@pytest.mark.parametrize("value, match", [
    ({"v0007": 0.9, "v0008": 0.2}, "traffic: weights must sum to 1, got 1.1"),
    ({"v7": 1.0}, "traffic: version 'v7' must look like v0001"),
    ({"v0007": 1.0, "v0008": 0.0}, r"traffic: weight of v0008 must be a number in \(0, 1\]"),
    ({"v0007": "1"}, "traffic: weight of v0007 must be a number"),
    ({}, "traffic: must be a mapping"),
    ("v0007", "traffic: must be a mapping"),
])
def test_bad_splits_are_refused_naming_the_field(value, match):
    with pytest.raises(ConfigError, match=match):
        ServeConfig.from_dict({"traffic": value})


def test_the_cli_form_and_the_config_field():
    config = ServeConfig.from_args({"traffic": "v0008=0.1, v0007=0.9"})
    assert config.traffic == {"v0007": 0.9, "v0008": 0.1} and list(config.traffic) == ["v0007", "v0008"]
    assert config.to_dict()["traffic"] == {"v0007": 0.9, "v0008": 0.1}
    with pytest.raises(ConfigError, match="traffic: 'v0007' is not VERSION=WEIGHT"):
        parse_traffic("v0007")
    with pytest.raises(ConfigError, match="traffic: weight of v0007 must be a number, got 'x'"):
        parse_traffic("v0007=x")
    with pytest.raises(ConfigError, match="traffic: give traffic or model_version, not both"):
        ServeConfig.from_dict({"traffic": {"v0001": 1.0}, "model_version": "v0001"})


def fake_entry(root: Path, *versions: str) -> Path:
    """A registry entry whose versions have a manifest (all ``locate`` looks at)."""
    entry = root / "m"
    for version in versions:
        (entry / version).mkdir(parents=True)
        (entry / version / "manifest.json").write_text("{}")
    (entry / "latest").write_text(versions[-1] + "\n")
    return entry


def test_versions_of_a_split_must_exist_in_the_entry(tmp_path):
    entry = fake_entry(tmp_path, "v0001", "v0002")
    check_versions_exist(entry, {"v0001": 0.5, "v0002": 0.5})
    with pytest.raises(ConfigError, match=r"traffic: .*v0003: no such version; available: \['v0001', 'v0002'\]"):
        check_versions_exist(entry, {"v0001": 0.5, "v0003": 0.5})


def test_the_reload_request_takes_a_split_or_a_version():
    assert ReloadRequest(traffic={"v0001": 0.5, "v0002": 0.5}).traffic == {"v0001": 0.5, "v0002": 0.5}
    for body, match in [({"traffic": {"v0001": 0.5, "v0002": 0.6}}, "weights must sum to 1"),
                        ({"traffic": {"v0001": 1.0}, "version": "v0001"}, "version or traffic, not both"),
                        ({"traffic": {"x": 1.0}}, "String should match pattern")]:
        with pytest.raises(ValidationError, match=match):
            ReloadRequest.model_validate(body)
