"""What the label audit buys on mislabeled data, and what it does when its auditor is weak.

Digits through the real ingest -> clean -> split components, then the audit stage's component
(components/quality/audit.py) with symmetric label noise (0/10/20/30%) injected into the train
rows. Per noise rate:
- detection precision / recall / F1 of the train rows the audit flags, against the known flips;
- whether the auditor was trusted to act (its out-of-fold accuracy vs the majority rate, the
  precision it expects of its suspects) and how many train rows it changed;
- test accuracy (the same test rows throughout, labels as given = true labels: the audit never
  touches test rows) of the project's SmallCNN trained on the train rows with no cleaning (noisy
  labels), with cleaning (`drop`: flagged train rows left out; `relabel`: the policy's labels),
  and on noise-free labels.
Correct labels, where acting would delete good data (audited with the default params, and with the
judgement off for comparison): a synthetic two-class table whose class is a weak signal under noise
(out-of-fold accuracy near chance); two overlapping Gaussian classes (a ~91% auditor that errs
confidently); and, with ``--photos-split DIR``, a real photo folder taken through ingest -> clean ->
split by the pipeline (e.g. the 2,000 face photos of benchmarks/photos_data.py; not in git).
Wall time of the out-of-fold step: in-process (the default below clean.label_issues.ray_min_rows)
vs 5 folds as Ray tasks with 2 workers, plus what starting Ray costs.
Training is a plain single-process torch loop (not Ray Train: 16 runs x seeds would spend most of
the time starting worker groups) with train's default hyperparameters from params.yaml (AdamW
lr 3e-3, weight decay 1e-4, dropout 0.25, batch 64, 15 epochs, no early stopping), averaged
over --seeds seeds.

    python -m benchmarks.label_noise [--seeds 3] [--rates 0 0.1 0.2 0.3] [--photos-split data/split]
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from trainwise.components.data.contract import DatasetWriter, SetAside, iter_batches, read_manifest, read_table
from tests.demo_data import write_digits_split
from trainwise.components.data.splitting import assign_splits
from trainwise.components.models.networks import build_model
from trainwise.components.quality.audit import NoiseOptions, audit_dataset, reduce_features
from trainwise.components.quality.label_issues import LabelIssueOptions, detection_scores, oof_probabilities
from trainwise.pipelines.config import LabelIssueParams

REPO = Path(__file__).resolve().parents[1]
DEFAULTS = LabelIssueParams().model_dump(exclude={"enabled"})  # params.yaml's defaults (the schema's)


def train_cnn(x: np.ndarray, y: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, *, seed: int,
              epochs: int = 15) -> float:
    """Test accuracy of SmallCNN trained with train's default hyperparameters."""
    torch.manual_seed(seed)
    model = build_model("small_cnn", input_shape=(1, 8, 8), n_classes=10, dropout=0.25)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(xt), generator=g).split(64):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(xt[idx]), yt[idx]).backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        pred = model(torch.from_numpy(x_test)).argmax(1).numpy()
    return float((pred == y_test).mean())


def audit(split: Path, out: Path, *, rate: float, policy: str = "relabel") -> tuple[dict, pa.Table]:
    """The audit stage's component with the default params (policy aside) and noise injected."""
    m = read_manifest(split)
    with DatasetWriter(out, classes=m["classes"], metadata={"image_shape": m.get("image_shape")}) as w:
        st = audit_dataset(iter_batches(split), lambda: iter_batches(split), w, modality=m["payload"],
                           classes=m["classes"], image_shape=m.get("image_shape"),
                           options=LabelIssueOptions(**{**DEFAULTS, "policy": policy}),
                           noise=NoiseOptions(rate=rate, seed=0), embeddings=None, use_ray=False)
        w.close(rows_in=st["rows_in"], set_aside=st["set_aside"], extra=st["extra"])
    return st, read_table(out)


