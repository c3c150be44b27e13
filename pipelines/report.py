"""DVC stage `report`: one self-contained HTML page (reports/report.html) and the pipeline totals."""

import csv
import os

import mlflow

from components.data.contract import read_manifest, write_text_atomic
from components.evaluation.report import build_report
from components.evaluation.summary import SUMMARY_BY_CLI_ENV, best_baseline, collect, format_summary, totals
from components.tracking.mlflow_runs import latest_verdict, where_to_look
from pipelines.stage import Stage, run_stage


def _csv(path):
    if not path.exists():
        return None
    with open(path) as f:
        return list(csv.DictReader(f))


def main() -> None:
    with Stage("report") as stage:
        p, params = stage.paths, stage.params
        stages = collect(stage.path(p.metrics))
        pipeline = totals(stages)
        verdict = stage.tracker.call("read the verdict",
                                     lambda: latest_verdict(mlflow.active_run().info.experiment_id))
        hint = where_to_look(mlflow.get_tracking_uri(), stage.root, experiment=params.mlflow.experiment,
                             model=params.mlflow.registered_model)
        curve = _csv(stage.path(p.plots) / "train_curve.csv")
        page = build_report(
            title=params.report.title, verdict=verdict, stages=stages, pipeline=pipeline, mlflow_hint=hint,
            manifests={name: read_manifest(stage.path(getattr(p, name))) for name in ("ingest", "clean", "split")},
            curve=[{k: float(v) for k, v in r.items()} for r in curve] if curve else None,
            confusion=_csv(stage.path(p.plots) / "confusion.csv"),
            per_class=_csv(stage.path(p.plots) / "per_class.csv"),
            trials=_csv(stage.path(p.tune) / "trials.csv"),
            network=params.train.model)
        out = stage.path(p.reports) / "report.html"
        write_text_atomic(out, page)
        if not os.environ.get(SUMMARY_BY_CLI_ENV):  # `trainwise run` prints it once, after dvc
            print(format_summary(stages, verdict=verdict, mlflow_hint=hint, report=out.relative_to(stage.root)))
        if "baseline" in stages:
            pipeline["pipeline/best_baseline/test/acc"] = best_baseline(stages["baseline"])[1]
        stage.finish(pipeline, artifacts=[out])


if __name__ == "__main__":
    run_stage(main)
