"""DVC stage `evaluate`: test metrics, per-class report, confusion matrix, verdict vs baselines."""

import mlflow
import torch

from components.data.contract import read_json, write_csv_atomic
from components.evaluation.metrics import classification_metrics, predict_proba, verdict
from components.evaluation.summary import best_baseline
from components.training.data import load_split
from components.training.export import load_model
from pipelines.stage import Stage, run_stage


def main() -> None:
    with Stage("evaluate") as stage:
        paths = stage.paths
        torch.set_num_threads(1)
        model, spec = load_model(stage.path(paths.model))
        stage.record_input(stage.path(paths.split))
        x, y, _ = load_split(stage.path(paths.split), "test")
        proba = predict_proba(model, x, batch_size=stage.params.evaluate.batch_size)
        metrics, per_class, _ = classification_metrics(y.numpy(), proba, classes=spec["classes"])

        mdir = stage.path(paths.metrics)
        base, train, tune = (read_json(mdir / f"{s}.json") for s in ("baseline", "train", "tune"))
        best_name, _ = best_baseline(base)
        metrics["evaluate/gain_vs_best_baseline"] = metrics["test/acc"] - base["baseline/best/test/acc"]
        sentence = verdict(net_acc=metrics["test/acc"], net_name=spec["model"].replace("_", " "),
                           baseline_acc=base["baseline/best/test/acc"], baseline_name=best_name.replace("_", " "),
                           net_cost=train["cost/usd"] + tune["cost/usd"], baseline_cost=base["cost/usd"])
        stage.log("test/acc %.4f  test/f1_macro %.4f  (best baseline %s: %.4f)", metrics["test/acc"],
                  metrics["test/f1_macro"], best_name, base["baseline/best/test/acc"])
        stage.log("verdict: %s", sentence)

        plots = stage.path(paths.plots)
        pred = proba.argmax(1)
        names = spec["classes"]
        write_csv_atomic(plots / "confusion.csv", [{"actual": names[a], "predicted": names[b]}
                                                   for a, b in zip(y.tolist(), pred.tolist())], ["actual", "predicted"])
        write_csv_atomic(plots / "per_class.csv", per_class, ["class", "precision", "recall", "f1", "support"])

        mlflow.set_tags({"verdict": sentence, "baseline.best": best_name,
                         "model.train_run_id": spec.get("mlflow_run_id", "")})
        mv = spec.get("registered_version")
        if mv:  # the test metrics travel with the registered version they describe
            client = mlflow.MlflowClient()
            for k in ("test/acc", "test/f1_macro"):
                client.set_model_version_tag(mv["name"], mv["version"], k, f"{metrics[k]:.4f}")
            client.set_model_version_tag(mv["name"], mv["version"], "verdict", sentence)
        stage.finish(metrics, artifacts=[plots / "per_class.csv"])


if __name__ == "__main__":
    run_stage(main)