def correct_labels(tmp: Path, photos_split: Path | None) -> dict:
    """Data with correct labels: how many rows does the audit change, with and without its judgement?"""
    rng = np.random.default_rng(0)
    n = 2000
    cases = {}
    x = rng.normal(size=(n, 20)).astype(np.float32)
    cases["weak auditor (near chance)"] = (x, (x[:, 0] + rng.normal(scale=2.5, size=n) > 0).astype(np.int64))
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, n)
    x = rng.normal(size=(n, 10)).astype(np.float32)
    x[:, :2] += (2 * labels[:, None] - 1).astype(np.float32)
    cases["overlapping classes (~91% auditor)"] = (x, labels)
    splits = {}
    for name, (x, labels) in cases.items():
        ids = [f"{name}-{i}" for i in range(n)]
        table = pa.table({"id": ids, "label": labels, "features": pa.FixedSizeListArray.from_arrays(
            pa.array(x.reshape(-1)), x.shape[1]), "source": ids,
            "split": assign_splits(ids, fractions={"train": 0.7, "val": 0.15, "test": 0.15}, seed=0)})
        splits[name] = tmp / f"correct-{len(splits)}"
        with DatasetWriter(splits[name], classes=["a", "b"]) as w:
            w.write(table)
            w.close(rows_in=n, set_aside=SetAside())
    if photos_split is not None:
        splits[f"real photos ({photos_split})"] = photos_split
    out = {}
    for name, split in splits.items():
        m = read_manifest(split)
        for judged, thresholds in (("default", {}), ("judgement off",
                                                    {"min_lift": 0.0, "min_excess": 0.0, "min_precision": 0.0})):
            dst = tmp / f"correct-out-{len(out)}"
            with DatasetWriter(dst, classes=m["classes"], metadata={"image_shape": m.get("image_shape")}) as w:
                st = audit_dataset(iter_batches(split), lambda: iter_batches(split), w, modality=m["payload"],
                                   classes=m["classes"], image_shape=m.get("image_shape"),
                                   options=LabelIssueOptions(**{**DEFAULTS, **thresholds}),
                                   noise=NoiseOptions(rate=0.0, seed=0), embeddings=None, use_ray=False)
                w.close(rows_in=st["rows_in"], set_aside=st["set_aside"], extra=st["extra"])
            mt = st["metrics"]
            out[f"{name} / {judged}"] = {
                "rows": m["rows"], "found": mt["audit/label_issues/found"], "changed": mt["audit/label_issues/touched"],
                "changed_frac": mt["audit/label_issues/touched"] / m["rows"], "acted": mt["audit/label_issues/acted"],
                "oof_acc": mt["audit/label_issues/oof_acc"], "majority_rate": mt["audit/label_issues/majority_rate"],
                "lift": mt["audit/label_issues/lift"], "own_error_rate": mt["audit/label_issues/own_error_rate"],
                "explained": mt["audit/label_issues/explained"],
                "explained_high": mt["audit/label_issues/explained_high"],
                "expected_precision": mt["audit/label_issues/expected_precision"], "decision": st["decision"]}
    return out


