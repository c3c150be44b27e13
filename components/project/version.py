"""Which trainwise runs, and whether a project may run on it (`trainwise_version` in its params.yaml).

Imported by every stage's frame (the CLI and a cluster job check before a stage starts), so it
imports nothing heavy; dvc.yaml lists it, and trainwise/__init__.py (the version), in every stage.
"""

from __future__ import annotations

VERSION_PARAM = "trainwise_version"


def installed_version() -> str:
    """The trainwise version running this code (the package's ``__version__``, else its metadata)."""
    try:
        from trainwise import __version__  # the package; an install from before the rename has only metadata

        return str(__version__)
    except ImportError:
        pass
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("trainwise")
    except PackageNotFoundError:
        return "0+unknown"


def version_problem(wanted: str | None, *, source: str = "params.yaml") -> str | None:
    """Why a project that names trainwise ``wanted`` (its ``trainwise_version``) must not run on this one;
    None when it may (the same version, or a project that names none, like the trainwise repository)."""
    have = installed_version()
    if wanted is None or str(wanted) == have:
        return None
    return (f"{source}: {VERSION_PARAM} is {wanted} but trainwise {have} is installed. Set "
            f'`{VERSION_PARAM}: "{have}"` in params.yaml (every stage lists it, so `dvc status` shows them changed '
            f"and `trainwise run` re-runs them), or install trainwise=={wanted}")
