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
