"""DVC stage `evaluate`: test metrics, per-class report, confusion matrix, calibration, the most
confidently wrong examples, attributions, and the verdict against the best baseline."""

import numpy as np
import torch

from trainwise.components.atomic_io import write_csv_atomic, write_json_atomic
from trainwise.components.data.contract import (BASELINE_PREDICTIONS, DataContractError, read_json, read_manifest, read_table,
                                      read_test_predictions)
from trainwise.components.evaluation import figures
from trainwise.components.evaluation.attributions import explain_sample
from trainwise.components.evaluation.metrics import calibration, classification_metrics, confidently_wrong, predict_proba
from trainwise.components.evaluation.summary import EVALUATION_FILE, best_baseline
from trainwise.components.evaluation.verdict import judge, registry_gate
from trainwise.components.tracking.registry import apply_gate
from trainwise.components.training.data import load_split
from trainwise.components.training.export import load_model
from trainwise.components.training.text import vocabulary
from trainwise.components.models.backbone_names import network_display_name, probe_note
from trainwise.components.models.backbones import weights_changed
from trainwise.pipelines.stage import Stage, run_stage


def _check_weights(stage: Stage) -> None:
    """The probe baseline and the network: one set of backbone weights (the embed stage's)."""
    train, embed_manifest = stage.params.train, stage.path(stage.paths.embed) / "manifest.json"
    if train.backbone and embed_manifest.is_file():
        why = weights_changed(read_json(embed_manifest), train.backbone, train.pretrained, where=str(embed_manifest))
        if why:
            raise DataContractError(why)


def _unflagged(split_dir, manifest: dict, ids: list[str], pred: np.ndarray, y: np.ndarray) -> dict:
    """test/acc is on the labels as given (the headline: the verdict and the gate use it); the audit
    only flags test rows, so this second number leaves its suspects out."""
    if "label_issue" not in manifest["schema"]:
        return {}
    t = read_table(split_dir, columns=["id", "label_issue"], filter_split="test")
    flagged = dict(zip(t.column("id").to_pylist(), t.column("label_issue").to_pylist()))
    unflagged = np.array([not flagged[i] for i in ids], dtype=bool)
    out = {"test/flagged_rows": int((~unflagged).sum())}
    if unflagged.any():
        out["test/acc_unflagged"] = float((pred[unflagged] == y[unflagged]).mean())
    return out


def _write_plots(plots, y, pred, names, per_class, bins, cm, ece) -> None:
    """DVC plots and the report's figures."""
    write_csv_atomic(plots / "confusion.csv", [{"actual": names[a], "predicted": names[b]}
                                               for a, b in zip(y.tolist(), pred.tolist())], ["actual", "predicted"])
    write_csv_atomic(plots / "per_class.csv", per_class, ["class", "precision", "recall", "f1", "support"])
    write_csv_atomic(plots / "calibration.csv", bins, ["bin", "confidence", "accuracy", "count"])
    figures.save_png(figures.confusion_figure(cm, names), plots / "confusion.png")
    figures.save_png(figures.reliability_figure(bins, ece=ece), plots / "reliability.png")


def _explain(out, model, x, y, ids, proba, pred, *, names, modality, manifest, spec, p) -> tuple[list, list]:
    """The most confidently wrong test rows and the attributions of a fixed sample, with their figures."""
    for stale in ("attributions.png", "confident_wrong.png"):
        (out / stale).unlink(missing_ok=True)
    wrong = [{"id": ids[i], "label": names[y[i]], "predicted": names[pred[i]],
              "confidence": float(proba[i, pred[i]])} for i in confidently_wrong(y, proba, k=p.confident_wrong)]
    if wrong and x.is_floating_point() and modality in ("image", "sequence"):
        rows = x[[ids.index(w["id"]) for w in wrong]].numpy()
        titles = [f"{w['label']}→{w['predicted']} {w['confidence']:.2f}" for w in wrong]
        figures.save_png(figures.examples_figure(rows, titles, modality=modality), out / "confident_wrong.png")
    attributions, fig = explain_sample(model, x, y, proba, modality=modality, classes=names, ids=ids,
                                       n=p.attribution_samples, seed=p.seed, method=p.attribution_method,
                                       steps=p.attribution_steps, vocab=vocabulary(spec.get("tokenizer")))
    feature_names = manifest.get("feature_names") or []
    for r in attributions:  # tabular: name the strongest inputs
        for t in r.get("top_features", []):
            t["name"] = feature_names[t["index"]] if t["index"] < len(feature_names) else f"#{t['index']}"
    if fig is not None:
        figures.save_png(fig, out / "attributions.png")
    return wrong, attributions


