"""Warm start (``TrainConfig.init_from``, ``convfm train --init-from``): train from a published model.

The choices, each made once here:
- The model is the published one: its ModelConfig replaces the run's, and so do the data fields that decide
  its extractor (``history_length``, ``recency``; a table's columns). ``warm_configs`` says which fields it
  replaced; the run logs that and records it in run.json.
- The extractor is fitted on the new data starting from the published one (``JobFeatureExtractor.fit`` with
  ``base``): every vocabulary keeps the published values at their indices and appends the new values the usual
  rules admit (ids with a training example; other values seen ``min_freq`` times in the new data). Salary
  statistics, the text model and a table's numeric mean/std are kept, so the published dense weights keep
  their meaning. The fields must come out the same (same columns in the data), else a ConfigError names them.
- The weights: ``ConvFM.load_grown`` puts every published vocabulary row at its value's index and copies every
  other parameter and buffer; new rows are initialised as a fresh model's. Optimizer, LR schedule and early
  stopping start fresh.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Optional

import torch

from convfm.config import DataConfig, ModelConfig
from convfm.errors import ArtifactError
from convfm.features.fields import FeatureMap
from convfm.model.network import ConvFM
from convfm.store import registry, storage
from convfm.store.artifacts import LoadedModel, load_model_dir

TABLE_FIELDS = ("categorical", "multi_valued", "numeric", "separator")  # a table extractor's DataConfig fields


@dataclasses.dataclass
class WarmStart:
    """The published model a run starts from, and where it was found."""

    location: str  # the version (or model directory) found: a later publish does not change what a run read
    name: str  # the registry entry's name (a plain model directory's own name)
    version: Optional[str]  # vNNNN, None for a plain model directory
    loaded: LoadedModel

    def record(self) -> dict[str, Any]:
        return {"location": self.location, "name": self.name, "version": self.version}


def load_warm_start(init_from: str) -> WarmStart:
    """The model ``init_from`` names: a registry entry (its latest), one of its versions, or a model directory,
    local or a URI (``registry.resolve``); ArtifactError naming ``init_from`` when it is none of those."""
    try:
        found = registry.locate(init_from)
        loaded = load_model_dir(registry.resolve(found))
    except ArtifactError as exc:
        raise ArtifactError(f"init_from {init_from}: {exc}") from None
    versioned = bool(registry.VERSION_RE.match(storage.name(found)))
    name = storage.name(storage.parent(found) if versioned else found)
    location = str(found) if storage.is_uri(found) else str(Path(found).resolve())
    return WarmStart(location, name, storage.name(found) if versioned else None, loaded)


def warm_configs(warm: WarmStart, data: DataConfig, model: ModelConfig) -> tuple[DataConfig, ModelConfig, list[str]]:
    """The run's data and model configs with the published model's fields in place, and one line per field that
    changed (``section.field: run's value -> published value``)."""
    extractor = warm.loaded.extractor  # of another kind than ``data``: prepare_data refuses it
    if extractor.kind == "jobs":
        fields = {"history_length": extractor.history_length, "recency": extractor.recency,
                  "popularity_days": extractor.popularity_days, "extra_columns": extractor.extra_columns}
    else:
        fields = {name: getattr(extractor, name) for name in TABLE_FIELDS}
    published_data = DataConfig.from_dict({**data.to_dict(), **fields}, source=f"{warm.location} extractor")
    published_model = warm.loaded.model.config
    notes = [f"{section}.{name}: {getattr(mine, name)!r} -> {getattr(theirs, name)!r}"
             for section, mine, theirs in (("model", model, published_model), ("data", data, published_data))
             for name in mine.changed_from(theirs)]
    return published_data, published_model, notes


def warm_model(warm: WarmStart, feature_map: FeatureMap, seed: int) -> ConvFM:
    """A model over ``feature_map`` (the new extractor's) initialised as a fresh one under ``seed``, then holding
    the published weights (``ConvFM.load_grown``): the run's epoch 0 starts here."""
    torch.manual_seed(seed)
    model = ConvFM(warm.loaded.model.config, feature_map)
    model.load_grown(warm.loaded.model)
    return model
