"""DVC stage `baseline`: classical models on the same split, to tell whether a network is needed.

The stage reads the split and turns each modality into the arrays the models take
(components/models/classical.py does no I/O)."""

from pathlib import Path

import numpy as np

from trainwise.components.atomic_io import write_csv_atomic
from trainwise.components.data.contract import (BASELINE_PREDICTIONS, PAYLOAD_COLUMNS, DataContractError, read_manifest, read_table)
from trainwise.components.evaluation.summary import best_baseline
from trainwise.components.models.classical import fit_baselines, fit_cost_usd, image_features
from trainwise.components.embedding.store import read_embeddings
from trainwise.pipelines.stage import Stage, run_stage

LINEAR_PROBE = "linear_probe"  # logistic regression on the backbone's embeddings (the embed stage's)


def load_split_features(data_dir: str | Path, split: str, *, max_pixels: int = 1024):
    """(x, y, ids) of one split for the baselines: x is a float32 matrix, or a list of strings for text."""
    manifest = read_manifest(data_dir)
    modality = manifest.get("payload")
    if modality not in PAYLOAD_COLUMNS:
        raise DataContractError(f"{data_dir}/manifest.json: payload {modality!r} is not one of {PAYLOAD_COLUMNS}")
    table = read_table(data_dir, columns=["id", "label", modality], filter_split=split)
    if table.num_rows == 0:
        raise DataContractError(f"{data_dir}: the {split!r} split is empty; check split fractions in params.yaml")
    col = table.column(modality).combine_chunks()
    if modality == "text":
        x = [s or "" for s in col.to_pylist()]
    else:
        flat = col.flatten().to_numpy(zero_copy_only=False)
        if modality == "image":
            x = image_features(flat.reshape(-1, *manifest["image_shape"]), max_pixels=max_pixels)
        else:  # sequence / features: one fixed-width row per example, used raw
            x = flat.reshape(table.num_rows, -1).astype(np.float32)
    return x, table.column("label").to_numpy().astype(np.int64), table.column("id").to_pylist()


def main() -> None:
    with Stage("baseline") as stage:
        p = stage.params.baseline
        data = stage.path(stage.paths.audit)  # the split after the label audit
        manifest = stage.record_input(data)
        x_train, y_train, train_ids = load_split_features(data, "train", max_pixels=p.max_pixels)
        evals = {s: load_split_features(data, s, max_pixels=p.max_pixels) for s in ("val", "test")}
        scores, preds = fit_baselines(x_train, y_train, {s: (x, y) for s, (x, y, _) in evals.items()},
                                      models=p.models, seed=p.seed, n_classes=len(manifest["classes"]),
                                      text=manifest["payload"] == "text",
                                      tfidf_max_features=p.tfidf_max_features, threads=max(1, int(stage.meter.cpus)))
        embedded = read_embeddings(stage.path(stage.paths.embed))
        if embedded is not None:  # train.backbone set: "a linear probe would do" is the honest baseline
            index = {i: k for k, i in enumerate(embedded[0])}
            probe = {s: (embedded[1][[index[i] for i in ids]], y) for s, (_, y, ids) in evals.items()}
            sc, pr = fit_baselines(embedded[1][[index[i] for i in train_ids]], y_train, probe,
                                   models=["logistic_regression"], seed=p.seed, n_classes=len(manifest["classes"]),
                                   threads=max(1, int(stage.meter.cpus)))
            scores[LINEAR_PROBE], preds[LINEAR_PROBE] = sc["logistic_regression"], pr["logistic_regression"]
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
        out = stage.path(stage.paths.baseline) / BASELINE_PREDICTIONS
        write_csv_atomic(out, [{"id": i, "label": int(y), **{m: int(preds[m]["test"][k]) for m in preds}}
                               for k, (i, y) in enumerate(zip(ids, y_test))], ["id", "label", *preds])
        stage.tracker.set_tags({"baseline.best": best})
        stage.finish(metrics, artifacts=[out])


if __name__ == "__main__":
    run_stage(main)
