"""Evaluation: test metrics, comparison with baselines, the pipeline summary."""
