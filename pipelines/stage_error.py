"""The error a stage raises when it cannot go on (its own module: pipelines/stage.py and
pipelines/remote.py both raise it, and stage imports remote)."""


class StageError(RuntimeError):
    """A stage cannot go on; the message says what to do."""
