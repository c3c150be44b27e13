"""Does cleaning help? Test accuracy of each label-audit policy next to its detection F1, on digits,
real photos with EfficientNet-Lite0 and real text with all-MiniLM-L6-v2 (issue 27, item 7).

Data (``--parts``):
- ``digits``: scikit-learn digits through the real ingest -> clean -> split components
  (tests/demo_data.py); features: the 64 pixels (the auditor reads the payload, as the audit stage
  does without a backbone).
- ``photos``: real face photos, 2 classes (with / without mask; github.com/chandrikadeb7/
  Face-Mask-Detection, augmented copies left out, benchmarks/photos_data.py), decoded by clean's
  ``decode_image`` at 224x224 RGB and embedded by the embed stage's ``_Embedder``
  (EfficientNet-Lite0, the packaged ImageNet weights): 1,280 values per photo.
- ``text``: real sentences, 2 classes (UCI "sentiment labelled sentences", Kotzias et al. 2015:
  Yelp, Amazon, IMDb reviews; github.com/kvrao/sentiment_analysis), every distinct one, embedded by
  the same ``_Embedder`` with all-MiniLM-L6-v2 (packaged): 384 values per sentence.
Photos and texts get their split from ``assign_splits`` with params.yaml's fractions and seed.

For each noise rate and seed: symmetric label noise injected into the train rows (noise seed =
the seed: different rows flipped each time), then the audit stage's component
(``trainwise.components.quality.audit.audit_dataset``: out-of-fold probabilities over train rows, with the
embeddings as its features when there are any, cleanlab's ranking, the auditor's judgement, every
threshold at its params.yaml default) once per policy: ``flag`` (suspects marked, no label
changed), ``drop`` (train suspects left out), ``relabel`` (train suspects given the auditor's
prediction); ``none`` is no audit (the noisy labels as they are). Drop and relabel act only when
the judgement trusts the auditor, as in the pipeline. The head: the project's linear probe
(``trainwise.components.models.linear_probe.make_linear_probe``: standardisation + logistic regression, which is
also the frozen-backbone head's starting point, ``init_from_probe``) fitted on the train rows as the
policy leaves them, scored on the test rows with their true labels (noise never enters val/test).
Reported per data set and rate: mean and spread (sample standard deviation; every seed's figures are kept in the file) over
the seeds of detection precision / recall / F1 (train rows flagged vs the rows flipped), the share of
seeds the auditor acted, and each policy's test accuracy and its difference from ``none``.

    python -m benchmarks.cleaning_policies [--parts digits photos text] [--rates 0 0.1 0.2 0.3] [--seeds 3]
        --photos-repo /work/.mirror/chandrikadeb7+Face-Mask-Detection/repo
        --text-repo /work/.mirror/kvrao+sentiment_analysis/repo
"""

from __future__ import annotations

import argparse
import hashlib
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from benchmarks._results import RESULTS, write_results
from trainwise.components.data.contract import DatasetWriter, SetAside, iter_batches, read_manifest, read_table
from trainwise.components.data.splitting import assign_splits
from trainwise.components.models.linear_probe import make_linear_probe
from trainwise.components.quality.audit import NoiseOptions, audit_dataset
from trainwise.components.quality.label_issues import LabelIssueOptions, detection_scores
from trainwise.pipelines.config import LabelIssueParams, SplitParams

REPO = Path(__file__).resolve().parents[1]
DEFAULTS = LabelIssueParams().model_dump(exclude={"enabled"})  # params.yaml's defaults (the schema's)
POLICIES = ("none", "flag", "drop", "relabel")
CACHE = REPO / ".trainwise" / "bench-cache"


def _embed(name: str, payload: str, values: list, *, image_shape=None, batch: int = 64) -> np.ndarray:
    """The embed stage's replica (trainwise.components.embedding.batch._Embedder), in this process."""
    from trainwise.components.embedding.batch import _Embedder

    emb = _Embedder(name=name, pretrained=True, seed=0, root=str(REPO), image_shape=image_shape, threads=2,
                    use_gpu=False, payload=payload)
    out = []
    for k in range(0, len(values), batch):
        part = values[k:k + batch]
        arr = np.stack(part) if payload == "image" else np.asarray(part, dtype=object)
        out.append(np.stack(emb({"id": np.arange(len(part)), payload: arr})["embedding"]))
        print(f"    {name}: {min(k + batch, len(values))}/{len(values)}", end="\r", flush=True)
    print()
    return np.concatenate(out).astype(np.float32)


