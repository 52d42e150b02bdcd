"""Data-parallel ConvFM training with Ray Train.

``loop.train_loop_per_worker`` runs on every worker (DDP, checkpoints from rank 0) around the epoch protocol of
``convfm.training.in_process``; ``driver.run_training`` validates, prepares data once, runs the ``TorchTrainer`` and writes
the run directory (``outputs``). ``ray_configs`` builds the ``TorchTrainer`` and ``checks`` holds the checks made
before Ray starts, both shared with ``tune``.
Nothing here is imported by the ``convfm`` library itself.
"""
