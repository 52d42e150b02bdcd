"""ServeConfig validation, builder-arg parsing, serve/config.yaml, and the serve/recommend CLI glue."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import yaml

from convfm.cli.main import build_parser
from convfm.cli.recommend import format_table, request_body
from convfm.cli.serve import serve_config
from convfm.errors import ConfigError, ConvFMError
from serve.config import ServeConfig

pytestmark = pytest.mark.timeout(60)
REPO = Path(__file__).resolve().parents[2]


def test_defaults_bind_loopback():
    config = ServeConfig()
    assert config.host == "127.0.0.1" and config.port == 8000 and config.api_key_env is None


@pytest.mark.parametrize("values,field", [
    ({"port": 0}, "port"), ({"replicas": "many"}, "replicas"), ({"replicas": 0}, "replicas"),
    ({"max_batch_size": 64, "max_ongoing_requests": 8}, "max_ongoing_requests"),
    ({"auth_all_endpoints": True}, "auth_all_endpoints"), ({"model_version": "latest"}, "model_version"),
    ({"api_key_env": "not a name"}, "api_key_env"), ({"max_body_bytes": 10}, "max_body_bytes"),
    ({"min_replicas": 3, "max_replicas": 2}, "max_replicas"), ({"replica": 2}, "unknown key"),
    ({"retrieval_candidates": -1}, r"^retrieval_candidates: must be an integer in \[0, 1000000\], got -1$"),
    ({"retrieval_candidates": 1_000_001}, "retrieval_candidates"),
    ({"retrieval_candidates": 2.5}, "retrieval_candidates"),
    ({"score_cache_mib": -1}, r"^score_cache_mib: must be an integer in \[0, 1048576\], got -1$"),
    ({"event_dedupe_days": 0}, r"^event_dedupe_days: must be a number in \(0, 3650\], got 0$"),
    ({"event_dedupe_days": "week"}, "event_dedupe_days"),
    ({"proxy": "nginx"}, r"^proxy: must be one of serve, haproxy, got 'nginx'$"),
])
def test_bad_values_name_the_field(values, field):
    with pytest.raises(ConfigError, match=field):
        ServeConfig.from_dict(values)


@pytest.mark.parametrize("field", ["port", "max_batch_size", "num_cpus", "request_timeout_s", "retrieval_candidates"])
def test_booleans_are_not_numbers(field):
    with pytest.raises(ConfigError, match=rf"^{field}: must be (an integer|a number) in .*, got True$"):
        ServeConfig.from_dict({field: True})


def test_serve_yaml_errors_name_the_file_section_line_and_key(tmp_path):
    path = tmp_path / "serve.yaml"
    path.write_text("serve:\n  host: 127.0.0.1\n  max_batch_size: 64\n  max_ongoing_requests: 8\n")
    args = build_parser().parse_args(["serve", "--model", "models/x", "--config", str(path)])
    with pytest.raises(ConfigError, match=r"serve\.yaml \[serve\] line 4: max_ongoing_requests: must be an integer "
                                          r"in \[max_batch_size=64, 10000\], got 8"):
        serve_config(args)
    path.write_text("serve:\n  port: 0\n")
    with pytest.raises(ConfigError, match=r"serve\.yaml \[serve\] line 2: port: must be an integer"):
        serve_config(args)
    with pytest.raises(ConfigError, match=r"^command line: port: must be an integer"):  # the flag, not the file
        serve_config(build_parser().parse_args(["serve", "--model", "m", "--config", str(path), "--port", "0"]))
    path.write_text("serve:\n  port: '9000'\n  replicas: auto\n")  # strings parse as in `serve run` args
    assert (serve_config(args).port, serve_config(args).replicas) == (9000, "auto")
    path.write_text("serve: [port]\n")
    with pytest.raises(ConfigError, match=r"serve\.yaml line 1: section 'serve' must be a mapping, got list"):
        serve_config(args)


def test_builder_args_arrive_as_strings():
    config = ServeConfig.from_args({"model": "m", "port": "9000", "replicas": "auto", "auth_all_endpoints": "false",
                                    "batch_wait_timeout_s": "0.01", "model_version": "null"})
    assert (config.port, config.replicas, config.auth_all_endpoints, config.batch_wait_timeout_s) == (9000, "auto", False, 0.01)
    assert config.ranker_options(2)["autoscaling_config"]["max_replicas"] == 2
    assert ServeConfig(replicas=3).ranker_options(2)["num_replicas"] == 3
    assert ServeConfig.from_args({"num_cpus": "0.5"}).num_cpus == 0.5
    assert ServeConfig.from_args({"num_cpus": "null"}).num_cpus is None
    assert ServeConfig.from_args({"retrieval_candidates": "500"}).retrieval_candidates == 500
    assert ServeConfig().retrieval_candidates == 0  # the exact full scan unless asked
    assert ServeConfig.from_args({"score_cache_mib": "0"}).score_cache_mib == 0
    assert ServeConfig.from_args({"event_dedupe_days": "1.5"}).event_dedupe_days == 1.5
    assert ServeConfig.from_args({"event_dedupe_days": "null"}).event_dedupe_days is None
    with pytest.raises(ConfigError, match="port: must be an integer"):
        ServeConfig.from_args({"port": "eighty"})


@pytest.mark.parametrize("values,node_cpus,expected", [
    ({"replicas": "auto", "max_replicas": 2}, 2, 0.95),  # both replicas and the 0.1-CPU ingress fit 2 cores
    ({"replicas": "auto", "max_replicas": 4}, 2, 0.47),
    ({"replicas": 1}, 2, 1.0), ({"replicas": "auto", "max_replicas": 2}, 16, 1.0),  # never more than one CPU
    ({"replicas": 64}, 2, 0.1), ({"replicas": 2, "num_cpus": 1.5}, 2, 1.5),  # a configured size is kept
])
def test_replicas_are_sized_to_fit_the_node(values, node_cpus, expected):
    config = ServeConfig(**values)
    options = config.ranker_options(node_cpus)
    assert options["ray_actor_options"]["num_cpus"] == expected
    if config.num_cpus is None and expected > 0.1:
        assert expected * config.most_replicas() + config.ingress_num_cpus <= node_cpus


def test_autoscaling_reacts_within_seconds_and_replicas_stop_quickly():
    options = ServeConfig(replicas="auto", upscale_delay_s=3, downscale_delay_s=20).ranker_options(2)
    scaling = options["autoscaling_config"]
    assert (scaling["upscale_delay_s"], scaling["downscale_delay_s"], scaling["look_back_period_s"]) == (3, 20, 10)
    assert options["graceful_shutdown_timeout_s"] <= 5
    with pytest.raises(ConfigError, match="downscale_delay_s: must be a number in"):
        ServeConfig(downscale_delay_s=-1)


def test_api_key_is_read_from_the_environment_and_only_its_digest_kept():
    config = ServeConfig(api_key_env="MY_KEY")
    assert config.api_key_digest({"MY_KEY": "s3cret-s3cret-s3cret"}) == hashlib.sha256(b"s3cret-s3cret-s3cret").hexdigest()
    with pytest.raises(ConfigError, match=r"MY_KEY must hold a key of at least 16 characters \(too short\)"):
        config.api_key_digest({"MY_KEY": "not-long-enough"})
    with pytest.raises(ConfigError, match=r"\(unset\)"):
        config.api_key_digest({})


def test_config_yaml_is_a_valid_serve_deploy_file():
    from ray.serve.schema import ServeDeploySchema

    document = yaml.safe_load((REPO / "serve" / "config.yaml").read_text())
    schema = ServeDeploySchema.model_validate(document)
    assert schema.http_options.host == "127.0.0.1"
    [app] = schema.applications
    assert app.import_path == "serve.app:app_builder"
    assert ServeConfig.from_args(app.args).replicas == "auto"


def test_cli_serve_and_recommend_arguments(tmp_path):
    parser = build_parser()
    args = parser.parse_args(["serve", "--model", "models/x", "--replicas", "auto", "--api-key-env", "K", "--auth-all"])
    config = serve_config(args)
    assert (config.model, config.replicas, config.api_key_env, config.auth_all_endpoints) == ("models/x", "auto", "K", True)
    args = parser.parse_args(["recommend", "--skills", "python, sql", "--location", "Berlin", "-k", "3",
                              "--job-type", "contract"])
    assert request_body(args) == {"k": 3, "exclude_seen": True, "explain": True, "filters": {"job_type": "contract"},
                                  "profile": {"skills": ["python", "sql"], "location": "Berlin"}}
    args = parser.parse_args(["recommend", "--extra", "Headline=python developer", "--extra", " industry = it "])
    assert request_body(args)["profile"] == {"extra": {"Headline": "python developer", "industry": "it"}}
    with pytest.raises(ConvFMError, match=r"--extra takes COLUMN=VALUE, got \['Headline'\]"):
        request_body(parser.parse_args(["recommend", "--extra", "Headline"]))
    table = format_table({"model_version": "v0001", "fallback": "popular", "items": [
        {"job_id": "j1", "title": "Data Engineer", "company": "Acme", "location": "Remote", "score": 0.91,
         "why": "popular with other users"}]}, width=100)
    assert "Data Engineer" in table and "0.910" in table and "fallback: popular" in table
    lines = format_table({"model_version": "v0001", "items": [
        {"job_id": "j1", "title": "Engineer", "company": "東京商事", "location": "Tokyo", "score": 0.5, "why": ""},
        {"job_id": "j22", "title": "Engineer", "company": "Acme", "location": "Tokyo", "score": 0.4, "why": ""}]},
        width=100).splitlines()
    assert lines[0].split() == ["#", "job", "title", "company", "location", "score", "why"]
    assert lines[1].index("Tokyo") - lines[1].index("東京商事") == lines[2].index("Tokyo") - lines[2].index("Acme") - 4
    assert lines[1].split()[1] == "j1" and lines[2].split()[1] == "j22"  # same titles, told apart by their id
