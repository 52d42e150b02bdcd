"""Seed API: ``from ml_models.training_pipeline import ConvFMTrainingPipeline, create_training_config``."""
from convfm.training.pipeline import ConvFMTrainingPipeline, PipelineConfig, create_training_config

__all__ = ["ConvFMTrainingPipeline", "PipelineConfig", "create_training_config"]
