"""Hyperparameter sweeps: Ray Tune over the training driver."""
