"""`trainwise`: run the pipeline, one stage, or check params.

    trainwise run [DVC REPRO ARGS...]   dvc repro, then the summary
    trainwise stage NAME                run one stage in this process (what dvc.yaml calls)
    trainwise summary                   the summary of the last run, from metrics/*.json
    trainwise check                     validate params.yaml
    trainwise submit STAGE...           run stages as Ray Jobs on the cluster (ray.jobs_address)
    trainwise predict PATH...           predict files / folders / CSV lists with the registered model
    trainwise init DIR --data PATH      a new project of your own around your data (then: trainwise run)
"""

from __future__ import annotations

import argparse
import csv
import importlib
import os
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

from trainwise.components.evaluation.summary import SUMMARY_BY_CLI_ENV, collect, format_summary, read_verdict
from trainwise.components.tracking.credentials import mask_value
from trainwise.components.tracking.mlflow_runs import PIPELINE_RUN_ENV, latest_verdict, setup_mlflow, where_to_look
from trainwise.pipelines.config import SUBMITTABLE, ConfigError, load_params
from trainwise.pipelines.stage import run_stage

DVC_FILE = "dvc.yaml"
_PIPELINES = __package__ or "pipelines"  # this package, however it is installed (also under python -m)
# `python -m trainwise.pipelines.ingest` (this repository's dvc.yaml) or `trainwise stage ingest` (a project's)
_STAGE_CMD = re.compile(r"^\s*(?:python\s+-m\s+((?:\w+\.)*pipelines\.\w+)|trainwise\s+stage\s+(\w+))\s*$")


def dvc_stages(path: str | os.PathLike = DVC_FILE) -> dict[str, str]:
    """Stage name -> the module its ``cmd`` runs, for every dvc.yaml stage that runs one of ours, in
    dvc.yaml's order. Read at run time: `trainwise stage NAME` runs what `dvc repro` would, and a stage
    added to dvc.yaml needs no second list here (the CLI once kept its own and refused audit and embed)."""
    import yaml

    path = Path(path)
    try:
        spec = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"no {path} here ({Path.cwd()}): run `trainwise stage` from the project root") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from None
    stages = {}
    for name, stage in (spec.get("stages") or {}).items():
        m = _STAGE_CMD.match(str((stage or {}).get("cmd", ""))) if isinstance(stage, dict) else None
        if m:
            stages[name] = m.group(1) or f"{_PIPELINES}.{m.group(2)}"
    return stages


def check_version(path: str | os.PathLike = "params.yaml") -> None:
    """A project made by `trainwise init` names the trainwise it runs (params ``trainwise_version``, which
    every stage lists): refuse to run a stage with another one, so an upgrade is never silent."""
    from trainwise.components.project.version import version_problem

    problem = version_problem(load_params(path).trainwise_version, source=str(path))
    if problem:
        raise ConfigError(problem)


def cmd_stage(name: str) -> int:
    stages = dvc_stages()
    if name not in stages:
        print(f"trainwise: error: no stage {name!r} in {DVC_FILE}; its stages: {', '.join(stages)}", file=sys.stderr)
        return 2
    check_version()
    run_stage(importlib.import_module(stages[name]).main)
    return 0


def cmd_init(args: argparse.Namespace) -> int:
    from trainwise.components.project.init import InitError, apply, plan, yaml_value

    try:
        p = plan(args.dir, args.data, label=args.label)
    except InitError as err:
        print(f"trainwise: error: {err}", file=sys.stderr)
        return 2
    print(f"{'would create' if args.dry_run else 'creating'} a trainwise project in {p.root} on {p.data}")
    for note in p.choice.notes:
        print(f"  {note}")
    changed = [f"{k}: {yaml_value(v)}" for k, v in p.choice.settings.items()]
    print(f"  params.yaml: the demo's, every key commented; data-specific: {'; '.join(changed)}")
    steps = (["git init"] if p.git_init else []) + (["dvc init"] if p.dvc_init else [])
    for step in steps:
        print(f"  {'would run' if args.dry_run else 'run'}: {step}")
    for rel, content in p.files.items():
        print(f"  {'would write' if args.dry_run else 'write'}: {rel} ({len(content.encode())} bytes)")
    if args.dry_run:
        print("nothing written (--dry-run)")
        return 0
    try:
        apply(p)
    except InitError as err:
        print(f"trainwise: error: {err}", file=sys.stderr)
        return 2
    where = os.path.relpath(p.root)
    print(f"next: cd {where if not where.startswith('..') else p.root} && trainwise run")
    return 0


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
                                                    model=params.mlflow.registered_model, experiment_id=exp_id))


