"""Configs validate on construction and name the bad field; YAML and JSON round trips."""
from pathlib import Path

import pytest

from convfm.config import DataConfig, ModelConfig, TrainConfig, load_yaml_config
from convfm.errors import ConfigError


def refuses(path: Path, text: str, section: str, cls: type, match: str) -> None:
    """``text`` written to ``path`` and ``section`` loaded as ``cls``: a ConfigError matching ``match``."""
    path.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_yaml_config(path, section, cls)


@pytest.mark.parametrize("cls, values, match", [
    (ModelConfig, {"embedding_dim": 0}, "embedding_dim: must be an integer in"),
    (ModelConfig, {"conv_kernel_size": 4}, "conv_kernel_size: must be an odd integer"),
    (ModelConfig, {"dropout_rate": 1.0}, "dropout_rate"),
    (ModelConfig, {"hidden_dims": []}, "hidden_dims"),
    (TrainConfig, {"learning_rate": -0.1}, r"learning_rate: must be a number in \(0, 1\], got -0.1"),
    (TrainConfig, {"num_workers": 0}, "num_workers"),
    (TrainConfig, {"batch_size": 0}, "batch_size"),
    (TrainConfig, {"cpus_per_worker": 0}, "cpus_per_worker: must be a number in"),
    (TrainConfig, {"placement_strategy": "spread"}, r"placement_strategy: must be one of \['PACK', 'SPREAD'"),
    (TrainConfig, {"embedding_l2": -1e-5}, r"embedding_l2: must be a number in \[0, 1\], got -1e-05"),
    (TrainConfig, {"embedding_l2": True}, r"embedding_l2: must be a number in \[0, 1\], got True"),
    (TrainConfig, {"embedding_l2": "1e-5"}, r"embedding_l2: must be a number in \[0, 1\], got '1e-5'"),
    (TrainConfig, {"early_stopping_metric": "auc"},
     r"early_stopping_metric: must be one of \['roc_auc', 'log_loss'\], got 'auc'"),
    (TrainConfig, {"early_stopping_metric": True}, r"early_stopping_metric: must be one of .*, got True"),
    (TrainConfig, {"weight_decay_examples": 0}, r"weight_decay_examples: must be an integer in \[1, "),
    (TrainConfig, {"weight_decay_examples": 6e4}, r"weight_decay_examples: must be an integer .*, got 60000.0"),
    (DataConfig, {"kind": "graph"}, r"kind: must be one of \['jobs', 'table'\], got 'graph'"),
    (DataConfig, {"positive_events": ["applied"]}, r"positive_events: unknown event\(s\) \['applied'\]"),
    (DataConfig, {"negative_events": ["apply"]}, "also listed as positive"),
    (DataConfig, {"kind": "table"}, "a table needs at least one field"),
    (DataConfig, {"split": "global"}, r"split: must be one of \['time', 'global_time', 'random'\], got 'global'"),
    (DataConfig, {"negative_sampling": "hard"},
     r"negative_sampling: must be one of \['live', 'uniform', 'popularity'\], got 'hard'"),
    (DataConfig, {"valid_start": "2024-03-01"}, r"valid_start: only used with split: global_time, got split 'time'"),
    (DataConfig, {"split": "global_time", "test_start": "2024-02-30"}, r"test_start: must be an ISO date such as"),
    (DataConfig, {"split": "global_time", "test_start": 20240301}, r"test_start: must be an ISO date .* 20240301"),
    (DataConfig, {"split": "global_time", "valid_start": "9999-01-01"},
     r"valid_start: must be between 1970-01-01 and 2100-01-01, got '9999-01-01'"),
    (DataConfig, {"split": "global_time", "valid_start": "2024-03-01T00:00:00+02:00"}, "without a time zone"),
    (DataConfig, {"split": "global_time", "valid_start": "2024-03-01", "test_start": "2024-03-01"},
     r"test_start: must be after valid_start 2024-03-01T00:00:00, got 2024-03-01T00:00:00"),
])
def test_invalid_values_name_the_field(cls, values, match):
    with pytest.raises(ConfigError, match=match):
        cls.from_dict(values)


