"""Features: the FeatureMap contract, the job and table extractors, text encoding."""