def _cached(key: str, make) -> dict:
    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"{key}.npz"
    if path.exists():
        z = np.load(path, allow_pickle=False)
        return {k: z[k] for k in z.files}
    d = make()
    np.savez(path, **d)
    return d


def photos_data(repo: Path, per_class: int) -> dict:
    from benchmarks.photos_data import prepare
    from trainwise.components.data.images import decode_image

    def make():
        with tempfile.TemporaryDirectory() as tmp:
            counts = prepare(repo, Path(tmp), per_class)
            files = sorted(Path(tmp).rglob("*.jp*g"))
            pixels, labels, ids = [], [], []
            for f in files:
                try:
                    px = decode_image(f.read_bytes(), size=(224, 224), channels=3)
                except Exception:  # clean quarantines what it cannot decode: so does this
                    continue
                pixels.append(px.reshape(-1))
                labels.append(0 if f.parent.name == "with_mask" else 1)
                ids.append(hashlib.sha256(px.tobytes()).hexdigest()[:16])
            print(f"  photos: {counts} -> {len(pixels)} decoded; embedding", flush=True)
            x = _embed("efficientnet_lite0", "image", pixels, image_shape=(224, 224, 3))
        return {"x": x, "y": np.asarray(labels), "ids": np.asarray(ids)}

    return {**_cached(f"photos-{per_class}", make), "classes": ["with_mask", "without_mask"]}


def text_data(repo: Path) -> dict:
    from benchmarks.near_duplicates_content import load_texts
    from trainwise.components.quality.cleaning import normalize_text

    def make():
        texts, labels, _ = load_texts(repo, 10**9)
        texts = [normalize_text(t) for t in texts]
        print(f"  text: {len(texts)} sentences; embedding", flush=True)
        x = _embed("all_minilm_l6_v2", "text", texts)
        return {"x": x, "y": labels, "ids": np.asarray([hashlib.sha256(t.encode()).hexdigest()[:16] for t in texts])}

    return {**_cached("uci-sentences", make), "classes": ["negative", "positive"]}


def write_split(d: dict, out: Path) -> Path:
    """An embedded set as the audit stage reads it: a split dataset (payload = the embedding)."""
    sp = SplitParams()
    ids = [str(i) for i in d["ids"]]
    x = d["x"]
    table = pa.table({"id": ids, "label": pa.array(d["y"], pa.int64()),
                      "features": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), x.shape[1]),
                      "source": ids,
                      "split": assign_splits(ids, fractions={"train": sp.train, "val": sp.val, "test": sp.test},
                                             seed=sp.seed)})
    with DatasetWriter(out, classes=list(d["classes"])) as w:
        w.write(table)
        w.close(rows_in=len(ids), set_aside=SetAside())
    return out


def run_audit(split: Path, out: Path, *, policy: str, rate: float, seed: int, embeddings) -> tuple[dict, pa.Table]:
    m = read_manifest(split)
    with DatasetWriter(out, classes=m["classes"], metadata={"image_shape": m.get("image_shape")}) as w:
        st = audit_dataset(iter_batches(split), lambda: iter_batches(split), w, modality=m["payload"],
                           classes=m["classes"], image_shape=m.get("image_shape"),
                           options=LabelIssueOptions(**{**DEFAULTS, "policy": policy}),
                           noise=NoiseOptions(rate=rate, seed=seed), embeddings=embeddings, use_ray=False)
        w.close(rows_in=st["rows_in"], set_aside=st["set_aside"], extra=st["extra"])
    return st, read_table(out)


