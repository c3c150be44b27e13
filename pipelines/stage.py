"""What every stage shares: params, an MLflow run, the cost meter, atomic metrics, errors.

A stage module is ``with Stage("name") as stage: ...`` around calls to components. Errors the
user can fix (params, data contract) end the process with a one-paragraph message and exit
code 2 instead of a traceback.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

from trainwise.components.atomic_io import NotOurFolder, write_json_atomic
from trainwise.components.data.contract import DISK_FULL_ERRNOS, DataContractError, read_manifest
from trainwise.components.stage_exit import Orphaned, exit_now, stopped_because, watch_parent
from trainwise.components.tracking.cost import CostMeter, Rates, nvml_probe, process_tree_pids
from trainwise.components.tracking.credentials import mask_value
from trainwise.components.tracking.mlflow_runs import (dvc_locked_hashes, environment_tags, flatten, git_commit,
                                             pipeline_run_id, resolve_tracking_uri, setup_mlflow)
from trainwise.components.tracking.pipeline_runs import find_or_create_pipeline_run, params_hash, update_pipeline_run
from trainwise.components.tracking.tracker import (Tracker, TrackingUnavailable, check_reachable, replay_spool,
                                         set_fail_fast_http_env)
from trainwise.pipelines.config import ConfigError, Params, load_params
from trainwise.pipelines.stage_error import StageError

# Errors a user can act on from the message alone (it names the file or key).
USER_ERRORS = (ConfigError, DataContractError, NotOurFolder, FileNotFoundError)


# Where logging is kept while the tracking store is unreachable (replayed by the next stage).
SPOOL_DIR = ".trainwise/mlflow_spool"
_STAGE_PROGRAM = [False]  # set by run_stage when this process runs one stage as its program
DIGEST_CHARS = 32  # MLflow's dataset digest column holds 36 characters
METER_SAMPLE_S = 5.0  # the cost meter's background sampling (process tree CPU, GPU utilisation)


class Stage:
    def __init__(self, name: str, *, params_file: str = "params.yaml", root: str | os.PathLike = "."):
        self.name = name
        self.root = Path(root).resolve()
        self.params: Params = load_params(self.root / params_file)
        self.paths = self.params.paths
        c = self.params.cost
        # A stage holds one process on one node until it reserves more (Ray workers, GPUs). Its GPU use
        # is read on the GPUs its own processes (in-process Ray's workers among them) run on, of those
        # CUDA_VISIBLE_DEVICES lets it see; not on every GPU of the machine.
        self.meter = CostMeter(rates=Rates(c.cpu_hour_usd, c.gpu_hour_usd, c.gpu_hour_usd_by_type, c.node_hour_usd),
                               cpus=1.0, nodes=1.0, gpu=nvml_probe(pids=process_tree_pids))
        self.run_id: str | None = None
        self.parent_run_id: str | None = None   # the pipeline run's MLflow run (see components/tracking/pipeline_runs.py)
        self.experiment_id: str | None = None
        self.tracking_uri: str | None = None
        self.tracker = Tracker(run_id=None, tracking_uri=None, spool_dir=self.root / SPOOL_DIR, enabled=False)
        self._t0 = time.perf_counter()
        self._started_at = time.time()
        # MLflow set-up is part of the bill, and so are the interpreter's start and the imports before here
        # (when this process is the stage's own: run_stage as the program, what dvc.yaml runs)
        self.meter.start(sample_every_s=METER_SAMPLE_S, from_process_start=_STAGE_PROGRAM[0])

    # -- paths -------------------------------------------------------------------------
    def path(self, rel: str) -> Path:
        return self.root / rel

    def storage(self) -> str:
        """``ray.storage_path`` as Ray wants it: a URL (s3://, gs://) as given, a path made absolute."""
        sp = self.params.ray.storage_path
        return sp if "://" in sp else str(self.path(sp))

    # -- lifecycle -----------------------------------------------------------------------
    def __enter__(self) -> "Stage":
        logging.basicConfig(level=logging.INFO, format=f"[{self.name}] %(message)s", force=True)
        for noisy in ("mlflow", "alembic", "urllib3", "filelock"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
        watch_parent(log=self.log)  # `dvc repro` killed: don't keep training for nobody
        logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)  # per-retry chatter during an outage
        mp = self.params.mlflow
        spool = self.root / SPOOL_DIR
        if not mp.enabled:
            self.run_id = f"local-{uuid.uuid4().hex[:12]}"
            self.log("mlflow.enabled is false: nothing is tracked; metrics go to %s/%s.json only",
                     self.paths.metrics, self.name)
            return self
        import mlflow  # here, not above: importing it took 5 s of a stage's start-up, for nothing when off

        set_fail_fast_http_env()
        # A stage's output is a log (dvc repro's, a CI job's): MLflow's progress bars for the
        # sub-second artifact copies of log_model / register_model only garble it. Users may set it.
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        self.tracking_uri = resolve_tracking_uri(mp.tracking_uri, self.root)
        try:  # before any compute: a missing server is an error now, not after an hour of training
            check_reachable(self.tracking_uri)
        except TrackingUnavailable as err:
            raise StageError(str(err)) from None
        self.experiment_id = setup_mlflow(tracking_uri=mp.tracking_uri, experiment=mp.experiment, root=self.root)
        for run_id, n in replay_spool(spool, tracking_uri=self.tracking_uri):
            self.log("MLflow is reachable again: replayed %d spooled operation(s) of run %s", n, run_id)
        section = getattr(self.params, self.name, None)
        pipeline_run, commit = pipeline_run_id(), git_commit(self.root)
        # One parent run per pipeline run (`dvc repro`), found or created by the first stage of it;
        # this stage's run is nested under it (one expandable row per repro in MLflow's runs table).
        parent_tags = {"git.commit": commit, "params.hash": params_hash(self.params.model_dump(mode="json"))}
        if os.environ.get("DVC_EXP_NAME"):
            parent_tags["dvc.exp_name"] = os.environ["DVC_EXP_NAME"]
        self.parent_run_id = find_or_create_pipeline_run(self.experiment_id, pipeline_run=pipeline_run,
                                                         tags=parent_tags)
        run = mlflow.start_run(run_name=self.name, parent_run_id=self.parent_run_id, tags={
            "trainwise.stage": self.name,
            "trainwise.pipeline_run": pipeline_run,
            "git.commit": commit,
        })
        self.run_id = run.info.run_id
        self.tracker = Tracker(run_id=self.run_id, tracking_uri=self.tracking_uri, spool_dir=spool)
        self.tracker.set_tags(environment_tags(os.environ))
        params = flatten(self.params.cost.model_dump(mode="json"), "cost.")  # the rates behind cost/usd
        if section is not None:
            params.update(flatten(section.model_dump(mode="json"), f"{self.name}."))
        self.tracker.log_params(params)
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        self.meter.stop()
        self.tracker.end("FINISHED" if exc_type is None else "FAILED")
        if self.tracker.active and self.parent_run_id:
            try:  # the parent's total cost and status, from its stage runs so far
                update_pipeline_run(self.parent_run_id, experiment_id=self.experiment_id)
            except Exception as err:  # a summary the next stage recomputes: never fail the stage over it
                logging.getLogger("trainwise").warning("could not update the pipeline's MLflow run %s: %s",
                                                       self.parent_run_id, str(err).splitlines()[0][:200])
        if self.tracker.enabled and not self.tracker.online:
            try:  # back already? then the spool goes now rather than at the next stage
                check_reachable(self.tracking_uri, timeout_s=2)
                replayed = replay_spool(self.root / SPOOL_DIR, tracking_uri=self.tracking_uri)
            except Exception:
                replayed = []
            if any(rid == self.run_id for rid, _ in replayed):
                self.log("MLflow was unreachable during this stage and is back: its %d spooled operation(s) "
                         "were replayed to run %s", self.tracker.spooled, self.run_id)
            else:
                logging.getLogger("trainwise").warning("%s", self.tracker.report())
        return False

    def record_input(self, data_dir: str | os.PathLike) -> dict:
        """Read an input dataset's manifest; tag the run with its version and log it as an MLflow input.

        Tags: our content hash and row count, and the md5 DVC recorded for the directory
        (dvc.lock, when it matches the data on disk). A split dataset is logged as one MLflow
        dataset input per split (context train / val / test), digest = the content hash (its
        first 32 hex digits: MLflow stores at most 36 characters; the full hash is in the tag).
        """
        manifest = read_manifest(data_dir)
        rel = os.path.relpath(data_dir, self.root)
        tags = {f"input.{rel}.content_hash": manifest["content_hash"], f"input.{rel}.rows": manifest["rows"]}
        dvc_md5 = dvc_locked_hashes(self.root / "dvc.lock", [rel]).get(os.path.normpath(rel))
        if dvc_md5:
            tags[f"input.{rel}.dvc_md5"] = dvc_md5
        self.tracker.set_tags(tags)
        splits = manifest.get("split_class_counts") or (("train", "val", "test") if "split" in manifest["schema"] else ())
        for split in splits:
            self.tracker.log_input(name=f"{Path(rel).name}/{split}", context=split, source=Path(data_dir).resolve(),
                                   digest=manifest["content_hash"][:DIGEST_CHARS])
        return manifest

    def log(self, msg: str, *args) -> None:
        logging.getLogger("trainwise").info(msg, *args)

    def finish(self, metrics: dict[str, float], *, artifacts: list[str | os.PathLike] = (),
               logged_per_step: set[str] = frozenset()) -> dict:
        """Add cost, write ``metrics/<stage>.json`` atomically, log it all to MLflow in one batch.

        Keys in ``logged_per_step`` already have a per-epoch series in MLflow; a summary value
        logged under the same name would land at step 0 of that series, so it is left out there.
        """
        out = {**metrics, **self.meter.read()}
        write_json_atomic(self.path(self.paths.metrics) / f"{self.name}.json", out)
        self.tracker.log_metrics({k: float(v) for k, v in out.items() if k not in logged_per_step})
        for a in artifacts:
            self.tracker.log_artifact(a)
        plots = self.path(self.paths.plots)
        if plots.is_dir():  # the plot data this stage wrote, as DVC sees it
            for p in sorted(plots.iterdir()):
                if p.is_file() and p.stat().st_mtime >= self._started_at - 1:
                    self.tracker.log_artifact(p, artifact_path="plots")
        self.log("done in %.1fs, cost $%.6f; metrics in %s/%s.json", time.perf_counter() - self._t0,
                 out["cost/usd"], self.paths.metrics, self.name)
        return out


def _stage_name(main) -> str | None:
    """`trainwise.pipelines.train` -> "train", also when run as ``python -m trainwise.pipelines.train`` (module __main__)."""
    spec = getattr(sys.modules.get(main.__module__), "__spec__", None)
    name = spec.name if spec else main.__module__
    return name.rpartition(".")[2] if name.rpartition(".")[0].split(".")[-1] == "pipelines" else None


def run_stage(main, *, exit_process: bool | None = None) -> None:
    """Run a stage's ``main`` and turn user-fixable errors into a clear message, exit 2.

    ``exit_process`` (default: ``main`` is the program's own, i.e. ``python -m pipelines.<stage>``
    as dvc.yaml runs it) ends the process here with :func:`trainwise.components.stage_exit.exit_now`: every
    exit path and code as before, without the interpreter's teardown of torch, MLflow and Ray
    (seconds per stage; benchmarks/stage_exit.py). Called from other code, it returns or raises.
    """
    if exit_process is None:
        exit_process = getattr(main, "__module__", None) == "__main__"
    if not exit_process:
        _run_stage(main)
        return
    _STAGE_PROGRAM[0] = True
    try:
        _run_stage(main)
    except SystemExit as done:
        exit_now(done.code)
    exit_now(0)


def _run_stage(main) -> None:
    from trainwise.pipelines.remote import submit, submitted_here

    try:
        name = _stage_name(main)
        if name and submitted_here(name):  # ray.submit lists it: run it as a Ray Job, outputs come back
            submit(name)
            return
        main()
    except USER_ERRORS + (StageError,) as err:
        # masked: a message may quote a URL or setting that carries a credential
        print(f"trainwise: error: {mask_value(str(stopped_because() or err))}", file=sys.stderr)
        sys.exit(2)
    except OSError as err:
        if err.errno not in DISK_FULL_ERRNOS or stopped_because():
            raise
        print(f"trainwise: error: {mask_value(disk_full_message(err))}", file=sys.stderr)
        sys.exit(2)
    except Orphaned as err:  # `dvc repro` is gone: stop without publishing, like Ctrl-C would
        if stopped_because():
            _exit_stopped()
        print(f"trainwise: stopped: {err}", file=sys.stderr)
        sys.exit(130)
    except BaseException:
        if not stopped_because():
            raise
        _exit_stopped()  # whatever the interrupt turned into, the watchdog's reason is the error
    if stopped_because():
        _exit_stopped()


def disk_full_message(err: OSError) -> str:
    """What a stage says when a write fails for want of room (``DISK_FULL_ERRNOS``): where, that the
    previous outputs are untouched (outputs are replaced in one rename, only once complete), and what to do."""
    import errno

    where = err.filename or "a file this stage writes"
    folder = Path(err.filename).parent if err.filename else Path(".")
    if err.errno == errno.EFBIG:
        what = f"a file grew past this process's file-size limit while writing {where}"
        fix = "raise the limit (`ulimit -f unlimited`), then re-run (dvc repro)"
    else:
        what = (f"{'the disk quota is used up' if err.errno == errno.EDQUOT else 'no space left on the device'} "
                f"while writing {where}")
        fix = (f"make room on that disk (`df --human-readable {folder}`; old versions in the DVC cache: `dvc gc --workspace`), or "
               f"move the outputs (params.yaml `paths`) or the temporary files (TMPDIR, now {tempfile.gettempdir()}) "
               "to a disk with room, then re-run (dvc repro)")
    return (f"{what} ({err.strerror or err}). The stage's previous outputs are unchanged (an output is replaced in "
            f"one rename, only once complete, and the partial one was removed): {fix}")


def _exit_stopped() -> None:
    """A watchdog (e.g. ray.schedule_timeout_s) stopped the stage: its reason is the error."""
    print(f"trainwise: error: {stopped_because()}", file=sys.stderr)
    sys.exit(2)
