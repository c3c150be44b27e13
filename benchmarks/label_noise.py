"""What label-error cleaning buys on mislabeled data: detection quality and test accuracy.

Digits through the real ingest -> clean components; `clean` injects symmetric label noise
(0/10/20/30%) into the rows split will put in train, then finds likely label errors
(out-of-fold probabilities from 5-fold SVC as Ray tasks -> cleanlab). Per noise rate:
- detection precision / recall / F1 of the rows cleaning touches, against the known flips;
- test accuracy (true labels, the same test rows throughout) of the project's SmallCNN trained
  on the train rows with no cleaning (noisy labels), with cleaning (`drop`: flagged rows left
  out; `relabel`: flagged rows relabelled to the prediction) and on noise-free labels.
Training is a plain single-process torch loop (not Ray Train: 16 runs x seeds would spend
most of the time starting worker groups) with train's default hyperparameters from
params.yaml (AdamW lr 3e-3, weight decay 1e-4, dropout 0.25, batch 64, 15 epochs, no early
stopping), averaged over --seeds seeds.
Also: wall time of the out-of-fold step with 1 vs 2 Ray workers (folds run at once).

    python -m benchmarks.label_noise [--seeds 3] [--rates 0 0.1 0.2 0.3]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks._results import write_results
from components.data.contract import DatasetWriter, SetAside, iter_batches, read_table
from components.data.sources import digits_source
from components.data.splitting import assign_splits
from components.models.networks import build_model
from components.quality.cleaning import CleanOptions, clean_dataset, oof_features
from components.quality.label_issues import LabelIssueOptions, detection_scores, oof_probabilities
from components.runtime import init_ray

REPO = Path(__file__).resolve().parents[1]
FRACTIONS = {"train": 0.7, "val": 0.15, "test": 0.15}


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


def cleaned(ingest: Path, out: Path, *, rate: float) -> dict:
    """Clean with noise injected and the relabel policy: one table holds every variant's labels."""
    with DatasetWriter(out, classes=[str(k) for k in range(10)]) as w:
        st = clean_dataset(iter_batches(ingest), w, n_classes=10, modality="image",
                           options=CleanOptions(label_issues=LabelIssueOptions(policy="relabel"), noise_rate=rate))
        w.close(rows_in=st["rows_in"], set_aside=st["set_aside"], extra=st["extra"])
    t = read_table(out)
    split = np.array(assign_splits(t.column("group").to_pylist(), fractions=FRACTIONS, seed=0))
    pixels = t.column("image").combine_chunks().flatten().to_numpy().reshape(-1, 1, 8, 8).astype(np.float32) / 255
    given = t.column("given_label").to_numpy()
    true = t.column("true_label").to_numpy() if "true_label" in t.schema.names else given  # no noise injected
    return {"x": pixels, "split": split, "label": t.column("label").to_numpy(), "given": given, "true": true, "issue": t.column("label_issue").to_numpy(zero_copy_only=False),
            "oof_s": st["metrics"]["clean/label_issues/oof_s"], "image": t.column("image")}