def probe_acc(x_by_id: dict, t: pa.Table, x_test: np.ndarray, y_test: np.ndarray, *, seed: int) -> float:
    s = np.array(t.column("split").to_pylist())
    tr = s == "train"
    ids = np.array(t.column("id").to_pylist())[tr]
    y = t.column("label").to_numpy()[tr]
    probe = make_linear_probe(seed=seed).fit(np.stack([x_by_id[i] for i in ids]), y)
    return float((probe.predict(x_test) == y_test).mean())


def evaluate_set(name: str, split: Path, features: dict, *, embeddings, rates, seeds: int, tmp: Path) -> list[dict]:
    """features: id -> the head's input vector."""
    base = read_table(split)
    s = np.array(base.column("split").to_pylist())
    ids = np.array(base.column("id").to_pylist())
    x_test = np.stack([features[i] for i in ids[s == "test"]])
    y_test = base.column("label").to_numpy()[s == "test"]
    rows = []
    for rate in rates:
        per_seed = []
        t0 = time.perf_counter()
        for seed in range(seeds):
            acc, det, acted, changed = {}, None, {}, {}
            for policy in POLICIES:
                if policy == "none":  # no audit: the noisy labels (the audit component with the search off)
                    m = read_manifest(split)
                    out = tmp / f"{name}-{rate}-{seed}-none"
                    with DatasetWriter(out, classes=m["classes"]) as w:
                        st = audit_dataset(iter_batches(split), lambda: iter_batches(split), w, modality=m["payload"],
                                           classes=m["classes"], image_shape=m.get("image_shape"), options=None,
                                           noise=NoiseOptions(rate=rate, seed=seed), embeddings=None, use_ray=False)
                        w.close(rows_in=st["rows_in"], set_aside=st["set_aside"], extra=st["extra"])
                    t = read_table(out)
                else:
                    st, t = run_audit(split, tmp / f"{name}-{rate}-{seed}-{policy}", policy=policy, rate=rate,
                                      seed=seed, embeddings=embeddings)
                    tr = np.array(t.column("split").to_pylist()) == "train"
                    acted[policy] = int(st["metrics"]["audit/label_issues/acted"])
                    changed[policy] = int(st["metrics"]["audit/set_aside"]) + int(
                        (t.column("label").to_numpy() != t.column("given_label").to_numpy()).sum())
                    if policy == "flag":
                        given = t.column("given_label").to_numpy()
                        true = t.column("true_label").to_numpy() if "true_label" in t.schema.names else given
                        issue = t.column("label_issue").to_numpy(zero_copy_only=False)
                        det = {**detection_scores(issue[tr], (given != true)[tr]),
                               "flagged": int(issue[tr].sum()), "flipped": int((given != true)[tr].sum())}
                acc[policy] = probe_acc(features, t, x_test, y_test, seed=seed)
            per_seed.append({"seed": seed, "acc": acc, "detect": det, "acted": acted, "changed_train_rows": changed})
        rows.append(summarise(name, rate, per_seed, time.perf_counter() - t0))
        r = rows[-1]
        f1 = f"{r['detect/f1']['mean']:.3f}" if r["detect/f1"] else "-"
        print(f"  {name} noise {rate:.0%}: F1 {f1}, " + ", ".join(
            f"{p} {r['acc'][p]['mean']:.4f}" for p in POLICIES) + f" ({r['wall_s']} s)", flush=True)
    return rows


def _stat(v) -> dict:
    v = np.asarray(v, float)
    return {"mean": round(float(v.mean()), 4), "sd": round(float(v.std(ddof=1)) if len(v) > 1 else 0.0, 4)}


def summarise(name: str, rate: float, per_seed: list[dict], wall: float) -> dict:
    out = {"set": name, "noise": rate, "seeds": len(per_seed), "wall_s": round(wall, 1)}
    flipped = [p["detect"]["flipped"] for p in per_seed]
    out["flipped"] = int(np.mean(flipped))
    out["flagged_train"] = _stat([p["detect"]["flagged"] for p in per_seed])
    for k in ("precision", "recall", "f1"):
        out[f"detect/{k}"] = _stat([p["detect"][k] for p in per_seed]) if any(flipped) else None
    out["acted_share"] = {p: float(np.mean([s["acted"][p] for s in per_seed])) for p in ("drop", "relabel")}
    out["changed_train_rows"] = {p: _stat([s["changed_train_rows"][p] for s in per_seed]) for p in ("drop", "relabel")}
    out["acc"] = {p: _stat([s["acc"][p] for s in per_seed]) for p in POLICIES}
    out["acc_minus_none_points"] = {p: _stat([100 * (s["acc"][p] - s["acc"]["none"]) for s in per_seed])
                                    for p in POLICIES if p != "none"}
    out["per_seed"] = per_seed
    return out


