"""The label audit, after split: likely label errors found out of fold, acted on in train only.

Input: a split dataset (data/split: payload, ``label``, ``split``); optionally the rows'
embeddings (data/embed) as the auditor's features. Output: the same rows and columns, plus
- ``label_issue`` (bool): the row is a likely label error (in any split);
- ``given_label`` (int): the label as given (after injected noise, if any);
- ``true_label`` (int), with noise injection only: the label before it (read by scoring code only);
with train rows dropped (set aside, reason ``label_issue``) or relabelled only when the policy
says so *and* the auditor was judged good enough (trainwise.components.quality.label_issues). Val and
test rows are never dropped or changed: the test set is the user's, and test/acc is measured
on the labels they gave.

Memory: the auditor's features are built batch by batch and are never all rows at full
payload width: at most ``n_rows x max_features`` float32 values (images block-averaged, long
sequences resampled, wide tables and embeddings projected; see :func:`reduce_features`); text
is a sparse TF-IDF matrix (memory grows with the words, not with 2**16 columns). The payloads
themselves stream from the split dataset to the writer in batches.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np
import pyarrow as pa
from PIL import Image

from trainwise.components.data.contract import DatasetWriter, SetAside
from trainwise.components.quality.label_issues import (LabelIssueOptions, TooFewRows, decide, detection_scores, fold_indices,
                                             oof_probabilities, suspects_table)
from trainwise.components.quality.noise import inject_symmetric_noise

LABEL_ISSUE = "label_issue"  # set-aside reason of dropped train rows
TEXT_HASH_FEATURES = 2**16


@dataclass(frozen=True, kw_only=True)
class NoiseOptions:
    rate: float   # symmetric noise injected into the train rows (clean.noise.rate)
    seed: int


def _block_average_images(flat: np.ndarray, shape: list[int], max_features: int) -> np.ndarray:
    """(n, h*w*c) uint8 -> (n, <= max_features) float32 in [0, 1]; area-averaged when too wide."""
    h, w, c = shape
    x = flat.reshape(-1, h, w, c)
    if h * w * c > max_features:
        f = (max_features / (h * w * c)) ** 0.5
        nh, nw = max(1, int(h * f)), max(1, int(w * f))
        x = np.stack([np.asarray(Image.fromarray(a[..., 0] if c == 1 else a).resize((nw, nh), Image.Resampling.BOX))
                      for a in x]).reshape(len(x), nh, nw, c)
    return x.reshape(len(x), -1).astype(np.float32) / 255.0


def _resample(x: np.ndarray, width: int) -> np.ndarray:
    """Average consecutive values of each row into ``width`` bins (a long sequence, shrunk)."""
    edges = np.linspace(0, x.shape[1], width + 1).astype(int)
    return np.add.reduceat(x, edges[:-1], axis=1) / np.diff(edges)


def reduce_features(column: pa.Array, modality: str, *, shape: list[int] | None, max_features: int,
                    seed: int) -> np.ndarray:
    """One batch's payloads -> auditor features of at most ``max_features`` values per row (float32).

    Images: pixels in [0, 1], area-averaged down to fit. Sequences: values plus FFT magnitudes
    (phase-free), the sequence first averaged into bins so that both fit. Features: as given, or a
    fixed (seeded) Gaussian random projection when wider. Not standardised: see :func:`standardise`.
    Text is handled by :func:`text_features` (sparse).
    """
    flat = column.flatten().to_numpy(zero_copy_only=False)
    if modality == "image":
        return _block_average_images(flat, shape, max_features)
    x = flat.reshape(len(column), -1).astype(np.float32)
    if modality == "sequence":
        keep = min(x.shape[1], max(2, (2 * max_features - 2) // 3))  # keep + keep // 2 + 1 <= max_features
        if keep < x.shape[1]:
            x = _resample(x, keep)
        return np.concatenate([x, np.abs(np.fft.rfft(x, axis=1))], axis=1).astype(np.float32)
    return project(x, max_features=max_features, seed=seed)


def project(x: np.ndarray, *, max_features: int, seed: int) -> np.ndarray:
    """Rows wider than ``max_features``: a Gaussian random projection that depends only on the
    width and the seed (so every batch gets the same one; distances kept, Johnson-Lindenstrauss)."""
    if x.shape[1] <= max_features:
        return x.astype(np.float32, copy=False)
    rng = np.random.default_rng([seed, x.shape[1], max_features])
    w = rng.normal(0, 1 / np.sqrt(max_features), size=(x.shape[1], max_features)).astype(np.float32)
    return (x.astype(np.float32, copy=False) @ w).astype(np.float32)


def standardise(x: np.ndarray, *, fit_rows: np.ndarray) -> np.ndarray:
    """Zero mean, unit variance per column, with the mean and spread of the ``fit_rows`` (bool mask:
    the train rows) only, so that no val/test row shapes the features the auditor learns from."""
    fit = x[np.asarray(fit_rows, bool)]
    std = fit.std(0)
    return ((x - fit.mean(0)) / np.where(std > 1e-8, std, 1.0)).astype(np.float32)


def text_features(texts: list[str]):
    """TF-IDF of hashed word uni- and bigrams (sparse CSR)."""
    from sklearn.feature_extraction.text import HashingVectorizer

    return HashingVectorizer(n_features=TEXT_HASH_FEATURES, alternate_sign=False, ngram_range=(1, 2),
                             norm=None).transform(texts)


@dataclass
class _Rows:
    """Per-row records of pass 1 (small: no payload)."""

    ids: list
    labels: list
    splits: list
    sources: list
    features: list


def _pass1(batches: Iterable[pa.RecordBatch], modality: str, *, shape, max_features: int, seed: int,
           want_features: bool) -> _Rows:
    rows = _Rows([], [], [], [], [])
    for batch in batches:
        rows.ids += batch.column("id").to_pylist()
        rows.labels += batch.column("label").to_pylist()
        rows.splits += batch.column("split").to_pylist()
        rows.sources += batch.column("source").to_pylist()
        if want_features:
            col = batch.column(modality)
            rows.features.append(text_features(col.to_pylist()) if modality == "text" else
                                 reduce_features(col, modality, shape=shape, max_features=max_features, seed=seed))
    return rows


def embedding_features(ids: list[str], embeddings, *, fit_rows: np.ndarray, max_features: int, seed: int,
                       log=lambda *a: None) -> tuple:
    """The embeddings of ``ids`` (PCA-reduced to ``max_features``, the PCA fitted on the ``fit_rows``:
    the train rows), or (None, why) when some rows have none."""
    emb_ids, emb = embeddings
    where = {i: k for k, i in enumerate(emb_ids)}
    missing = sum(1 for i in ids if i not in where)
    if missing:
        log("embeddings cover %d of %d rows: the auditor uses the payload instead (re-run embed)",
            len(ids) - missing, len(ids))
        return None, "incomplete embeddings"
    x = emb[[where[i] for i in ids]]
    fit_rows = np.asarray(fit_rows, bool)
    keep = min(max_features, int(fit_rows.sum()))  # PCA has at most as many directions as rows (a small set: fewer)
    if x.shape[1] > keep:  # PCA keeps the directions along which the train rows differ most
        from sklearn.decomposition import PCA

        x = PCA(n_components=keep, svd_solver="randomized", random_state=seed).fit(x[fit_rows]).transform(x)
    # Not standardised: that would give the weakest PCA directions (mostly noise) the weight of the strongest.
    return np.asarray(x, np.float32), f"embeddings ({emb.shape[1]} -> {x.shape[1]} values)"


def payload_features(rows: _Rows, modality: str, *, fit_rows: np.ndarray) -> tuple:
    """The auditor's feature matrix from pass 1's reduced batches (row k belongs to rows.ids[k]).
    What is fitted (TF-IDF's IDF, the standardisation) is fitted on the ``fit_rows`` (the train rows)
    and applied to all: a val/test row is predicted, never learnt from, payload included."""
    fit_rows = np.asarray(fit_rows, bool)
    if modality == "text":
        import scipy.sparse as sp
        from sklearn.feature_extraction.text import TfidfTransformer

        counts = sp.vstack(rows.features).tocsr()  # hashed: no vocabulary to fit, only the IDF
        return TfidfTransformer().fit(counts[fit_rows]).transform(counts), "tfidf (hashed words, sparse)"
    x = np.concatenate(rows.features)
    rows.features = []
    if modality != "image":
        x = standardise(x, fit_rows=fit_rows)
    return x, f"{modality} ({x.shape[1]} values)"


def audit_dataset(batches: Iterable[pa.RecordBatch], rewind, writer: DatasetWriter, *, modality: str,
                  classes: list[str], image_shape: list[int] | None, options: LabelIssueOptions | None,
                  noise: NoiseOptions, embeddings: tuple[list[str], np.ndarray] | None, use_ray: bool,
                  log=lambda *a: None, rewind_rows=None) -> dict:
    """Audit a split dataset into ``writer``.

    ``batches``: the split dataset's record batches (pass 1); ``rewind()``: the same batches again
    (pass 2, streamed to the writer); ``rewind_rows()``, if given: the same rows with only ``id``
    and ``label``, for that last pass when the writer keeps only the audit's own columns (an
    extension of the split: the payload is not read a third time). ``options`` None: no label-issue search (every
    ``label_issue`` false). Returns ``rows_in``, ``set_aside``, ``extra`` (manifest keys),
    ``metrics`` (``audit/...``), ``suspects`` (the ranked table, with each row's split),
    ``decision`` (one sentence: what the audit did and why).
    """
    n_classes = len(classes)
    li = options
    rows = _pass1(batches, modality, shape=image_shape, max_features=li.max_features if li else 0,
                  seed=li.seed if li else 0, want_features=li is not None and embeddings is None)
    n = len(rows.ids)
    true_labels = np.array(rows.labels, dtype=np.int64)
    splits = np.array(rows.splits, dtype=object)
    train = splits == "train"
    extra: dict = {}
    metrics: dict = {"audit/rows_in": n}

    labels = true_labels
    if noise.rate > 0:
        labels = inject_symmetric_noise(rows.ids, true_labels, eligible=train, rate=noise.rate,
                                        n_classes=n_classes, seed=noise.seed)
        flipped = int((labels != true_labels).sum())
        extra["noise"] = {"rate": noise.rate, "seed": noise.seed, "flipped": flipped}
        metrics["audit/noise/flipped"] = flipped

    decisions, suspects, decision = None, [], "label-issue search off (clean.label_issues.enabled: false)"
    metrics["audit/label_issues/acted"] = 0
    if li is not None:
        try:
            # the folds are cut over the train rows, and the features are fitted on them: too few is
            # a reason to skip, found before anything is fitted
            fold_indices(labels[train], folds=li.folds, seed=li.seed)
            x = None
            if embeddings is not None:
                x, described = embedding_features(rows.ids, embeddings, fit_rows=train,
                                                  max_features=li.max_features, seed=li.seed, log=log)
            if x is None:
                if not rows.features:  # embeddings were expected: read the payloads after all
                    rows = _pass1(rewind(), modality, shape=image_shape, max_features=li.max_features, seed=li.seed,
                                  want_features=True)
                x, described = payload_features(rows, modality, fit_rows=train)
            proba, oof_s = oof_probabilities(x, labels, n_classes=n_classes, model=li.model, folds=li.folds,
                                             workers=li.workers, seed=li.seed, use_ray=use_ray, fit_rows=train,
                                             max_fit_rows=li.max_fit_rows)
        except TooFewRows as err:
            decision = str(err)
            extra["label_issues"] = {"skipped": decision, "acted": 0}
            metrics["audit/label_issues/acted"] = 0
        else:
            del x
            decisions = decide(labels, proba, train=train, policy=li.policy, max_fraction=li.max_fraction,
                               min_lift=li.min_lift, min_excess=li.min_excess, min_precision=li.min_precision)
            suspects = suspects_table(decisions, ids=rows.ids, sources=rows.sources, labels=labels, splits=splits,
                                      classes=classes, top=li.top_suspects)
            j = decisions.judgement
            counts = decisions.counts()
            per_split = {f"found_{s}": int((splits[decisions.found] == s).sum()) for s in ("train", "val", "test")}
            if li.policy == "flag":
                decision = f"policy flag: {counts['found']} suspects flagged, no label changed ({j.reason})"
            elif decisions.applied and counts["touched"]:
                decision = (f"{counts['touched']} train rows {'dropped' if li.policy == 'drop' else 'relabelled'}"
                            f" ({counts['over_cap']} more over the cap); {j.reason}")
            elif decisions.applied:
                decision = (f"no train row changed: {counts['found']} suspects flagged "
                            f"({len(decisions.found_train)} in train; max_fraction {li.max_fraction:g} allows "
                            f"{int(li.max_fraction * int(train.sum()))} rows); {j.reason}")
            else:
                decision = j.reason
            extra["label_issues"] = {"policy": li.policy, "model": li.model, "folds": li.folds,
                                     "features": described, "max_fraction": li.max_fraction, "ray": int(use_ray),
                                     **counts, **per_split, **j.metrics(), "decision": decision}
            metrics.update({f"audit/label_issues/{k}": v for k, v in {**counts, **per_split, **j.metrics()}.items()})
            metrics["audit/label_issues/oof_s"] = round(oof_s, 3)
            metrics["audit/label_issues/ray"] = int(use_ray)
            if noise.rate > 0:  # scored on train rows: the only rows noise goes into
                found = np.zeros(n, bool)
                found[decisions.found] = True
                metrics.update({f"audit/label_issues/{k}": v for k, v in
                                detection_scores(found[train], (labels != true_labels)[train]).items()})

    # -- apply, streaming the rows again ----------------------------------------------------------
    final = labels.copy()
    issue = np.zeros(n, bool)
    dropped: set[int] = set()
    aside = SetAside()
    if decisions is not None:
        issue[decisions.found] = True
        if decisions.applied and li.policy == "relabel":
            final[decisions.acted] = decisions.predicted[decisions.acted]
        elif decisions.applied and li.policy == "drop":
            dropped = set(decisions.acted.tolist())
            for k in sorted(dropped):
                aside.add(rows.ids[k], rows.sources[k], LABEL_ISSUE, split="train", given_label=int(labels[k]),
                          predicted_label=int(decisions.predicted[k]),
                          confidence=round(float(decisions.confidence[k]), 4))
    start = 0
    for batch in (rewind_rows or rewind)():
        table = pa.Table.from_batches([batch])
        k = np.arange(start, start + len(table))
        start += len(table)
        keep = np.array([i not in dropped for i in k.tolist()], bool)
        table, k = table.filter(pa.array(keep)), k[keep]
        if not len(k):
            continue
        table = table.set_column(table.schema.get_field_index("label"), "label", pa.array(final[k], pa.int64()))
        table = table.append_column("given_label", pa.array(labels[k], pa.int64()))
        table = table.append_column("label_issue", pa.array(issue[k], pa.bool_()))
        if noise.rate > 0:
            table = table.append_column("true_label", pa.array(true_labels[k], pa.int64()))
        writer.write(table)
    if start != n:
        raise RuntimeError(f"the split dataset changed while it was audited ({n} rows, then {start})")
    out_splits = splits[[k for k in range(n) if k not in dropped]] if dropped else splits
    out_labels = final[[k for k in range(n) if k not in dropped]] if dropped else final
    extra["split_class_counts"] = {s: {classes[c]: int(((out_splits == s) & (out_labels == c)).sum())
                                       for c in range(n_classes)}
                                   for s in ("train", "val", "test") if (splits == s).any()}
    metrics.update({"audit/rows": n - len(dropped), "audit/set_aside": len(dropped)})
    return {"rows_in": n, "set_aside": aside, "extra": extra, "metrics": metrics, "suspects": suspects,
            "decision": decision}