def oof_timing(d: dict, *, repeats: int = 3) -> dict:
    """Best-of-``repeats`` wall of the OOF step with 1 and with 2 workers, alternated so that load
    from other jobs on the machine hits both alike."""
    x = oof_features(d["image"].combine_chunks(), "image", shape=[8, 8, 1])
    walls: dict = {1: [], 2: []}
    for _ in range(repeats):
        for n in (1, 2):
            walls[n].append(oof_probabilities(x, d["given"], n_classes=10, model="svc", folds=5, workers=n,
                                              seed=0)[1])
    return {f"workers_{n}": round(min(w), 2) for n, w in walls.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--rates", type=float, nargs="+", default=[0.0, 0.1, 0.2, 0.3])
    args = ap.parse_args()
    torch.set_num_threads(1)
    init_ray(num_cpus=2)
    rows, timing = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        src = digits_source()
        with DatasetWriter(Path(tmp) / "ingest", classes=src.classes) as w:
            for b in src.batches:
                w.write(b)
            w.close(rows_in=w.rows, set_aside=SetAside())
        for rate in args.rates:
            d = cleaned(Path(tmp) / "ingest", Path(tmp) / f"clean-{rate}", rate=rate)
            tr, te = d["split"] == "train", d["split"] == "test"
            flips = d["given"] != d["true"]
            det = detection_scores(d["issue"], flips)
            keep = tr & ~d["issue"]
            acc = {name: [] for name in ("no_cleaning", "cleaning_drop", "cleaning_relabel", "noise_free")}
            t0 = time.perf_counter()
            for seed in range(args.seeds):
                x_te, y_te = d["x"][te], d["true"][te]
                acc["no_cleaning"].append(train_cnn(d["x"][tr], d["given"][tr], x_te, y_te, seed=seed))
                acc["cleaning_drop"].append(train_cnn(d["x"][keep], d["given"][keep], x_te, y_te, seed=seed))
                acc["cleaning_relabel"].append(train_cnn(d["x"][tr], d["label"][tr], x_te, y_te, seed=seed))
                acc["noise_free"].append(train_cnn(d["x"][tr], d["true"][tr], x_te, y_te, seed=seed))
            row = {"noise": rate, "flipped": int(flips.sum()), "train_rows": int(tr.sum()),
                   "touched": int(d["issue"].sum()), "touched_frac": float(d["issue"].mean()),
                   **{f"detect/{k}": round(v, 4) for k, v in det.items()},
                   **{f"test/acc/{k}": round(float(np.mean(v)), 4) for k, v in acc.items()},
                   "relabel_correct": float((d["label"][d["issue"]] == d["true"][d["issue"]]).mean())
                   if d["issue"].any() else None,
                   "oof_s": d["oof_s"], "train_s": round(time.perf_counter() - t0, 1)}
            rows.append(row)
            print(f"  noise {rate:.0%}: done ({row['train_s']}s of training)", flush=True)
            if rate == max(args.rates):
                timing = oof_timing(d)
    print_table(rows, timing, args.seeds)
    targets = check_targets(rows)
    for name, (ok, detail) in targets.items():
        print(f"  {'PASS' if ok else 'MISS'}  {name}: {detail}")
    out = REPO / "benchmarks" / "results" / "label_noise.json"
    write_results(out, {"benchmark": "label_noise", "seeds": args.seeds, "model": "SmallCNN, plain torch loop",
                               "oof_model": "svc, 5 folds", "rows": rows, "oof_wall_s": timing,
                               "targets": {k: {"pass": ok, "detail": d} for k, (ok, d) in targets.items()}})
    print(f"-> {out.relative_to(REPO)}")


def print_table(rows: list[dict], timing: dict, seeds: int) -> None:
    print(f"\nLabel noise on digits (1,797 rows; noise injected into the train split only; SmallCNN test accuracy "
          f"on true labels, mean of {seeds} seeds; plain torch loop, not Ray Train)")
    head = (f"{'noise':>6}{'flips':>6}{'touched':>8}{'prec':>7}{'recall':>7}{'F1':>7}"
            f"{'acc noisy':>10}{'acc drop':>9}{'acc relabel':>12}{'acc clean':>10}{'oof s':>7}")
    print(head)
    print("-" * len(head))
    for r in rows:
        # with no flips, precision / recall / F1 say nothing; `touched` is the false-positive count
        det = (f"{r['detect/precision']:>7.3f}{r['detect/recall']:>7.3f}{r['detect/f1']:>7.3f}" if r["flipped"]
               else f"{'-':>7}{'-':>7}{'-':>7}")
        print(f"{r['noise']:>6.0%}{r['flipped']:>6}{r['touched']:>8}{det}{r['test/acc/no_cleaning']:>10.4f}"
              f"{r['test/acc/cleaning_drop']:>9.4f}{r['test/acc/cleaning_relabel']:>12.4f}"
              f"{r['test/acc/noise_free']:>10.4f}{r['oof_s']:>7.2f}")
    if timing:
        print(f"OOF step (5-fold SVC as Ray tasks) wall: 1 worker {timing['workers_1']:.2f}s, 2 workers "
              f"{timing['workers_2']:.2f}s -> {timing['workers_1'] / timing['workers_2']:.2f}x "
              f"(2-core machine shared with other jobs: absolute times inflated)")


def check_targets(rows: list[dict]) -> dict:
    by = {r["noise"]: r for r in rows}
    t = {}
    if 0.2 in by:
        f = by[0.2]["detect/f1"]
        t["F1 >= 0.90 at 20%"] = (f >= 0.9, f"{f:.3f}")
    if 0.3 in by:
        r = by[0.3]
        f = r["detect/f1"]
        t["F1 >= 0.85 at 30%"] = (f >= 0.85, f"{f:.3f}")
        for policy in ("drop", "relabel"):
            c, free, noisy = r[f"test/acc/cleaning_{policy}"], r["test/acc/noise_free"], r["test/acc/no_cleaning"]
            t[f"30%: acc with cleaning ({policy}) within 1 pt of noise-free"] = (
                free - c <= 0.01, f"{c:.4f} vs {free:.4f} ({100 * (c - free):+.2f} pt)")
            t[f"30%: acc with cleaning ({policy}) >= 5 pt above no cleaning"] = (
                c - noisy >= 0.05, f"{c:.4f} vs {noisy:.4f} ({100 * (c - noisy):+.2f} pt)")
    if 0.0 in by:
        frac = by[0.0]["touched_frac"]
        t["0%: cleaning touches < 2% of rows"] = (frac < 0.02, f"{100 * frac:.2f}%")
    return t


if __name__ == "__main__":
    main()
