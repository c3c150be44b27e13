"""`trainwise`: run the pipeline, one stage, or check params.

    trainwise run [DVC REPRO ARGS...]   dvc repro, then the summary
    trainwise stage NAME                run one stage in this process (what dvc.yaml calls)
    trainwise summary                   the summary of the last run, from metrics/*.json
    trainwise check                     validate params.yaml
"""

from __future__ import annotations

import argparse
import importlib
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

from components.evaluation.summary import SUMMARY_BY_CLI_ENV, collect, format_summary, read_verdict
from components.tracking.mlflow_runs import PIPELINE_RUN_ENV, latest_verdict, setup_mlflow, where_to_look
from pipelines.config import ConfigError, load_params
from pipelines.stage import run_stage

STAGES = ("ingest", "clean", "split", "baseline", "tune", "train", "evaluate", "report")


def _summary() -> str:
    params = load_params()
    stages = collect(Path(params.paths.metrics))
    if not stages:
        return "no metrics yet: run `trainwise run` (or `dvc repro`) first"
    import mlflow

    exp_id = setup_mlflow(tracking_uri=params.mlflow.tracking_uri, experiment=params.mlflow.experiment,
                          root=Path.cwd())
    verdict = read_verdict(params.paths.evaluate) or latest_verdict(exp_id)
    report = Path(params.paths.reports) / "report.html"
    return format_summary(stages, verdict=verdict, report=report if report.exists() else None,
                          mlflow_hint=where_to_look(mlflow.get_tracking_uri(), Path.cwd(),
                                                    experiment=params.mlflow.experiment,
                                                    model=params.mlflow.registered_model))


def cmd_run(args: list[str]) -> int:
    load_params()  # fail before DVC starts anything
    dvc = shutil.which("dvc")
    if dvc is None:
        print("trainwise: error: `dvc` not found on PATH; activate the venv (source .venv/bin/activate)",
              file=sys.stderr)
        return 2
    env = {**os.environ, SUMMARY_BY_CLI_ENV: "1",
           PIPELINE_RUN_ENV: os.environ.get(PIPELINE_RUN_ENV) or f"run-{uuid.uuid4().hex[:12]}"}
    rc = subprocess.call([dvc, "repro", *args], env=env)
    if rc == 0:
        print(_summary())
    return rc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="trainwise", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[2:]))
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="dvc repro, then print the summary")
    run.add_argument("dvc_args", nargs=argparse.REMAINDER, help="passed to `dvc repro`")
    st = sub.add_parser("stage", help="run one stage here (dvc.yaml does this for you)")
    st.add_argument("name", choices=STAGES)
    sub.add_parser("summary", help="summary of the last run")
    sub.add_parser("check", help="validate params.yaml")
    args = parser.parse_args(argv)
    try:
        if args.command == "run":
            return cmd_run(args.dvc_args)
        if args.command == "stage":
            run_stage(importlib.import_module(f"pipelines.{args.name}").main)
            return 0
        if args.command == "summary":
            print(_summary())
            return 0
        if args.command == "check":
            load_params()
            print("params.yaml is valid")
            return 0
    except ConfigError as err:
        print(f"trainwise: error: {err}", file=sys.stderr)
        return 2
    return 1


if __name__ == "__main__":
    sys.exit(main())
