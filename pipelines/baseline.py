"""DVC stage `baseline`: classical models on the same split, to tell whether a network is needed."""

from components.evaluation.summary import best_baseline
from components.models.classical import fit_baselines
from components.training.data import load_split
from pipelines.stage import Stage, run_stage


def _flat(split_dir, split):
    x, y, _ = load_split(split_dir, split)
    return x.reshape(len(x), -1).numpy(), y.numpy()


def main() -> None:
    with Stage("baseline") as stage:
        p = stage.params.baseline
        data = stage.path(stage.paths.split)
        stage.record_input(data)
        x_train, y_train = _flat(data, "train")
        evals = {s: _flat(data, s) for s in ("val", "test")}
        results = fit_baselines(x_train, y_train, evals, models=p.models, seed=p.seed)
        metrics = {f"baseline/{m}/{k}": v for m, r in results.items() for k, v in r.items()}
        best, _ = best_baseline(metrics)  # chosen on val, never on test
        metrics.update({"baseline/best/test/acc": results[best]["test/acc"],
                        "baseline/best/test/f1_macro": results[best]["test/f1_macro"]})
        for m, r in results.items():
            stage.log("%-20s val/acc=%.4f test/acc=%.4f (%.2fs)", m, r["val/acc"], r["test/acc"], r["fit_s"])
        stage.tracker.set_tags({"baseline.best": best})
        stage.finish(metrics)


if __name__ == "__main__":
    run_stage(main)
