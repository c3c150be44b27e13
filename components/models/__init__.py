"""Networks. Modules take typed arguments only: no I/O, no config files."""

from components.models.networks import MODELS, build_model

__all__ = ["MODELS", "build_model"]