def oof_timing(split: Path, *, repeats: int = 3) -> dict:
    """Best-of-``repeats`` wall of the out-of-fold step in-process and as Ray tasks (2 workers),
    alternated so that load from other jobs hits both alike; and the Ray start it needs."""
    t = read_table(split)
    x = reduce_features(t.column("image").combine_chunks(), "image", shape=[8, 8, 1], max_features=256, seed=0)
    y, train = t.column("label").to_numpy(), np.array(t.column("split").to_pylist()) == "train"
    from trainwise.components.ray_start import init_ray

    t0 = time.perf_counter()
    try:
        init_ray(num_cpus=2)
    except Exception as err:  # an overloaded machine can fail Ray's start-up: say so, keep the other results
        return {"ray_error": str(err).splitlines()[0], "ray_start_s": round(time.perf_counter() - t0, 2),
                "in_process": round(oof_probabilities(x, y, use_ray=False, n_classes=10, model="svc", folds=5,
                                                      workers=2, seed=0, fit_rows=train)[1], 2)}
    ray_start = time.perf_counter() - t0
    walls: dict = {"in_process": [], "ray_2_workers": []}
    kw = dict(n_classes=10, model="svc", folds=5, workers=2, seed=0, fit_rows=train)
    for _ in range(repeats):
        walls["in_process"].append(oof_probabilities(x, y, use_ray=False, **kw)[1])
        walls["ray_2_workers"].append(oof_probabilities(x, y, use_ray=True, **kw)[1])
    import ray

    ray.shutdown()
    return {**{k: round(min(v), 2) for k, v in walls.items()}, "ray_start_s": round(ray_start, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3, help="training seeds per variant; 0: detection only, no training")
    ap.add_argument("--rates", type=float, nargs="+", default=[0.0, 0.1, 0.2, 0.3])
    ap.add_argument("--photos-split", type=Path, default=None,
                    help="a split dataset of real photos with correct labels (data/split of a pipeline run)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        split = write_digits_split(tmp / "data")
        for rate in args.rates:
            st, t = audit(split, tmp / f"audit-{rate}", rate=rate)
            m = st["metrics"]
            s = np.array(t.column("split").to_pylist())
            tr, te = s == "train", s == "test"
            x = t.column("image").combine_chunks().flatten().to_numpy().reshape(-1, 1, 8, 8).astype(np.float32) / 255
            label, given = t.column("label").to_numpy(), t.column("given_label").to_numpy()
            true = t.column("true_label").to_numpy() if "true_label" in t.schema.names else given
            issue = t.column("label_issue").to_numpy(zero_copy_only=False)
            flips = given != true
            det = detection_scores(issue[tr], flips[tr])
            keep = tr & ~issue if m["audit/label_issues/acted"] else tr  # what `drop` trains on
            acc = {name: [] for name in ("no_cleaning", "cleaning_drop", "cleaning_relabel", "noise_free")}
            t0 = time.perf_counter()
            for seed in range(args.seeds):
                x_te, y_te = x[te], given[te]  # test labels as given: never touched, and noise-free here
                acc["no_cleaning"].append(train_cnn(x[tr], given[tr], x_te, y_te, seed=seed))
                acc["cleaning_drop"].append(train_cnn(x[keep], given[keep], x_te, y_te, seed=seed))
                acc["cleaning_relabel"].append(train_cnn(x[tr], label[tr], x_te, y_te, seed=seed))
                acc["noise_free"].append(train_cnn(x[tr], true[tr], x_te, y_te, seed=seed))
            changed = label != given
            row = {"noise": rate, "flipped": int(flips.sum()), "train_rows": int(tr.sum()),
                   "flagged_train": int(issue[tr].sum()), "flagged_val_test": int(issue[~tr].sum()),
                   "acted": m["audit/label_issues/acted"], "relabelled": int(changed.sum()),
                   "changed_outside_train": int(changed[~tr].sum()),
                   "oof_acc": m["audit/label_issues/oof_acc"], "lift": m["audit/label_issues/lift"],
                   "expected_precision": m["audit/label_issues/expected_precision"],
                   "explained": m["audit/label_issues/explained"],
                   "explained_high": m["audit/label_issues/explained_high"], "decision": st["decision"],
                   **{f"detect/{k}": round(v, 4) for k, v in det.items()},
                   **{f"test/acc/{k}": round(float(np.mean(v)), 4) if v else None for k, v in acc.items()},
                   "relabel_correct": float((label[changed] == true[changed]).mean()) if changed.any() else None,
                   "oof_s": m["audit/label_issues/oof_s"], "train_s": round(time.perf_counter() - t0, 1)}
            rows.append(row)
            print(f"  noise {rate:.0%}: done ({row['train_s']}s of training)", flush=True)
        weak = correct_labels(tmp, args.photos_split)
        timing = oof_timing(split)
    print_table(rows, weak, timing, args.seeds)
    targets = check_targets(rows, weak)
    for name, (ok, detail) in targets.items():
        print(f"  {'PASS' if ok else 'MISS'}  {name}: {detail}")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    out = REPO / "benchmarks" / "results" / "label_noise.json"
    out.write_text(json.dumps({"benchmark": "label_noise", "git_commit": commit,
                               "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                               "machine": "2 cores shared with other jobs: absolute times inflated",
                               "seeds": args.seeds, "model": "SmallCNN, plain torch loop",
                               "auditor": "svc, 5 folds over train rows, default thresholds (params.yaml)",
                               "rows": rows, "correct_labels": weak, "oof_wall_s": timing,
                               "targets": {k: {"pass": ok, "detail": d} for k, (ok, d) in targets.items()}},
                              indent=2) + "\n")
    print(f"-> {out.relative_to(REPO)}")


def print_table(rows: list[dict], weak: dict, timing: dict, seeds: int) -> None:
    print(f"\nLabel noise on digits (1,797 rows; noise injected into the train split only; the audit acts on train "
          f"rows only; SmallCNN test accuracy on the given test labels, mean of {seeds} seeds; plain torch loop)")
    # explained: suspects the auditor's own error rate gives (point / upper 95% bound); the judgement
    # acts when flagged >= min_excess (2) x the bound; "2x point" is the rule before the bound
    head = (f"{'noise':>6}{'flips':>6}{'flagged':>8}{'explained':>10}{'2x point':>9}{'acted':>6}{'lift':>6}"
            f"{'E[prec]':>8}{'prec':>7}{'recall':>7}"
            f"{'F1':>7}{'acc noisy':>10}{'acc drop':>9}{'acc relabel':>12}{'acc clean':>10}{'oof s':>7}")
    print(head)
    print("-" * len(head))
    for r in rows:
        # with no flips, precision / recall / F1 say nothing; `flagged` is the false-positive count
        det = (f"{r['detect/precision']:>7.3f}{r['detect/recall']:>7.3f}{r['detect/f1']:>7.3f}" if r["flipped"]
               else f"{'-':>7}{'-':>7}{'-':>7}")
        accs = "".join(f"{r[f'test/acc/{k}']:>{w}.4f}" if r[f"test/acc/{k}"] is not None else f"{'-':>{w}}"
                       for k, w in (("no_cleaning", 10), ("cleaning_drop", 9), ("cleaning_relabel", 12),
                                    ("noise_free", 10)))
        explained = f"{r['explained']:.0f}/{r['explained_high']:.0f}"
        point_rule = "yes" if r["flagged_train"] >= 2 * r["explained"] else "no"
        print(f"{r['noise']:>6.0%}{r['flipped']:>6}{r['flagged_train']:>8}{explained:>10}{point_rule:>9}{r['acted']:>6}"
              f"{r['lift']:>6.2f}"
              f"{r['expected_precision']:>8.2f}{det}{accs}{r['oof_s']:>7.2f}")
    print("\nCorrect labels (nothing should change): rows the audit changed, default params vs judgement off")
    for name, w in weak.items():
        print(f"  {name:<62} oof acc {w['oof_acc']:.3f} (majority {w['majority_rate']:.3f}, lift {w['lift']:.2f}), "
              f"{w['found']:>4} suspects, own errors explain {w['explained']:>5.0f} (<= {w['explained_high']:.0f}): "
              f"changed {w['changed']:>4} "
              f"({100 * w['changed_frac']:.1f}%)")
    if "ray_error" in timing:
        print(f"\nOut-of-fold step (5-fold SVC): in-process {timing['in_process']:.2f}s; Ray did not start "
              f"({timing['ray_error']}, after {timing['ray_start_s']:.0f}s): the machine was overloaded")
        return
    print(f"\nOut-of-fold step (5-fold SVC, 1,257 train rows): in-process {timing['in_process']:.2f}s, as Ray tasks "
          f"(2 workers) {timing['ray_2_workers']:.2f}s -> {timing['in_process'] / timing['ray_2_workers']:.2f}x; "
          f"starting Ray first: {timing['ray_start_s']:.1f}s (2-core machine shared with other jobs)")


def check_targets(rows: list[dict], weak: dict) -> dict:
    by = {r["noise"]: r for r in rows}
    t = {}
    if 0.2 in by:
        f = by[0.2]["detect/f1"]
        t["F1 >= 0.90 at 20% (issue 14)"] = (f >= 0.9 and by[0.2]["acted"] == 1, f"{f:.3f}, acted {by[0.2]['acted']}")
    if 0.3 in by:
        f = by[0.3]["detect/f1"]
        t["F1 >= 0.85 at 30%"] = (f >= 0.85, f"{f:.3f}")
    t["val/test rows never changed"] = (all(r["changed_outside_train"] == 0 for r in rows),
                                        str([r["changed_outside_train"] for r in rows]))
    for name, w in weak.items():
        if name.endswith("/ default"):
            t[f"correct labels, {name.removesuffix(' / default')}: <= 1% of rows changed (issue 14)"] = (
                w["changed_frac"] <= 0.01, f"{100 * w['changed_frac']:.2f}%")
    if 0.0 in by:
        frac = by[0.0]["relabelled"] / by[0.0]["train_rows"]
        t["0%: the audit changes < 2% of train rows"] = (frac < 0.02, f"{100 * frac:.2f}%")
        # digits as shipped: its suspects include plainly correct labels (components/quality/label_issues.py)
        t["0% (digits as shipped): no train row changed"] = (by[0.0]["relabelled"] == 0 and not by[0.0]["acted"],
                                                              f"{by[0.0]['relabelled']} changed")
    return t


if __name__ == "__main__":
    main()
