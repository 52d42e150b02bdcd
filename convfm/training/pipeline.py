"""The seed document's training API, running the same Ray Train path as ``convfm train``.

    config = create_training_config(embedding_dim=64, batch_size=32, num_epochs=50, learning_rate=0.001)
    results = ConvFMTrainingPipeline(config).run_full_pipeline(jobs_df, interactions_df)
    results["model_path"], results["validation_metrics"]["accuracy"]

Keyword arguments are routed by name to ModelConfig, TrainConfig, DataConfig or the extractor (``max_skills``,
``min_freq``, ``text_dim``); a name none of them has is refused. This module imports no Ray: the driver is
imported when a pipeline runs.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any, Mapping, Optional

import pandas as pd

from convfm.config import DataConfig, ModelConfig, TrainConfig
from convfm.errors import ConfigError

log = logging.getLogger(__name__)
EXTRACTOR_OPTIONS = ("max_skills", "min_freq", "text_dim")
PIPELINE_OPTIONS = ("output_dir", "run_name", "address")
DEFAULT_NEGATIVE_RATIO = 4  # for interactions without any negative event (implicit feedback)


def _fields(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """Validated configs of one pipeline run. ``data`` holds DataConfig fields except ``path``/``kind``."""

    model: ModelConfig
    train: TrainConfig
    data: Mapping[str, Any]
    extractor: Mapping[str, Any]
    output_dir: str = "runs"
    run_name: Optional[str] = None
    address: Optional[str] = None


def create_training_config(
    embedding_dim: int = 64, batch_size: int = 32, num_epochs: int = 50, learning_rate: float = 0.001,
    **more: Any,
) -> PipelineConfig:
    """The seed's defaults plus any ModelConfig / TrainConfig / DataConfig / extractor field by name."""
    model_names, train_names = _fields(ModelConfig), _fields(TrainConfig)
    data_names = _fields(DataConfig) - {"path", "kind"}
    unknown = sorted(set(more) - model_names - train_names - data_names - set(EXTRACTOR_OPTIONS)
                     - set(PIPELINE_OPTIONS))
    if unknown:
        raise ConfigError(f"create_training_config: unknown option(s) {unknown}; allowed: fields of "
                          f"ModelConfig, TrainConfig, DataConfig, {list(EXTRACTOR_OPTIONS)} and "
                          f"{list(PIPELINE_OPTIONS)}")
    values = {"embedding_dim": embedding_dim, "batch_size": batch_size, "num_epochs": num_epochs,
              "learning_rate": learning_rate, **more}

    def pick(names: set[str]) -> dict[str, Any]:  # a name may go to two configs (seed: data and train)
        return {k: v for k, v in values.items() if k in names}

    data = pick(data_names)
    DataConfig.from_dict(data, source="create_training_config")  # validate now, not when the pipeline runs
    return PipelineConfig(
        model=ModelConfig.from_dict(pick(model_names), source="create_training_config"),
        train=TrainConfig.from_dict(pick(train_names), source="create_training_config"),
        data=data, extractor=pick(set(EXTRACTOR_OPTIONS)), **pick(set(PIPELINE_OPTIONS)),
    )


class ConvFMTrainingPipeline:
    """Write the frames to a data directory inside the run, then train with Ray Train (``train.driver``)."""

    def __init__(self, config: Optional[PipelineConfig] = None) -> None:
        self.config = config or create_training_config()
        self.result: Any = None

    def data_config(self, data_dir: Path, interactions_df: pd.DataFrame) -> DataConfig:
        """DataConfig for the written frames; all-positive interactions get sampled negatives."""
        options = dict(self.config.data)
        if "negative_ratio" not in options and not _has_negative_events(interactions_df, options):
            log.info("interactions have no negative events: sampling %d unseen jobs per positive as negatives",
                     DEFAULT_NEGATIVE_RATIO)
            options["negative_ratio"] = DEFAULT_NEGATIVE_RATIO
        return DataConfig.from_dict({**options, "kind": "jobs", "path": str(data_dir)}, source="pipeline")

    def run_full_pipeline(self, jobs_df: pd.DataFrame, interactions_df: pd.DataFrame,
                          users_df: Optional[pd.DataFrame] = None) -> dict[str, Any]:
        """Train and return {"model_path", "validation_metrics" (accuracy, precision, recall, f1, roc_auc,
        log_loss, ranking metrics), "best_epoch", "history", "run_dir"}."""
        from train.driver import run_training  # Ray only when a pipeline runs

        run_dir = Path(self.config.output_dir) / (self.config.run_name or f"pipeline-{time.strftime('%Y%m%d-%H%M%S')}")
        data_dir = run_dir / "data"
        data_dir.mkdir(parents=True, exist_ok=True)
        jobs_df.to_csv(data_dir / "jobs.csv", index=False)
        interactions_df.to_csv(data_dir / "interactions.csv", index=False)
        if users_df is not None:
            users_df.to_csv(data_dir / "users.csv", index=False)
        self.result = run_training(
            self.data_config(data_dir, interactions_df), self.config.model, self.config.train, run_dir,
            address=self.config.address, extractor_options=self.config.extractor,
        )
        return {
            "model_path": str(self.result.best_dir),
            "validation_metrics": self.result.validation_metrics,
            "best_epoch": self.result.best_epoch,
            "history": self.result.history,
            "run_dir": str(run_dir),
        }


def _has_negative_events(interactions: pd.DataFrame, options: Mapping[str, Any]) -> bool:
    event_column = dict(options.get("columns", {}).get("interactions", {})).get("event", "event")
    if event_column not in interactions.columns:
        return False
    negatives = options.get("negative_events", DataConfig().negative_events)
    return bool(interactions[event_column].astype(str).str.strip().str.lower().isin(negatives).any())
