"""Argument helpers shared by subcommands: data source options and config loading."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional

from convfm.config import DataConfig, ModelConfig, TrainConfig, load_yaml_config, read_yaml


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--data", metavar="DIR", help="job-market directory (jobs, users, interactions files)")
    group.add_argument("--table", metavar="SPEC", help="YAML spec of a generic labelled table (kind: table)")


def load_table_spec(path: str | Path) -> DataConfig:
    """A table spec: DataConfig keys at top level (or under `data:`); `kind` defaults to table and a
    relative `path` is relative to the spec file."""
    document = read_yaml(path)
    values = {"kind": "table", **(document.get("data") or document)}
    config = DataConfig.from_dict(values, source=str(path))
    data_path = Path(config.path)
    if not data_path.is_absolute():
        values["path"] = str(Path(path).parent / data_path)
        config = DataConfig.from_dict(values, source=str(path))
    return config


def data_config(args: argparse.Namespace, config_path: Optional[str] = None) -> DataConfig:
    """--table SPEC, else the config file's `data` section with --data overriding its path."""
    if getattr(args, "table", None):
        return load_table_spec(args.table)
    config = load_yaml_config(config_path, "data", DataConfig) if config_path else DataConfig()
    if getattr(args, "data", None):
        config = DataConfig.from_dict({**config.to_dict(), "path": args.data})
    return config


def model_and_train_configs(config_path: Optional[str]) -> tuple[ModelConfig, TrainConfig]:
    if not config_path:
        return ModelConfig(), TrainConfig()
    return load_yaml_config(config_path, "model", ModelConfig), load_yaml_config(config_path, "train", TrainConfig)
