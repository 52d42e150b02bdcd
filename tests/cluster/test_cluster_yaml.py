"""cluster.yaml (Ray cluster launcher, AWS): valid for the installed Ray, and the choices it documents hold.

Validation is what `ray up` does before touching AWS: the JSON schema shipped inside the ray package, then
``validate_config(prepare_config(cfg))`` (defaults merged, node types checked). Both run offline in ~50 ms.
"""
from __future__ import annotations

import copy
import json
import re
import shlex
from pathlib import Path
from typing import Any, Iterator

import jsonschema
import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[2]
CLUSTER_YAML = ROOT / "cluster.yaml"
# Ports that must never be open to the internet: dashboard + job API, Serve HTTP, Ray client, GCS.
PRIVATE_PORTS = {8265: "dashboard", 8000: "Serve", 10001: "Ray client", 6379: "GCS"}
WORLD = {"0.0.0.0/0", "::/0"}


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    return json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())


@pytest.fixture()
def config() -> dict[str, Any]:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def validate(config: dict[str, Any], schema: dict[str, Any]) -> None:
    """What `ray up` checks before launching anything."""
    jsonschema.validate(config, schema)
    validate_config(prepare_config(copy.deepcopy(config)))


def test_cluster_yaml_is_valid_for_the_installed_ray(config, schema):
    validate(config, schema)


@pytest.mark.parametrize("path, key, typo", [
    ((), "idle_timeout_minutes", "idle_timout_minutes"),
    (("available_node_types", "gpu_worker"), "min_workers", "min_worker"),
    (("docker",), "image", "imgae"),
    (("provider", "security_group"), "IpPermissions", "IpPermission"),
])
def test_a_typo_in_a_key_fails_validation(config, schema, path, key, typo):
    section = config
    for name in path:
        section = section[name]
    section[typo] = section.pop(key)
    with pytest.raises(jsonschema.ValidationError, match=re.escape(repr(typo))):
        validate(config, schema)


def test_wrong_head_node_type_and_min_above_max_fail_validation(config, schema):
    wrong_head = {**config, "head_node_type": "head_node"}
    with pytest.raises(ValueError, match="head_node_type"):
        validate(wrong_head, schema)
    config["available_node_types"]["gpu_worker"]["min_workers"] = 20
    with pytest.raises(ValueError, match="min_workers"):
        validate(config, schema)


def _world_rules(config: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for rule in config["provider"].get("security_group", {}).get("IpPermissions", []):
        cidrs = ({r.get("CidrIp") for r in rule.get("IpRanges", [])}
                 | {r.get("CidrIpv6") for r in rule.get("Ipv6Ranges", [])})
        if cidrs & WORLD:
            yield rule


def _covers(rule: dict[str, Any], port: int) -> bool:
    if str(rule.get("IpProtocol")) == "-1":
        return True
    return int(rule.get("FromPort", -1)) <= port <= int(rule.get("ToPort", -1))


def test_no_dashboard_serve_client_or_gcs_port_is_open_to_the_world(config):
    for rule in _world_rules(config):
        opened = [name for port, name in PRIVATE_PORTS.items() if _covers(rule, port)]
        assert not opened, f"security group rule {rule} opens {opened} to the internet"
    for name, node_type in config["available_node_types"].items():
        # a pre-made group would bypass the rules above (and could not be checked here)
        assert "SecurityGroupIds" not in node_type["node_config"], name


def test_the_checker_catches_an_open_dashboard(config):
    config["provider"]["security_group"]["IpPermissions"] = [
        {"IpProtocol": "tcp", "FromPort": 8000, "ToPort": 8300, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}]
    with pytest.raises(AssertionError, match=r"opens \['dashboard', 'Serve'\]"):
        test_no_dashboard_serve_client_or_gcs_port_is_open_to_the_world(config)


def test_serve_config_listens_on_loopback_only():
    serve = yaml.safe_load((ROOT / "serve" / "config.yaml").read_text())
    assert serve["http_options"]["host"] in ("127.0.0.1", "localhost")


def test_gpu_workers_scale_from_zero_and_idle_nodes_go_away(config):
    assert 1 <= config["idle_timeout_minutes"] <= 30
    gpu_types = {name: t for name, t in config["available_node_types"].items()
                 if re.match(r"[gp]\d", t["node_config"].get("InstanceType", "")) or t.get("resources", {}).get("GPU")}
    assert gpu_types, "no GPU worker type"
    for name, node_type in gpu_types.items():
        assert name != config["head_node_type"]
        assert node_type["min_workers"] == 0 and node_type["max_workers"] >= 1, name
    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"] == {"CPU": 0}  # no training or serving replicas on the head


def test_image_and_setup_match_this_project(config):
    python = "py{}{}".format(*__import__("sys").version_info[:2])
    assert config["docker"]["image"] == f"rayproject/ray:{ray.__version__}-{python}-gpu"
    assert config["file_mounts"]["/home/ray/convfm"] == "build/cluster-src"  # `git archive HEAD` (docs)
    assert any("pip install" in c and "/home/ray/convfm" in c for c in config["setup_commands"])
    assert "build/" in (ROOT / ".gitignore").read_text()  # the exported tree is never committed
    for command in config["head_start_ray_commands"] + config["worker_start_ray_commands"]:
        if "ray start" in command:
            assert "RAY_AUTH_MODE=token" in command, command


# ------------------------------------------------------------------------------------------ docs/CLUSTER.md
def _documented_convfm_commands() -> list[str]:
    """`convfm ...` invocations in docs/CLUSTER.md code blocks (after `--` in `ray job submit` lines)."""
    text = (ROOT / "docs" / "CLUSTER.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("#", 1)[0].strip()
            match = re.search(r"(?:^|--\s+)(convfm\s.*)$", line)
            if match:
                commands.append(match.group(1))
    return commands


def test_documented_cluster_commands_are_valid_cli_invocations(parse_convfm):
    commands = _documented_convfm_commands()
    assert {shlex.split(c)[1] for c in commands} >= {"train", "tune"}
    for command in commands:
        args = parse_convfm(command)
        for flag in ("out", "data", "registry", "storage"):
            value = getattr(args, flag, None)
            # ~/convfm-shared: the one-machine cluster of "A local cluster", where every node sees the home folder
            assert value is None or value.startswith(("/mnt/shared/", "s3://", "~/convfm-shared/")), \
                f"{command}: --{flag} {value} is not on shared storage"
        config = getattr(args, "config", None)
        assert config is None or (ROOT / config).is_file(), f"{command}: no {config} in the repository"
