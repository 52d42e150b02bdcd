"""convfm: a Convolutional Factorization Machine for job recommendation (pure PyTorch/pandas, no Ray)."""
from convfm.config import DataConfig, ModelConfig, TrainConfig
from convfm.errors import ArtifactError, ConfigError, ConvFMError, DataValidationError
from convfm.features.jobs import JobFeatureExtractor, TableFeatureExtractor, load_extractor
from convfm.model.network import ConvFM
from convfm.model.recommender import ConvFMJobRecommender

__version__ = "0.1.0"
__all__ = [
    "ArtifactError", "ConfigError", "ConvFM", "ConvFMError", "ConvFMJobRecommender", "DataConfig",
    "DataValidationError", "JobFeatureExtractor", "ModelConfig", "TableFeatureExtractor", "TrainConfig",
    "load_extractor",
]
