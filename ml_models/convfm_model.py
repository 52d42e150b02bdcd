"""Seed API: ``from ml_models.convfm_model import ConvFMJobRecommender``."""
from convfm.model import ConvFM
from convfm.recommender import ConvFMJobRecommender

__all__ = ["ConvFM", "ConvFMJobRecommender"]