def choose(rows: list[dict], *, tie_points: float = 0.25) -> dict:
    """The policy with the best mean accuracy over every set and noise rate; policies within
    ``tie_points`` of the best count as tied, and a tie goes to the one that asserts least: flag
    (changes nothing), then drop (writes no label the data did not give), then relabel. Also each
    policy's worst and best mean difference from ``none`` (points)."""
    mean = {p: float(np.mean([r["acc"][p]["mean"] for r in rows])) for p in POLICIES}
    worst = {p: min(r["acc_minus_none_points"][p]["mean"] for r in rows) for p in POLICIES if p != "none"}
    best_gain = {p: max(r["acc_minus_none_points"][p]["mean"] for r in rows) for p in POLICIES if p != "none"}
    top = max(mean[p] for p in ("flag", "drop", "relabel"))
    pick = next(p for p in ("flag", "drop", "relabel") if 100 * (top - mean[p]) <= tie_points)
    return {"mean_acc_over_sets_and_rates": {p: round(v, 4) for p, v in mean.items()},
            "worst_mean_points_vs_none": {p: round(v, 2) for p, v in worst.items()},
            "best_mean_points_vs_none": {p: round(v, 2) for p, v in best_gain.items()},
            "tie_points": tie_points, "best_policy": pick}


def print_table(rows: list[dict]) -> None:
    print("\nDoes cleaning help? Linear-probe test accuracy (true test labels) per audit policy, mean +- sd over "
          "seeds; detection of the flipped train rows (policy-independent); acted: share of seeds the judgement "
          "let drop/relabel act")
    head = (f"{'set':<8}{'noise':>6}{'flips':>6}{'flagged':>8}{'F1':>13}{'acted':>6}"
            + "".join(f"{p:>17}" for p in POLICIES) + f"{'drop-none':>11}{'relab-none':>11}")
    print(head)
    print("-" * len(head))
    for r in rows:
        f1 = f"{r['detect/f1']['mean']:.3f}+-{r['detect/f1']['sd']:.3f}" if r["detect/f1"] else "-"
        print(f"{r['set']:<8}{r['noise']:>6.0%}{r['flipped']:>6}{r['flagged_train']['mean']:>8.0f}{f1:>13}"
              f"{r['acted_share']['drop']:>6.2f}"
              + "".join(f"{r['acc'][p]['mean']:>10.4f}+-{r['acc'][p]['sd']:.4f}"[-17:].rjust(17) for p in POLICIES)
              + f"{r['acc_minus_none_points']['drop']['mean']:>+11.2f}{r['acc_minus_none_points']['relabel']['mean']:>+11.2f}")


