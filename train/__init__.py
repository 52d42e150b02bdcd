"""Data-parallel ConvFM training with Ray Train.

``loop.train_loop_per_worker`` runs on every worker (DDP, checkpoints from rank 0); ``driver.run_training``
validates, prepares data once, runs the ``TorchTrainer`` and writes the run directory (``outputs``).
Nothing here is imported by the ``convfm`` library itself.
"""
