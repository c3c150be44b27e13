"""DVC stage `evaluate`: test metrics, per-class report, confusion matrix, verdict vs baselines."""

import torch

from components.data.contract import read_json, write_csv_atomic
from components.evaluation.metrics import classification_metrics, predict_proba, verdict
from components.evaluation.summary import best_baseline
from components.tracking.registry import apply_gate, gate_decision
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

        rp = stage.params.register  # registry gate: the alias moves only if the network beats the baselines
        gate = gate_decision(metrics[rp.metric], base[f"baseline/best/{rp.metric}"], metric=rp.metric,
                             min_gain=rp.min_gain, baseline_name=best_name)
        metrics.update(gate.metrics())
        stage.log("registry: %s", gate.reason)
        stage.tracker.set_tags({"verdict": sentence, "baseline.best": best_name, "register.reason": gate.reason,
                                "model.train_run_id": spec.get("mlflow_run_id", "")})
        mv = spec.get("registered_version")
        if mv:  # the test metrics and the decision travel with the registered version they describe
            stage.tracker.call("the registry gate", apply_gate, mv["name"], mv["version"], gate, alias=rp.alias,
                               tags={**{k: metrics[k] for k in ("test/acc", "test/f1_macro")}, "verdict": sentence})
        stage.finish(metrics, artifacts=[plots / "per_class.csv"])


if __name__ == "__main__":
    run_stage(main)