def main() -> None:
    with Stage("evaluate") as stage:
        paths, p, mode = stage.paths, stage.params.evaluate, stage.params.train.backbone_mode
        torch.set_num_threads(1)
        model, spec = load_model(stage.path(paths.model))
        _check_weights(stage)
        split_dir = stage.path(paths.audit)  # the split after the label audit (test rows as given)
        manifest = read_manifest(split_dir)
        modality = manifest.get("payload", "image")
        stage.record_input(split_dir)
        x, y, ids = load_split(split_dir, "test", tokenizer=spec.get("tokenizer"))  # text: the train-split vocabulary
        y, names = y.numpy(), spec["classes"]
        proba = predict_proba(model, x, batch_size=p.batch_size)
        pred = proba.argmax(1)
        metrics, per_class, cm = classification_metrics(y, proba, classes=names)
        ece, bins = calibration(y, proba, bins=p.calibration_bins)
        metrics.update({"test/ece": ece, **_unflagged(split_dir, manifest, ids, pred, y)})

        # The verdict: the network vs the baseline chosen on val, on the very same test rows.
        base, train, tune = (read_json(stage.path(paths.metrics) / f"{s}.json") for s in ("baseline", "train", "tune"))
        best_name, best_acc = best_baseline(base)
        base_pred = read_test_predictions(stage.path(paths.baseline) / BASELINE_PREDICTIONS, best_name, ids)
        v = judge(y, pred, base_pred, net_name=network_display_name(spec["model"], backbone_mode=mode),
                  baseline=best_name, baseline_acc=best_acc, net_cost_usd=train["cost/usd"] + tune["cost/usd"],
                  baseline_cost_usd=base["cost/usd"], note=probe_note(spec["model"], backbone_mode=mode),
                  resamples=p.bootstrap_resamples, confidence=p.confidence, seed=p.seed)
        metrics.update(v.metrics(metrics["test/acc"]))
        stage.log("test/acc %.4f  test/f1_macro %.4f  test/ece %.4f  (best baseline %s: %.4f)",
                  metrics["test/acc"], metrics["test/f1_macro"], ece, best_name, best_acc)
        if "test/acc_unflagged" in metrics:
            stage.log("test/acc_unflagged %.4f on the %d test rows the label audit did not flag (%d flagged)",
                      metrics["test/acc_unflagged"], len(ids) - metrics["test/flagged_rows"], metrics["test/flagged_rows"])
        stage.log("verdict: %s", v.sentence)

        plots, out = stage.path(paths.plots), stage.path(paths.evaluate)
        out.mkdir(parents=True, exist_ok=True)
        _write_plots(plots, y, pred, names, per_class, bins, cm, ece)
        wrong, attributions = _explain(out, model, x, y, ids, proba, pred, names=names, modality=modality,
                                       manifest=manifest, spec=spec, p=p)
        write_json_atomic(out / EVALUATION_FILE, {
            "modality": modality, "classes": names, "network": spec["model"],
            "verdict": v.record(confidence=p.confidence),
            "calibration": {"ece": ece, "bins": bins}, "confidently_wrong": wrong,
            "attributions": {"method": p.attribution_method, "rows": attributions}})

        rp = stage.params.register  # the alias moves only if the network beats the best baseline
        gate = registry_gate(v, metrics[rp.metric], base[f"baseline/best/{rp.metric}"], y=y, pred=pred,
                             base_pred=base_pred, n_classes=len(names), metric=rp.metric, min_gain=rp.min_gain,
                             require_significant=rp.require_significant, resamples=p.bootstrap_resamples,
                             confidence=p.confidence, seed=p.seed)
        metrics.update(gate.metrics())
        stage.log("registry: %s", gate.reason)
        stage.tracker.set_tags({"verdict": v.sentence, "baseline.best": best_name, "register.reason": gate.reason,
                                "model.train_run_id": spec.get("mlflow_run_id", "")})
        mv = spec.get("registered_version")
        if mv:  # the test metrics and the decision travel with the registered version they describe
            stage.tracker.call("the registry gate", apply_gate, mv["name"], mv["version"], gate, alias=rp.alias,
                               tags={**{k: metrics[k] for k in ("test/acc", "test/f1_macro")}, "verdict": v.sentence})
        stage.finish(metrics, artifacts=[plots / "per_class.csv", plots / "confusion.png", plots / "reliability.png",
                                         out])


if __name__ == "__main__":
    run_stage(main)
