"""Argument helpers shared by subcommands: data source options and config loading."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional

from convfm.config import DataConfig, ModelConfig, TrainConfig, config_from_yaml, load_yaml_config, read_yaml, \
    yaml_key_lines
from convfm.errors import ConfigError

# Sections a config file may hold: one YAML can carry every stage (configs/tune.yaml has tune + space too).
CONFIG_SECTIONS = ("data", "model", "train", "tune", "space", "serve")


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--data", metavar="DIR", help="job-market directory (jobs, users, interactions files)")
    group.add_argument("--table", metavar="SPEC", help="YAML spec of a generic labelled table (kind: table)")


def load_table_spec(path: str | Path) -> DataConfig:
    """A table spec: DataConfig keys at top level (or under `data:`); `kind` defaults to table and a
    relative `path` is relative to the spec file."""
    document = read_yaml(path)
    section = "data" if isinstance(document.get("data"), dict) else None
    values = {"kind": "table", **(document["data"] if section else document)}
    config = config_from_yaml(DataConfig, values, path, section)
    data_path = Path(config.path)
    if not data_path.is_absolute():
        values["path"] = str(Path(path).parent / data_path)
        config = config_from_yaml(DataConfig, values, path, section)
    return config


def check_sections(path: str | Path) -> None:
    """A config file's top-level keys must be known sections: a typo (``trian:``) would otherwise be ignored
    and every value in it silently replaced by defaults."""
    unknown = sorted(set(read_yaml(path)) - set(CONFIG_SECTIONS))
    if unknown:
        line = yaml_key_lines(path).get(str(unknown[0]))
        raise ConfigError(f"{path}{f' line {line}' if line else ''}: unknown section(s) {unknown}; "
                          f"allowed: {list(CONFIG_SECTIONS)}", field=str(unknown[0]))


def data_config(args: argparse.Namespace, config_path: Optional[str] = None) -> DataConfig:
    """--table SPEC, else the config file's `data` section with --data overriding its path."""
    if getattr(args, "table", None):
        return load_table_spec(args.table)
    if config_path:
        check_sections(config_path)
    config = load_yaml_config(config_path, "data", DataConfig) if config_path else DataConfig()
    if getattr(args, "data", None):
        config = DataConfig.from_dict({**config.to_dict(), "path": args.data})
    return config


def model_and_train_configs(config_path: Optional[str]) -> tuple[ModelConfig, TrainConfig]:
    if not config_path:
        return ModelConfig(), TrainConfig()
    check_sections(config_path)
    return load_yaml_config(config_path, "model", ModelConfig), load_yaml_config(config_path, "train", TrainConfig)
