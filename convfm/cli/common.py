"""Argument helpers shared by subcommands: data source options and config loading."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional

from convfm.config import DataConfig, ModelConfig, TrainConfig
from convfm.errors import ConfigError
from convfm.yamlfile import ConfigFile

# Sections a config file may hold: one YAML can carry every stage (configs/tune.yaml has tune + space too).
CONFIG_SECTIONS = ("data", "model", "train", "tune", "space", "serve")


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--data", metavar="DIR", help="job-market directory (jobs, users, interactions files)")
    group.add_argument("--table", metavar="SPEC", help="YAML spec of a generic labelled table (kind: table)")
    parser.add_argument("--events", metavar="LOG", help="feedback event log (a live store's events/ folder, path "
                        "or URI) read as interactions after the data's own (data.events)")


def load_table_spec(path: str | Path) -> DataConfig:
    """A table spec: DataConfig keys at top level (or under `data:`); `kind` defaults to table, `split` to random
    (the only split of a table), and a relative `path` is relative to the spec file."""
    spec = ConfigFile(path)
    section = "data" if isinstance(spec.document.get("data"), dict) else None
    values = {"kind": "table", "split": "random", **(spec.document["data"] if section else spec.document)}
    config = spec.build(DataConfig, values, section)
    if config.kind == "table" and config.split != "random":
        raise ConfigError(f"{path}: split: a table is split at random (one file, by valid_fraction/test_fraction) "
                          f"or by its train/valid/test files; got {config.split!r}", field="split")
    data_path = Path(config.path)
    if not data_path.is_absolute():
        values["path"] = str(Path(path).parent / data_path)
        config = spec.build(DataConfig, values, section)
    return config


def config_file(path: str | Path) -> ConfigFile:
    """A config file whose top-level keys are all known sections (see ``ConfigFile.check_sections``)."""
    file = ConfigFile(path)
    file.check_sections(CONFIG_SECTIONS)
    return file


def data_config(args: argparse.Namespace, config_path: Optional[str] = None) -> DataConfig:
    """--table SPEC, else the config file's `data` section with --data overriding its path."""
    if getattr(args, "table", None):
        return load_table_spec(args.table)
    config = config_file(config_path).load(DataConfig, "data") if config_path else DataConfig()
    overrides = {key: value for key, value in (("path", getattr(args, "data", None)),
                                               ("events", getattr(args, "events", None))) if value}
    return DataConfig.from_dict({**config.to_dict(), **overrides}) if overrides else config


def model_and_train_configs(config_path: Optional[str]) -> tuple[ModelConfig, TrainConfig]:
    if not config_path:
        return ModelConfig(), TrainConfig()
    file = config_file(config_path)
    return file.load(ModelConfig, "model"), file.load(TrainConfig, "train")
