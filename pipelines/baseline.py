"""DVC stage `baseline`: classical models on the same split, to tell whether a network is needed."""

from components.data.contract import write_csv_atomic
from components.evaluation.summary import best_baseline
from components.models.classical import PREDICTIONS, fit_baselines, fit_cost_usd, load_split_features
from pipelines.stage import Stage, run_stage


def main() -> None:
    with Stage("baseline") as stage:
        p = stage.params.baseline
        data = stage.path(stage.paths.split)
        manifest = stage.record_input(data)
        x_train, y_train, _ = load_split_features(data, "train", max_pixels=p.max_pixels)
        evals = {s: load_split_features(data, s, max_pixels=p.max_pixels) for s in ("val", "test")}
        scores, preds = fit_baselines(x_train, y_train, {s: (x, y) for s, (x, y, _) in evals.items()},
                                      models=p.models, seed=p.seed, text=manifest["payload"] == "text",
                                      tfidf_max_features=p.tfidf_max_features, threads=max(1, int(stage.meter.cpus)))
        for r in scores.values():
            r["cost/usd"] = fit_cost_usd(r["fit_s"], cpus=stage.meter.cpus, cpu_hour_usd=stage.params.cost.cpu_hour_usd)
        metrics = {f"baseline/{m}/{k}": v for m, r in scores.items() for k, v in r.items()}
        best, _ = best_baseline(metrics)  # chosen on val, never on test
        metrics.update({"baseline/best/test/acc": scores[best]["test/acc"],
                        "baseline/best/test/f1_macro": scores[best]["test/f1_macro"]})
        for m, r in scores.items():
            stage.log("%-20s val/acc=%.4f test/acc=%.4f test/f1_macro=%.4f (%.2fs)", m, r["val/acc"],
                      r["test/acc"], r["test/f1_macro"], r["fit_s"])
        _, y_test, ids = evals["test"]
        out = stage.path(stage.paths.baseline) / PREDICTIONS
        write_csv_atomic(out, [{"id": i, "label": int(y), **{m: int(preds[m]["test"][k]) for m in p.models}}
                               for k, (i, y) in enumerate(zip(ids, y_test))], ["id", "label", *p.models])
        stage.tracker.set_tags({"baseline.best": best})
        stage.finish(metrics, artifacts=[out])


if __name__ == "__main__":
    run_stage(main)
