"""Shared fixtures: small real datasets written through the real stage components."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.demo_data import write_digits_split

REPO = Path(__file__).resolve().parents[1]


def experiment_in(tmp: Path, name: str) -> str:
    """The id of experiment ``name`` in the current MLflow store, created with its artifacts
    under ``tmp`` if new. (mlflow.set_experiment on a fresh SQLite store would put them under
    ./mlruns of the cwd: the repo's, when tests run there.)"""
    import mlflow

    exp = mlflow.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    return mlflow.create_experiment(name, artifact_location=(Path(tmp) / "artifacts").resolve().as_uri())


@pytest.fixture(scope="session")
def digits_split(tmp_path_factory) -> Path:
    """The digits demo set taken through ingest -> clean -> split components (no DVC, no MLflow)."""
    return write_digits_split(tmp_path_factory.mktemp("digits"))


@dataclass(frozen=True)
class DemoPipeline:
    """One `dvc repro` of the demo project (tests/project.py:demo_params), shared by a session."""
    root: Path        # where it ran; the e2e module's, which changes it (a second repro, `dvc exp run`)
    env: dict         # to run DVC and stages in ``root`` with
    out: str          # the repro's log
    pristine: Path    # a copy taken right after the repro, never run in

    def copy_to(self, dst: Path) -> dict:
        """A copy of the project as the repro left it, at ``dst`` (new); returns the env to run it with."""
        from tests.project import copy_finished_project

        return copy_finished_project(self.pristine, dst)


@pytest.fixture(scope="session")
def demo_pipeline(tmp_path_factory) -> DemoPipeline:
    """The whole demo pipeline through real `dvc repro`, once a session (~100 s): the e2e tests
    read and then change it, tests that start from a finished pipeline copy it (`copy_to`)."""
    from tests.project import copy_finished_project, copy_project, demo_params, sh

    root = tmp_path_factory.mktemp("demo")
    env = copy_project(root, params=demo_params())
    out = sh(["dvc", "repro"], root, env, timeout=1200)
    pristine = tmp_path_factory.mktemp("demo-pristine") / "project"
    copy_finished_project(root, pristine)
    return DemoPipeline(root=root, env=env, out=out, pristine=pristine)


# Whether the Ray running in this process was started by `ray_session` (and is ended by it).
_ray_from_fixture = False


@pytest.fixture(scope="module")
def ray_session():
    """One in-process Ray per test module that needs it (each start costs ~10 s here)."""
    global _ray_from_fixture
    import ray

    from trainwise.components.ray_start import init_ray

    if ray.is_initialized() and not _ray_from_fixture:
        ray.shutdown()  # left by something else, with other settings: init_ray would silently join it
    os.environ.pop("RAY_ADDRESS", None)
    init_ray(num_cpus=2, train_poll_s=0.25)
    _ray_from_fixture = True
    yield ray
    _ray_from_fixture = False
    ray.shutdown()


@pytest.fixture(autouse=True, scope="module")
def _no_stray_ray():
    """Shut down a Ray that a test started in this process without `ray_session` (a stage run
    in-process calls init_ray and leaves Ray up), so it does not outlive its module. Torn down
    after `ray_session` (autouse fixtures are set up first); a Ray that fixture owns is kept."""
    yield
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized() and not _ray_from_fixture:
        ray.shutdown()


# Environment variables that code under test sets for the rest of the process:
# `mlflow.set_tracking_uri` sets MLFLOW_TRACKING_URI, which every later stage would then prefer
# over params.yaml; the tracker sets MLFLOW_HTTP_REQUEST_* defaults for its server; run_sweep
# sets TUNE_GLOBAL_CHECKPOINT_S.
_RESTORED_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT", "TUNE_GLOBAL_CHECKPOINT_S")


def _restore_env():
    before = {k: os.environ.get(k) for k in _RESTORED_ENV}
    yield
    for k, v in before.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


# Put the environment back after each test, and after each module (module fixtures that set a
# store and "restore" the old one leak it at teardown).
_no_env_leaks = pytest.fixture(autouse=True)(_restore_env)
_no_env_leaks_per_module = pytest.fixture(autouse=True, scope="module")(_restore_env)
