"""Serving: trained model + the shared preprocessing -> predictions (trainwise predict, the MLflow pyfunc)."""
