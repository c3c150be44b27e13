"""Datasets at stage boundaries: the Parquet data contract and the sources that feed it."""