def test_weight_decay_falls_in_proportion_beyond_weight_decay_examples():
    config = TrainConfig(weight_decay=5.0, weight_decay_examples=60_000)
    assert [config.weight_decay_for(n) for n in (10, 60_000, 120_000, 600_000)] == [5.0, 5.0, 2.5, 0.5]
    assert TrainConfig(weight_decay=5.0, weight_decay_examples=None).weight_decay_for(10**9) == 5.0
    assert TrainConfig(weight_decay=0.0).weight_decay_for(10**9) == 0.0


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
    refuses(path, "train:\n  lr: 0.1\n", "train", TrainConfig,
            r"c.yaml \[train\] line 2: unknown key\(s\) \['lr'\]")
    with pytest.raises(ConfigError, match="config file not found"):
        load_yaml_config(tmp_path / "missing.yaml", "train", TrainConfig)


@pytest.mark.parametrize("cls, field, value", [
    (ModelConfig, "embedding_dim", True), (ModelConfig, "hidden_dims", [64, True]),
    (DataConfig, "negative_ratio", True), (DataConfig, "seed", True),
    (TrainConfig, "batch_size", True), (TrainConfig, "seed", False), (TrainConfig, "learning_rate", True),
])
def test_booleans_are_refused_where_numbers_are_meant(cls, field, value):
    """YAML reads `yes` as True, which Python would take as 1 (batch size 1, embedding width 1)."""
    with pytest.raises(ConfigError, match=rf"^{field}: must be (an integer|a number|a non-empty list of integers)") \
            as info:
        cls.from_dict({field: value})
    assert str(info.value).endswith(f"got {tuple(value) if isinstance(value, list) else value!r}")


def test_train_yaml_errors_name_file_section_line_and_key(tmp_path):
    path = tmp_path / "train.yaml"
    refuses(path, "model:\n  embedding_dim: 16\ntrain:\n  num_epochs: 3\n  batch_size: yes\n", "train", TrainConfig,
            r"train\.yaml \[train\] line 5: batch_size: must be an integer in "
            r"\[1, 1048576\], got True")
    refuses(path, "data:\n  columns:\n    jobs: {job_id: id}\n    job: {job_id: id}\n", "data", DataConfig,
            r"train\.yaml \[data\] line 4: columns\.job: unknown table 'job'")
    refuses(path, "model: [16]\n", "model", ModelConfig,
            r"train\.yaml line 1: section 'model' must be a mapping, got list")


def test_table_spec_errors_name_file_section_line_and_key(tmp_path):
    from convfm.cli.common import load_table_spec

    spec = tmp_path / "spec.yaml"
    spec.write_text("path: t.csv\ncategorical: [color]\nvalid_fraction: 0.7\n")
    with pytest.raises(ConfigError, match=r"spec\.yaml line 3: valid_fraction: must be a number in \[0, 0\.5\)"):
        load_table_spec(spec)
    spec.write_text("data:\n  path: t.csv\n  categorical: [color]\n  seed: yes\n")
    with pytest.raises(ConfigError, match=r"spec\.yaml \[data\] line 4: seed: must be an integer >= 0, got True"):
        load_table_spec(spec)
    spec.write_text("data:\n  path: t.csv\n  numeric: [price]\n")
    assert load_table_spec(spec).path == str(tmp_path / "t.csv")
    assert load_table_spec(spec).split == "random"  # what a table is split by, also in the saved config
    spec.write_text("path: t.csv\nnumeric: [price]\nsplit: time\n")
    with pytest.raises(ConfigError, match=r"spec\.yaml: split: a table is split at random .*; got 'time'"):
        load_table_spec(spec)


def test_a_corrupt_config_json_names_its_file(tmp_path):
    path = tmp_path / "data_config.json"
    path.write_text('{"path": ')
    with pytest.raises(ConfigError, match=r"data_config\.json: DataConfig file is not valid JSON"):
        DataConfig.load_json(path)


def test_global_time_dates_from_yaml_are_canonical_iso_strings(tmp_path):
    """YAML reads an unquoted date as a date object; the config keeps an ISO string, so it stays JSON."""
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  split: global_time\n  valid_start: 2024-03-01\n  test_start: '2024-04-01 12:30'\n"
                    "  negative_sampling: popularity\n  job_lifetime_days: 14\n")
    data = load_yaml_config(path, "data", DataConfig)
    assert (data.valid_start, data.test_start) == ("2024-03-01T00:00:00", "2024-04-01T12:30:00")
    assert data.negative_sampling == "popularity" and data.job_lifetime_days == 14
    data.save_json(tmp_path / "d.json")
    assert DataConfig.load_json(tmp_path / "d.json") == data
    assert DataConfig().negative_sampling == "live" and DataConfig().split == "time"


