"""Hyperparameter search for ConvFM with Ray Tune.

``space`` holds the search space keyed by config field names and its YAML spec language; ``config`` the
validated ``TuneConfig``; ``runner.run_tune`` runs one TorchTrainer per trial under ASHA and publishes the best
checkpoint to the model registry; ``results`` writes the trial table, plot and export (Ray-free).
Nothing here is imported by the ``convfm`` library itself.
"""
