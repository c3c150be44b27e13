"""Networks. Modules take typed arguments only: no I/O, no config files.

``MODELS`` and ``build_model`` load torch on first use, not on import of this package: the
classical models (components/models/classical.py) and the backbone names live here too, and the
stages that use only those (baseline, clean) should not pay torch's import."""

__all__ = ["MODELS", "build_model"]


def __getattr__(name: str):
    if name in __all__:
        from trainwise.components.models import networks

        return getattr(networks, name)
    raise AttributeError(f"module 'trainwise.components.models' has no attribute {name!r}")