def test_an_impossible_yaml_date_names_file_section_line_and_key(tmp_path):
    """2024-13-45 has a date's shape, so PyYAML builds a date and its ValueError escaped as a traceback."""
    path = tmp_path / "c.yaml"
    refuses(path, "data:\n  split: global_time\n  valid_start: 2024-13-45\n", "data", DataConfig,
            r"^\S*c\.yaml \[data\] line 3: valid_start: not a valid date: 2024-13-45 "
            r"\(month must be in 1\.\.12\)$")


def test_an_unreadable_config_file_is_one_line(tmp_path, monkeypatch):
    """Root reads any file, so the PermissionError is made by hand."""
    import pathlib

    path = tmp_path / "c.yaml"
    path.write_text("train: {}\n")

    def refuse(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(pathlib.Path, "read_text", refuse)
    with pytest.raises(ConfigError, match=r"c\.yaml: cannot read config file: Permission denied$"):
        load_yaml_config(path, "train", TrainConfig)


def test_a_key_written_twice_is_refused_naming_both_lines(tmp_path):
    """YAML keeps the last one silently, and a later error named the first one's line."""
    path = tmp_path / "c.yaml"
    refuses(path, "train:\n  learning_rate: 0.01\n  batch_size: 64\n  learning_rate: -1\n", "train", TrainConfig,
            r"c\.yaml \[train\] line 4: learning_rate: key written twice, at lines 2 "
            r"and 4 \(YAML would keep only the last\): keep one$")
    refuses(path, "serve: {}\nserve: {}\n", "train", TrainConfig,
            r"c\.yaml line 2: serve: key written twice, at lines 1 and 2")
    path.write_text("base: &b {num_epochs: 2}\ntrain:\n  <<: *b\n  num_epochs: 3\n")  # a merge key may be overridden
    assert load_yaml_config(path, "train", TrainConfig).num_epochs == 3


@pytest.mark.parametrize("cls", [DataConfig, TrainConfig])
def test_a_negative_seed_is_refused_before_ray_starts(tmp_path, cls):
    """numpy's generators refuse it, but only once the workers draw negatives or shuffle."""
    section = "data" if cls is DataConfig else "train"
    path = tmp_path / "c.yaml"
    refuses(path, f"{section}:\n  seed: -1\n", section, cls,
            rf"c\.yaml \[{section}\] line 2: seed: must be an integer >= 0, got -1$")


@pytest.mark.parametrize("text, match", [
    ("train:\n  learning_rate: 1e-3\n",
     r"line 2: learning_rate: must be a number in \(0, 1\], got '1e-3' \(YAML reads 1e-3 as text: write 1\.0e-3\)$"),
    ("train:\n  min_delta: 1.0e3\n", r"got '1\.0e3' \(YAML reads 1\.0e3 as text: write 1\.0e\+3\)$"),
    ("train:\n  batch_size: 1e3\n",
     r"batch_size: must be an integer .*, got '1e3' \(YAML reads 1e3 as text: write 1000\)$"),
    ("train:\n  ema_decay: '0.9'\n", r"got '0\.9' \(a number in quotes is text: write it without quotes\)$"),
    ("train:\n  batch_size: '0.5'\n", r"batch_size: must be an integer in \[1, 1048576\], got '0\.5'$"),
])
def test_a_number_yaml_reads_as_text_says_how_to_write_it(tmp_path, text, match):
    """YAML 1.1 wants a dot and a signed exponent (1.0e-3): 1e-3 is a string, and the message showed a number."""
    path = tmp_path / "c.yaml"
    refuses(path, text, "train", TrainConfig,
            match)


@pytest.mark.parametrize("field", ["positive_events", "negative_events", "categorical"])
def test_a_string_where_a_list_is_meant_is_refused(tmp_path, field):
    """It read as its characters: "unknown event(s) ['a', 'p', 'p', 'l', 'y']"."""
    path = tmp_path / "c.yaml"
    refuses(path, f"data:\n  {field}: apply\n", "data", DataConfig,
            rf"c\.yaml \[data\] line 2: {field}: must be a list of (events|column names) "
            r"\(write \[apply\] for one\), got 'apply'$")
