"""DVC stage `report`: one self-contained HTML page (reports/report.html) and the pipeline totals."""

import csv
import os

import mlflow
import numpy as np

from components.data.contract import read_manifest, write_text_atomic
from components.evaluation import report as page_html
from components.evaluation.summary import SUMMARY_BY_CLI_ENV, best_baseline, collect, format_summary, totals
from components.tracking.mlflow_runs import latest_verdict, ui_command
from pipelines.stage import Stage, run_stage


def _csv(path):
    if not path.exists():
        return None
    with open(path) as f:
        return list(csv.DictReader(f))


def mlflow_hint(stage: Stage) -> str:
    return (f"{ui_command(mlflow.get_tracking_uri(), stage.root)}  -> experiment "
            f"'{stage.params.mlflow.experiment}', model '{stage.params.mlflow.registered_model}'")


def main() -> None:
    with Stage("report") as stage:
        p = stage.paths
        stages = collect(stage.path(p.metrics))
        verdict = latest_verdict(mlflow.active_run().info.experiment_id)

        data_rows = []
        for name in ("ingest", "clean", "split"):
            m = read_manifest(stage.path(getattr(p, name)))
            data_rows.append({"stage": name, "rows in": m.get("rows_in", m["rows"]), "rows out": m["rows"],
                              "set aside": ", ".join(f"{k}: {v}" for k, v in m["set_aside"].items()) or "none"})
        split = read_manifest(stage.path(p.split))
        split_rows = [{"split": s, **c} for s, c in split.get("split_class_counts", {}).items()]
        curve = [{k: float(v) for k, v in r.items()} for r in (_csv(stage.path(p.plots) / "train_curve.csv") or [])]
        conf = _csv(stage.path(p.plots) / "confusion.csv")
        classes = split["classes"]
        cm_img = None
        if conf:
            idx = {c: i for i, c in enumerate(classes)}
            cm = np.zeros((len(classes), len(classes)), dtype=int)
            for r in conf:
                cm[idx[r["actual"]], idx[r["predicted"]]] += 1
            cm_img = f"<img alt='confusion matrix' src='{page_html.png_data_uri(page_html.confusion_figure(cm, classes))}'>"
        base = stages.get("baseline", {})
        base_rows = [{"model": m, **{k: base[f"baseline/{m}/{k}"] for k in ("val/acc", "test/acc", "test/f1_macro", "fit_s")}}
                     for m in sorted({k.split("/")[1] for k in base if k.endswith("/fit_s")})]
        ev = stages.get("evaluate", {})
        if ev:
            base_rows.append({"model": f"network ({stage.params.train.model})",
                              "val/acc": stages["train"]["val/acc"], "test/acc": ev["test/acc"],
                              "test/f1_macro": ev["test/f1_macro"], "fit_s": stages["train"]["cost/wall_s"]})
        cost_rows = [{"stage": s, "wall_s": m.get("cost/wall_s", 0.0), "cpu_hours": m.get("cost/cpu_hours", 0.0),
                      "cpu_util": m.get("cost/cpu_util", 0.0), "usd": m.get("cost/usd", 0.0)} for s, m in stages.items()]
        pipeline = totals(stages)
        cost_rows.append({"stage": "total", "wall_s": pipeline["pipeline/wall_s"],
                          "cpu_hours": pipeline["pipeline/cpu_hours"], "usd": pipeline["pipeline/cost/usd"]})
        trials = _csv(stage.path(p.tune) / "trials.csv")

        page = page_html.render(stage.params.report.title, [
            ("Data", page_html.table(data_rows)),
            ("Split", page_html.table(split_rows) if split_rows else None),
            ("Learning curves", f"<img alt='learning curves' src='{page_html.png_data_uri(page_html.learning_curve_figure(curve))}'>"
             if curve else None),
            ("Tuning trials", page_html.table(trials) if trials else None),
            ("Baselines vs network (test split)", page_html.table(base_rows) if base_rows else None),
            ("Test metrics", (page_html.table([{k: v for k, v in ev.items() if k.startswith("test/")}]) + (cm_img or ""))
             if ev else None),
            ("Per class", page_html.table(_csv(stage.path(p.plots) / "per_class.csv") or [])),
            ("Cost", page_html.table(cost_rows)),
            ("MLflow", f"<p><code>{mlflow_hint(stage)}</code></p>"),
        ], verdict=verdict)
        out = stage.path(p.reports) / "report.html"
        write_text_atomic(out, page)
        if not os.environ.get(SUMMARY_BY_CLI_ENV):  # `trainwise run` prints it once, after dvc
            print(format_summary(stages, verdict=verdict, mlflow_hint=mlflow_hint(stage), report=out.relative_to(stage.root)))
        if "baseline" in stages:
            pipeline["pipeline/best_baseline/test/acc"] = best_baseline(stages["baseline"])[1]
        stage.finish(pipeline, artifacts=[out])


if __name__ == "__main__":
    run_stage(main)
