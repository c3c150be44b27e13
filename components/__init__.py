"""Building blocks of trainwise: no argv, no params.yaml, no DVC knowledge."""
