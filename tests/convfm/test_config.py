"""Configs validate on construction and name the bad field; YAML and JSON round trips."""
import pytest

from convfm.config import DataConfig, ModelConfig, TrainConfig, load_yaml_config
from convfm.errors import ConfigError


@pytest.mark.parametrize("cls, values, match", [
    (ModelConfig, {"embedding_dim": 0}, "embedding_dim: must be an integer in"),
    (ModelConfig, {"conv_kernel_size": 4}, "conv_kernel_size: must be an odd integer"),
    (ModelConfig, {"dropout_rate": 1.0}, "dropout_rate"),
    (ModelConfig, {"hidden_dims": []}, "hidden_dims"),
    (TrainConfig, {"learning_rate": -0.1}, "learning_rate: must be in"),
    (TrainConfig, {"num_workers": 0}, "num_workers"),
    (TrainConfig, {"batch_size": 0}, "batch_size"),
    (TrainConfig, {"cpus_per_worker": 0}, "cpus_per_worker: must be a number in"),
    (TrainConfig, {"placement_strategy": "spread"}, "placement_strategy: must be one of PACK, SPREAD"),
    (DataConfig, {"kind": "graph"}, "kind: must be 'jobs' or 'table'"),
    (DataConfig, {"positive_events": ["applied"]}, r"positive_events: unknown event\(s\) \['applied'\]"),
    (DataConfig, {"negative_events": ["apply"]}, "also listed as positive"),
    (DataConfig, {"kind": "table"}, "a table needs at least one field"),
])
def test_invalid_values_name_the_field(cls, values, match):
    with pytest.raises(ConfigError, match=match):
        cls.from_dict(values)


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['embeding_dim'\]"):
        ModelConfig.from_dict({"embeding_dim": 32})


def test_yaml_sections_and_json_round_trip(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  embedding_dim: 16\n  hidden_dims: [32, 16]\ntrain:\n  num_epochs: 3\n")
    model = load_yaml_config(path, "model", ModelConfig)
    assert model.embedding_dim == 16 and model.hidden_dims == (32, 16)
    assert load_yaml_config(path, "train", TrainConfig).num_epochs == 3
    assert load_yaml_config(path, "data", DataConfig) == DataConfig()
    model.save_json(tmp_path / "m.json")
    assert ModelConfig.load_json(tmp_path / "m.json") == model


def test_yaml_errors_name_the_file_and_section(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: 0.1\n")
    with pytest.raises(ConfigError, match=r"c.yaml \[train\] line 2: unknown key\(s\) \['lr'\]"):
        load_yaml_config(path, "train", TrainConfig)
    with pytest.raises(ConfigError, match="config file not found"):
        load_yaml_config(tmp_path / "missing.yaml", "train", TrainConfig)
