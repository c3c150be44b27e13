"""What every stage shares: params, an MLflow run, the cost meter, atomic metrics, errors.

A stage module is ``with Stage("name") as stage: ...`` around calls to components. Errors the
user can fix (params, data contract) end the process with a one-paragraph message and exit
code 2 instead of a traceback.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

from components.data.contract import DataContractError, read_manifest, write_json_atomic
from components.runtime import watch_parent
from components.tracking.cost import CostMeter, Rates
from components.tracking.mlflow_runs import flatten, git_commit, pipeline_run_id, setup_mlflow
from pipelines.config import ConfigError, Params, load_params

# Errors a user can act on from the message alone (it names the file or key).
USER_ERRORS = (ConfigError, DataContractError, FileNotFoundError)


class StageError(RuntimeError):
    """A stage cannot go on; the message says what to do."""


class Stage:
    def __init__(self, name: str, *, params_file: str = "params.yaml", root: str | os.PathLike = "."):
        self.name = name
        self.root = Path(root).resolve()
        self.params: Params = load_params(self.root / params_file)
        self.paths = self.params.paths
        self.meter = CostMeter(rates=Rates(self.params.cost.cpu_hour_usd, self.params.cost.gpu_hour_usd))
        self.run_id: str | None = None
        self._t0 = time.perf_counter()
        self.meter.start()  # from process start: imports and MLflow set-up are part of the bill

    # -- paths -------------------------------------------------------------------------
    def path(self, rel: str) -> Path:
        return self.root / rel

    # -- lifecycle -----------------------------------------------------------------------
    def __enter__(self) -> "Stage":
        import mlflow

        logging.basicConfig(level=logging.INFO, format=f"[{self.name}] %(message)s", force=True)
        for noisy in ("mlflow", "alembic", "urllib3", "filelock"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
        watch_parent(log=self.log)  # `dvc repro` killed: don't keep training for nobody
        mp = self.params.mlflow
        setup_mlflow(tracking_uri=mp.tracking_uri, experiment=mp.experiment, root=self.root)
        section = getattr(self.params, self.name, None)
        run = mlflow.start_run(run_name=self.name, tags={
            "trainwise.stage": self.name,
            "trainwise.pipeline_run": pipeline_run_id(),
            "git.commit": git_commit(self.root),
        })
        self.run_id = run.info.run_id
        if section is not None:
            mlflow.log_params(flatten(section.model_dump(mode="json"), f"{self.name}."))
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        import mlflow

        mlflow.end_run(status="FINISHED" if exc_type is None else "FAILED")
        return False

    def record_input(self, data_dir: str | os.PathLike) -> dict:
        """Read an input dataset's manifest and tag the run with its version (content hash)."""
        import mlflow

        manifest = read_manifest(data_dir)
        rel = os.path.relpath(data_dir, self.root)
        mlflow.set_tags({f"input.{rel}.content_hash": manifest["content_hash"], f"input.{rel}.rows": manifest["rows"]})
        return manifest

    def log(self, msg: str, *args) -> None:
        logging.getLogger("trainwise").info(msg, *args)

    def finish(self, metrics: dict[str, float], *, artifacts: list[str | os.PathLike] = (),
               logged_per_step: set[str] = frozenset()) -> dict:
        """Add cost, write ``metrics/<stage>.json`` atomically, log it all to MLflow in one batch.

        Keys in ``logged_per_step`` already have a per-epoch series in MLflow; a summary value
        logged under the same name would land at step 0 of that series, so it is left out there.
        """
        import mlflow

        out = {**metrics, **self.meter.read()}
        write_json_atomic(self.path(self.paths.metrics) / f"{self.name}.json", out)
        mlflow.log_metrics({k: float(v) for k, v in out.items() if k not in logged_per_step})
        for a in artifacts:
            p = Path(a)
            if p.is_dir():
                mlflow.log_artifacts(str(p), artifact_path=p.name)
            elif p.exists():
                mlflow.log_artifact(str(p))
        self.log("done in %.1fs, cost $%.6f; metrics in %s/%s.json", time.perf_counter() - self._t0,
                 out["cost/usd"], self.paths.metrics, self.name)
        return out


def _stage_name(main) -> str | None:
    """`pipelines.train` -> "train", also when run as ``python -m pipelines.train`` (module __main__)."""
    spec = getattr(sys.modules.get(main.__module__), "__spec__", None)
    name = spec.name if spec else main.__module__
    return name.split(".", 1)[1] if name.startswith("pipelines.") else None


def run_stage(main) -> None:
    """Run a stage's ``main`` and turn user-fixable errors into a clear message, exit 2."""
    from pipelines.remote import submit, submitted_here

    try:
        name = _stage_name(main)
        if name and submitted_here(name):  # ray.submit lists it: run it as a Ray Job, outputs come back
            submit(name)
            return
        main()
    except USER_ERRORS + (StageError,) as err:
        print(f"trainwise: error: {err}", file=sys.stderr)
        sys.exit(2)
