"""Tracking: MLflow runs, lineage tags and the cost meter."""