# The outputs dvc.yaml declares as whole folders: `dvc repro` deletes each of them before it runs
# its stage (measured, DVC 3.67), without asking whose it is, so they are checked before DVC starts.
FOLDER_OUTPUTS = ("ingest", "clean", "embed", "split", "audit", "baseline", "tune", "model", "evaluate")


def check_output_folders(params) -> None:
    """Raise ConfigError if an existing output folder holds what no stage wrote
    (trainwise.components.atomic_io.check_replaceable): `paths.notes: docs/notes` by mistake."""
    from trainwise.components.atomic_io import NotOurFolder, check_replaceable

    problems = []
    for key in FOLDER_OUTPUTS:
        try:
            check_replaceable(Path(getattr(params.paths, key)))
        except NotOurFolder as err:
            problems.append(f"paths.{key}: {err}")
    if problems:
        raise ConfigError("\n".join(problems))


def cmd_run(args: list[str]) -> int:
    check_output_folders(load_params())  # fail before DVC starts anything (and deletes any output)
    check_version()
    # the dvc and trainwise beside this interpreter (a venv not activated), else PATH's
    bindir = Path(sys.executable).parent
    dvc = str(bindir / "dvc") if (bindir / "dvc").is_file() else shutil.which("dvc")
    if dvc is None:
        print("trainwise: error: `dvc` not found on PATH; activate the venv (source .venv/bin/activate)",
              file=sys.stderr)
        return 2
    env = {**os.environ, "PATH": os.pathsep.join([str(bindir), os.environ.get("PATH", "")]), SUMMARY_BY_CLI_ENV: "1",
           PIPELINE_RUN_ENV: os.environ.get(PIPELINE_RUN_ENV) or f"run-{uuid.uuid4().hex[:12]}"}
    rc = subprocess.call([dvc, "repro", *args], env=env)
    if rc == 0:
        print(_summary())
    return rc


