"""Seed API: ``from ml_models.feature_extractor import JobFeatureExtractor`` (saves JSON + NPZ, never pickle)."""
from convfm.features.jobs import JobFeatureExtractor

__all__ = ["JobFeatureExtractor"]
