"""Training: the loop, its configuration, strategies, checkpoints and evaluation."""