def cmd_submit(stages: list[str]) -> int:
    """Outside `dvc repro`: outputs land in the workspace; `dvc commit` records them."""
    from trainwise.pipelines.remote import submit
    from trainwise.pipelines.stage_error import StageError

    for name in stages:
        try:
            facts = submit(name)
        except (StageError, FileNotFoundError) as err:  # may quote a storage or Jobs API URL
            print(f"trainwise: error: {mask_value(str(err))}", file=sys.stderr)
            return 2
        print(f"[{name}] Ray job {facts['job_id']} {facts['status']} in {facts['wall_s']:.1f}s; outputs fetched")
    print("outputs are in the workspace; `dvc commit` records them (or list the stages in ray.submit and "
          "let `dvc repro` submit them)")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    """Prediction table to stdout or --out; exit 1 only when no input could be predicted."""
    from trainwise.components.atomic_io import spreadsheet_safe_row, write_csv_atomic
    from trainwise.components.serving.batch import TABLE_COLUMNS, iter_items, predict_items
    from trainwise.components.serving.registry import ModelNotFound, open_predictor

    params = load_params()
    pp = params.predict
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # keep stderr to our one summary line
    if args.batch_size is not None and args.batch_size <= 0:
        print(f"trainwise: error: --batch-size must be > 0, got {args.batch_size}", file=sys.stderr)
        return 2
    if args.model_dir is None:
        import mlflow

        from trainwise.components.tracking.mlflow_runs import default_tracking_uri

        # Only point at the store (same precedence as the stages): predicting creates no experiment.
        mlflow.set_tracking_uri(os.environ.get("MLFLOW_TRACKING_URI") or params.mlflow.tracking_uri
                                or default_tracking_uri(Path.cwd()))
    try:
        predictor, used = open_predictor(model_uri=args.model, run_id=args.run, model_dir=args.model_dir,
                                         registered_model=params.mlflow.registered_model, alias=pp.alias,
                                         batch_size=args.batch_size or pp.batch_size,
                                         max_image_pixels=params.ingest.max_image_pixels)
    except (ModelNotFound, ValueError) as err:  # nothing registered; a model.json this version cannot serve
        print(f"trainwise: error: {mask_value(str(err))}", file=sys.stderr)  # may quote the tracking URI
        return 2
    rows = predict_items(predictor, iter_items(args.paths, spec=predictor.spec))
    if args.out:
        rows = list(rows)
        write_csv_atomic(Path(args.out), rows, TABLE_COLUMNS)
    else:
        writer = csv.DictWriter(sys.stdout, fieldnames=TABLE_COLUMNS, lineterminator="\n")
        writer.writeheader()
        written = []
        for row in rows:  # streamed: rows appear as their batch is done
            writer.writerow(spreadsheet_safe_row(row))
            written.append(row)
        rows = written
    failed = [r for r in rows if r["error"] is not None]
    print(f"trainwise predict: {len(rows) - len(failed)} of {len(rows)} input(s) predicted with {used}"
          + (f"; {len(failed)} could not be (see the `error` column)" if failed else "")
          + (f"; table in {args.out}" if args.out else ""), file=sys.stderr)
    return 0 if len(failed) < len(rows) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="trainwise", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[2:]))
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="dvc repro, then print the summary")
    run.add_argument("dvc_args", nargs=argparse.REMAINDER, help="passed to `dvc repro`")
    st = sub.add_parser("stage", help="run one stage here (dvc.yaml does this for you)")
    st.add_argument("name", metavar="NAME", help="a stage of dvc.yaml (run from the project root)")
    sub.add_parser("summary", help="summary of the last run")
    sub.add_parser("check", help="validate params.yaml")
    sm = sub.add_parser("submit", help="run stages as Ray Jobs on a cluster; their outputs come back here")
    sm.add_argument("stages", nargs="+", choices=SUBMITTABLE, metavar="STAGE",
                    help=f"one or more of {', '.join(SUBMITTABLE)}, run in the order given")
    pr = sub.add_parser("predict", help="predict files, folders or CSV lists of files with a trained model",
                        description="One CSV row per input (id, source, predicted_class, class_index, "
                                    "probability, error). Default model: the registered mlflow.registered_model "
                                    "(the version with alias predict.alias if set, else the latest).")
    pr.add_argument("paths", nargs="+", metavar="PATH",
                    help="image file, folder (recursive), or .csv with a `path` column (relative to the CSV)")
    which = pr.add_mutually_exclusive_group()
    which.add_argument("--model", metavar="URI", help="an MLflow model URI, e.g. models:/trainwise-digits/3")
    which.add_argument("--run", metavar="RUN_ID", help="the model logged by this MLflow (train) run")
    which.add_argument("--model-dir", metavar="DIR", help="a model directory the train stage wrote (models/model)")
    pr.add_argument("--out", metavar="FILE", help="write the table here (CSV) instead of stdout")
    pr.add_argument("--batch-size", type=int, metavar="N", help="default: predict.batch_size in params.yaml")
    it = sub.add_parser("init", help="create a project of your own around your data (dvc.yaml, params.yaml, ...)",
                        description="A new project folder: git init + dvc init (where needed), a dvc.yaml whose "
                                    "stages run this trainwise, a commented params.yaml chosen from the data, "
                                    ".gitignore, .dvcignore, README.md. Never overwrites a file.")
    it.add_argument("dir", metavar="DIR", help="the project folder (created if missing)")
    it.add_argument("--data", required=True, metavar="PATH_OR_URL",
                    help="a folder with one sub-folder per class (images or .txt), an archive of one, or a "
                         ".csv/.tsv/.parquet table; local or a URL")
    it.add_argument("--label", metavar="COL", help="tables: the label column (default: guessed, and printed)")
    it.add_argument("--dry-run", action="store_true", help="show what would be written; write nothing")
    args = parser.parse_args(argv)
    try:
        if args.command == "run":
            return cmd_run(args.dvc_args)
        if args.command == "stage":
            return cmd_stage(args.name)
        if args.command == "summary":
            print(_summary())
            return 0
        if args.command == "submit":
            return cmd_submit(args.stages)
        if args.command == "predict":
            return cmd_predict(args)
        if args.command == "init":
            return cmd_init(args)
        if args.command == "check":
            check_output_folders(load_params())
            print("params.yaml is valid")
            return 0
    except ConfigError as err:
        print(f"trainwise: error: {mask_value(str(err))}", file=sys.stderr)  # it may quote a URL with a password
        return 2
    return 1


if __name__ == "__main__":
    sys.exit(main())
