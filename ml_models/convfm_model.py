"""Seed API: ``from ml_models.convfm_model import ConvFMJobRecommender``."""
from convfm.model.network import ConvFM
from convfm.model.recommender import ConvFMJobRecommender

__all__ = ["ConvFM", "ConvFMJobRecommender"]
