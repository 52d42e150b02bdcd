"""Training in one process: the epoch protocol and its loop, the seed training pipeline (Ray-free)."""
