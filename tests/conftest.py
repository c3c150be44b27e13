"""Shared fixtures: small real datasets written through the real stage components."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from components.data.demo import write_digits_split

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def digits_split(tmp_path_factory) -> Path:
    """The digits demo set taken through ingest -> clean -> split components (no DVC, no MLflow)."""
    return write_digits_split(tmp_path_factory.mktemp("digits"))


@pytest.fixture(scope="module")
def ray_session():
    """One in-process Ray per test module that needs it (each start costs ~10 s here)."""
    import ray

    from components.runtime import init_ray

    os.environ.pop("RAY_ADDRESS", None)
    init_ray(num_cpus=2, train_poll_s=0.25)
    yield ray
    ray.shutdown()


def _restore_tracking_uri_env():
    before = os.environ.get("MLFLOW_TRACKING_URI")
    yield
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before


# `mlflow.set_tracking_uri` also sets MLFLOW_TRACKING_URI in the environment, which every later
# stage would then prefer over params.yaml: put the environment back after each test, and after
# each module (module fixtures that set a store and "restore" the old one leak it at teardown).
_no_tracking_uri_leaks = pytest.fixture(autouse=True)(_restore_tracking_uri_env)
_no_tracking_uri_leaks_per_module = pytest.fixture(autouse=True, scope="module")(_restore_tracking_uri_env)
