"""Evaluation: classification and ranking metrics, baselines and the report of a split."""