def combine(files: list[Path], out: Path) -> None:
    """One results file from runs of separate parts (run at once on a shared machine): their rows in
    the order given, the choice over all of them, and each run's own provenance."""
    import json

    runs = [json.loads(Path(f).read_text()) for f in files]
    rows = [r for run in runs for r in run["rows"]]
    if len({run["seeds"] for run in runs}) != 1:
        raise SystemExit("cleaning_policies --combine: the runs used different --seeds")
    print_table(rows)
    chosen = choose(rows)
    print(f"\nmean accuracy over sets and rates: {chosen['mean_acc_over_sets_and_rates']}; worst mean points vs none: "
          f"{chosen['worst_mean_points_vs_none']}; best: {chosen['best_mean_points_vs_none']} -> {chosen['best_policy']}")
    result = {**{k: v for k, v in runs[0].items() if k not in ("rows", "sets", "choice", "provenance")},
              "rates": sorted({x for run in runs for x in run["rates"]}),
              "sets": {k: v for run in runs for k, v in run["sets"].items()}, "rows": rows, "choice": chosen,
              "parts_provenance": {f"{','.join(run['sets'])} {run['rates']}": run["provenance"] for run in runs}}
    print("->", write_results(out, result))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", nargs="+", default=["digits", "photos", "text"], choices=["digits", "photos", "text"])
    ap.add_argument("--rates", type=float, nargs="+", default=[0.0, 0.1, 0.2, 0.3])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--photos-repo", type=Path, default=Path("/work/.mirror/chandrikadeb7+Face-Mask-Detection/repo"))
    ap.add_argument("--photos-per-class", type=int, default=1000)
    ap.add_argument("--text-repo", type=Path, default=Path("/work/.mirror/kvrao+sentiment_analysis/repo"))
    ap.add_argument("--out", type=Path, default=RESULTS / "cleaning_policies.json")
    ap.add_argument("--combine", type=Path, nargs="+", default=None,
                    help="no run: merge results files of separate --parts runs (each keeps its provenance) into --out")
    args = ap.parse_args()
    if args.combine:
        return combine(args.combine, args.out)
    rows, sets = [], {}
    with tempfile.TemporaryDirectory(prefix="trainwise-cleaning-") as tmp:
        tmp = Path(tmp)
        for part in args.parts:
            if part == "digits":
                from tests.demo_data import write_digits_split

                split = write_digits_split(tmp / "digits")
                t = read_table(split)
                px = t.column("image").combine_chunks().flatten().to_numpy().reshape(len(t), -1).astype(np.float32)
                features = dict(zip(t.column("id").to_pylist(), px / 255))
                embeddings = None
                sets[part] = {"rows": len(t), "features": "64 pixels (auditor: the payload, as without a backbone)",
                              "source": "scikit-learn digits, ingest -> clean -> split components"}
            else:
                d = photos_data(args.photos_repo, args.photos_per_class) if part == "photos" else text_data(args.text_repo)
                split = write_split(d, tmp / part)
                ids = [str(i) for i in d["ids"]]
                features = dict(zip(ids, d["x"]))
                embeddings = (ids, d["x"])
                sets[part] = {"rows": len(ids), "classes": list(d["classes"]),
                              "class_counts": np.bincount(d["y"]).tolist(),
                              "features": ("EfficientNet-Lite0 (packaged ImageNet weights), 224x224, 1,280 values"
                                           if part == "photos" else "all-MiniLM-L6-v2 (packaged), 384 values"),
                              "source": ("github.com/chandrikadeb7/Face-Mask-Detection, augmented copies left out "
                                         "(benchmarks/photos_data.py)" if part == "photos" else
                                         "UCI sentiment labelled sentences (Kotzias et al. 2015), "
                                         "github.com/kvrao/sentiment_analysis, distinct by text_key")}
            split_counts = dict(zip(*np.unique(read_table(split).column("split").to_pylist(), return_counts=True)))
            sets[part]["split_rows"] = {k: int(v) for k, v in split_counts.items()}
            rows += evaluate_set(part, split, features, embeddings=embeddings, rates=args.rates, seeds=args.seeds,
                                 tmp=tmp)
    print_table(rows)
    chosen = choose(rows)
    print(f"\nmean accuracy over sets and rates: {chosen['mean_acc_over_sets_and_rates']}; worst mean points vs none: "
          f"{chosen['worst_mean_points_vs_none']}; best: {chosen['best_mean_points_vs_none']} -> {chosen['best_policy']}")
    result = {"benchmark": "cleaning_policies", "sets": sets, "seeds": args.seeds, "rates": args.rates,
              "head": "linear probe (trainwise.components.models.linear_probe: StandardScaler + logistic regression, C=1), the "
                      "frozen-backbone head's starting point; fitted on the train rows the policy leaves",
              "auditor": "audit_dataset with params.yaml's clean.label_issues defaults (svc, 5 folds over train rows, "
                         "judgement on), policy varied",
              "rows": rows, "choice": chosen}
    print("->", write_results(args.out, result))


if __name__ == "__main__":
    main()
