"""DVC stage `report`: one self-contained HTML page (reports/report.html) and the pipeline totals."""

import csv
import os

import mlflow
import numpy as np

from trainwise.components.atomic_io import write_text_atomic
from trainwise.components.data.contract import DataContractError, read_manifest
from trainwise.components.evaluation.figures import png_bytes, thumbnails_figure
from trainwise.components.evaluation.report import build_report
from trainwise.components.evaluation.report_inputs import (image_thumbnails, near_duplicate_ids, pipeline_runs, read_label_suspects,
                                                 text_snippets)
from trainwise.components.evaluation.summary import (SUMMARY_BY_CLI_ENV, best_baseline, collect, format_summary, read_evaluation,
                                           totals)
from trainwise.components.models.backbone_names import SAVED_BACKBONE_PREFIX, network_display_name
from trainwise.components.tracking.mlflow_runs import latest_verdict, where_to_look
from trainwise.pipelines.stage import Stage, run_stage

IMAGES = {"confusion": ("plots", "confusion.png"), "reliability": ("plots", "reliability.png"),
          "attributions": ("evaluate", "attributions.png"), "confident_wrong": ("evaluate", "confident_wrong.png")}


def _csv(path):
    if not path.exists():
        return None
    with open(path) as f:
        return list(csv.DictReader(f))


def _manifest(path):
    try:
        return read_manifest(path)
    except DataContractError:
        return None


def _network_name(params, evaluation: dict | None) -> str:
    """The network as the verdict names it: what evaluate scored (model.json's model), else what train.* builds."""
    t = params.train
    saved = (evaluation or {}).get("network") or (f"{SAVED_BACKBONE_PREFIX}{t.backbone}" if t.backbone else t.model)
    return network_display_name(saved, backbone_mode=t.backbone_mode)


def main() -> None:
    with Stage("report") as stage:
        p, params = stage.paths, stage.params
        stages = collect(stage.path(p.metrics))
        pipeline = totals(stages)
        evaluation = read_evaluation(stage.path(p.evaluate))
        verdict = (evaluation or {}).get("verdict", {}).get("sentence") or stage.tracker.call(
            "read the verdict", lambda: latest_verdict(mlflow.active_run().info.experiment_id))
        hint = where_to_look(mlflow.get_tracking_uri(), stage.root, experiment=params.mlflow.experiment,
                             experiment_id=stage.experiment_id,
                             model=params.mlflow.registered_model)
        images = {k: stage.path(getattr(p, d)) / f for k, (d, f) in IMAGES.items()}
        images = {k: f.read_bytes() for k, f in images.items() if f.exists()}
        suspects, suspects_file = read_label_suspects(stage.path(p.audit), k=params.report.label_suspects)
        if suspects:
            thumbs = image_thumbnails([s["id"] for s in suspects], clean_dir=stage.path(p.clean),
                                      ingest_dir=stage.path(p.ingest))
            if thumbs:
                shown = [s for s in suspects if s["id"] in thumbs]
                images["label_suspects"] = png_bytes(thumbnails_figure(
                    [thumbs[s["id"]] for s in shown], [str(s["id"])[:8] for s in shown]))
        split_manifest = _manifest(stage.path(p.split))
        pair_ids, group_ids = near_duplicate_ids(split_manifest)
        wanted = pair_ids + [i for g in group_ids for i in g]
        snippets = text_snippets(wanted, clean_dir=stage.path(p.clean))
        thumbs = {} if snippets else image_thumbnails(wanted, clean_dir=stage.path(p.clean))
        if thumbs and pair_ids:   # pairs side by side: two columns, a pair a row
            images["near_misses"] = png_bytes(thumbnails_figure(
                [thumbs[i] for i in pair_ids if i in thumbs], [i[:8] for i in pair_ids if i in thumbs], cols=2))
        if thumbs and group_ids:  # a group a row, short rows padded with blanks
            cols = max(len(g) for g in group_ids)
            blank = np.zeros_like(next(iter(thumbs.values())))
            cells = [(thumbs[g[k]], g[k][:8]) if k < len(g) and g[k] in thumbs else (blank, "")
                     for g in group_ids for k in range(cols)]
            images["near_groups"] = png_bytes(thumbnails_figure([c[0] for c in cells], [c[1] for c in cells], cols=cols))
        curve = _csv(stage.path(p.plots) / "train_curve.csv")
        run = mlflow.active_run()  # None when mlflow.enabled is false
        runs = run and stage.tracker.call("list this pipeline run's MLflow runs", lambda: pipeline_runs(
            run.info.experiment_id, mlflow.get_run(run.info.run_id).data.tags["trainwise.pipeline_run"],
            tracking_uri=mlflow.get_tracking_uri()))
        page = build_report(
            title=params.report.title, verdict=verdict, stages=stages, pipeline=pipeline, mlflow_hint=hint,
            manifests={name: _manifest(stage.path(getattr(p, name))) for name in ("ingest", "clean", "split", "audit")},
            snippets=snippets,
            curve=[{k: float(v) for k, v in r.items()} for r in curve] if curve else None,
            confusion=_csv(stage.path(p.plots) / "confusion.csv"),
            per_class=_csv(stage.path(p.plots) / "per_class.csv"),
            trials=_csv(stage.path(p.tune) / "trials.csv"),
            network=_network_name(params, evaluation), evaluation=evaluation, images=images,
            label_suspects=suspects, suspects_file=f"{p.audit}/{suspects_file}",
            mlflow_runs=runs)
        out = stage.path(p.reports) / "report.html"
        write_text_atomic(out, page)
        if not os.environ.get(SUMMARY_BY_CLI_ENV):  # `trainwise run` prints it once, after dvc
            print(format_summary(stages, verdict=verdict, mlflow_hint=hint, report=out.relative_to(stage.root)))
        if "baseline" in stages:
            pipeline["pipeline/best_baseline/test/acc"] = best_baseline(stages["baseline"])[1]
        stage.finish(pipeline, artifacts=[out])


if __name__ == "__main__":
    run_stage(main)
