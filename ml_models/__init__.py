"""The seed document's ``ml_models`` package, kept so its examples run as written.

Each module re-exports the convfm implementation: ``convfm_model.ConvFMJobRecommender``,
``feature_extractor.JobFeatureExtractor`` and ``training_pipeline.ConvFMTrainingPipeline`` /
``create_training_config`` (which train through Ray Train, like ``convfm train``).
"""
