"""Likely label errors by confident learning, the auditor's own judgement, and the policy.

1. Out-of-fold predicted probabilities from a fast classical model (the *auditor*), trained
   k-fold on the **train rows only**: every train row is predicted by a model that never saw its
   (possibly wrong) label; val and test rows are predicted by every fold model (averaged) and
   never inform any model, so no val/test label can reach training through the audit.
   Below ``ray_min_rows`` rows the folds run one after another in this process (a few seconds;
   starting Ray costs 10-25 s on a laptop); from there on each fold is a Ray task (1 CPU), at
   most ``workers`` at once, and the features go to the object store once.
2. cleanlab's ``find_label_issues`` on those probabilities (``prune_by_noise_rate``: estimate
   the noise matrix, then remove that many off-diagonal rows, least self-confident first), twice:
   over the train rows with their labels (the suspects the policy may act on), and separately over
   the val/test rows (suspects only flagged). Its thresholds and noise matrix come from the labels
   it is given, so no val/test label moves a train decision. The auditor's feature transforms
   (standardisation, TF-IDF's IDF, the PCA of embeddings) are fitted on train rows too
   (components/quality/audit.py).
3. The auditor is judged before it may act (:func:`judge_auditor`): is it clearly better than
   predicting the majority class, are its suspects clearly more than its own error rate explains,
   and do its own probabilities expect them to be mislabelled?
4. The policy, on **train rows only**: ``drop`` (set aside), ``relabel`` (to the out-of-fold
   prediction; the given label stays in ``given_label``) or ``flag`` (nothing changes), touching
   at most ``max_fraction`` of the train rows, the least self-confident first. Suspects in val and
   test are only ever flagged: test/acc is measured against the labels the user gave.

Model choice, measured on digits with 10-30% symmetric noise in the train portion (5 folds,
label-issue F1 against the known flips): SVC (RBF, probabilities by Platt scaling) 0.92 /
0.96 / 0.96, k-NN(10) 0.92 / 0.94 / 0.93, logistic regression 0.88 / 0.93 / 0.94, each fold
under 2 s. ``svc`` is the default (params.yaml).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

MODELS = ("svc", "logistic_regression", "knn")
POLICIES = ("drop", "flag", "relabel")
ACTION = {"drop": "dropped", "flag": "flagged", "relabel": "relabeled"}


@dataclass(frozen=True, kw_only=True)
class LabelIssueOptions:
    """What the audit does; every value comes from ``clean.label_issues`` in params.yaml (the one
    place for defaults, see pipelines/config.py: LabelIssueParams)."""

    policy: str
    max_fraction: float
    model: str
    folds: int
    workers: int
    top_suspects: int
    seed: int
    min_lift: float
    min_excess: float
    min_precision: float
    ray_min_rows: int
    max_features: int
    max_fit_rows: int

    def __post_init__(self):
        if self.policy not in POLICIES:
            raise ValueError(f"label-issue policy {self.policy!r}: choose from {POLICIES}")
        if self.folds < 2:
            raise ValueError(f"label-issue folds must be >= 2, got {self.folds}")
        if not 0 <= self.max_fraction <= 1:
            raise ValueError(f"label-issue max_fraction must be in [0, 1], got {self.max_fraction}")
        if self.workers < 1:
            raise ValueError(f"label-issue workers must be >= 1, got {self.workers}")
        if self.min_excess < 0:
            raise ValueError(f"label-issue min_excess must be >= 0, got {self.min_excess}")
        if not 0 <= self.min_lift <= 1 or not 0 <= self.min_precision <= 1:
            raise ValueError(f"label-issue min_lift / min_precision must be in [0, 1], got "
                             f"{self.min_lift} / {self.min_precision}")
        if self.max_features < 2:
            raise ValueError(f"label-issue max_features must be >= 2, got {self.max_features}")


def make_model(name: str, *, seed: int):
    """A fresh, unfitted classifier with ``predict_proba``; features are assumed scaled."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.svm import SVC

    if name == "svc":
        # scikit-learn 1.9 deprecates SVC(probability=True) for exactly this: Platt scaling
        # fitted on internal CV folds, then one SVC refitted on all the data.
        return CalibratedClassifierCV(SVC(random_state=seed), ensemble=False, cv=3)
    if name == "logistic_regression":
        return LogisticRegression(max_iter=1000, random_state=seed)
    if name == "knn":
        return KNeighborsClassifier(n_neighbors=10)
    raise ValueError(f"unknown model {name!r}: choose from {MODELS}")


def fit_predict_fold(x, y, fit_idx, predict_idx, *, model: str, n_classes: int, seed: int) -> np.ndarray:
    """Fit on ``fit_idx``; class probabilities (all ``n_classes`` columns) of the ``predict_idx`` rows."""
    clf = make_model(model, seed=seed).fit(x[fit_idx], y[fit_idx])
    proba = clf.predict_proba(x[predict_idx])
    out = np.zeros((len(predict_idx), n_classes), dtype=np.float64)
    out[:, clf.classes_] = proba  # a class missing from this fold's training rows gets 0
    return out


class TooFewRows(ValueError):
    """Too few rows (per class) to cross-validate; label-issue search is skipped, with this reason."""


def fold_indices(y: np.ndarray, *, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    from sklearn.model_selection import StratifiedKFold

    counts = np.bincount(y) if len(y) else np.zeros(1, dtype=np.int64)
    present = counts[counts > 0]
    k = min(folds, int(present.min())) if len(present) else 0
    if k < 2 or len(present) < 2:
        raise TooFewRows(f"label-issue search skipped: needs 2+ classes with 2+ train rows each, "
                         f"got class counts {counts.tolist()}")
    return list(StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(np.zeros(len(y)), y))


def fit_sample(fit_idx: np.ndarray, y: np.ndarray, *, max_rows: int, seed: int) -> np.ndarray:
    """At most ``max_rows`` of the rows ``fit_idx``, stratified by ``y`` (each class keeps its share, and at
    least one row), drawn with ``seed``, in their original order; all of them when they are few enough."""
    if len(fit_idx) <= max_rows:
        return fit_idx
    from sklearn.model_selection import train_test_split

    try:
        kept, _ = train_test_split(fit_idx, train_size=max_rows, stratify=y[fit_idx], random_state=seed)
    except ValueError:   # a class with a single row cannot be stratified: a plain sample
        kept = np.random.default_rng(seed).choice(fit_idx, size=max_rows, replace=False)
    return np.sort(kept)


def oof_probabilities(x, y: np.ndarray, *, n_classes: int, model: str, folds: int, workers: int, seed: int,
                      use_ray: bool, fit_rows: np.ndarray | None = None,
                      max_fit_rows: int | None = None) -> tuple[np.ndarray, float]:
    """Held-out predicted probabilities (N, n_classes) of every row, and the wall seconds they took.

    Folds are cut over ``fit_rows`` (a bool mask; all rows when None): each of those rows is
    predicted by the one fold model that did not see it; every other row by the mean of the
    fold models (none of which saw it). ``use_ray``: each fold a Ray task (Ray must already be
    initialised, ``trainwise.components.ray_start.init_ray``), at most ``workers`` at once; otherwise the
    folds run one after another here, without importing Ray. Both give the same numbers.
    ``max_fit_rows``: each fold model is fitted on at most this many of its training rows
    (:func:`fit_sample`), so the fits cost the same at any size and only predicting grows with the rows.
    """
    y = np.asarray(y, dtype=np.int64)
    fit_rows = np.ones(len(y), bool) if fit_rows is None else np.asarray(fit_rows, bool)
    t0 = time.perf_counter()
    pool, others = np.flatnonzero(fit_rows), np.flatnonzero(~fit_rows)
    jobs = [(pool[tr], np.concatenate([pool[te], others]))
            for tr, te in fold_indices(y[pool], folds=folds, seed=seed)]
    if max_fit_rows is not None:
        jobs = [(fit_sample(fit_idx, y, max_rows=max_fit_rows, seed=seed + k), predict_idx)
                for k, (fit_idx, predict_idx) in enumerate(jobs)]
    proba = np.zeros((len(y), n_classes), dtype=np.float64)

    def collect(result: np.ndarray, predicted: np.ndarray) -> None:
        n_held = len(predicted) - len(others)
        proba[predicted[:n_held]] = result[:n_held]
        proba[others] += result[n_held:] / len(jobs)

    kw = dict(model=model, n_classes=n_classes, seed=seed)
    if not use_ray:
        from threadpoolctl import threadpool_limits

        # One BLAS/OpenMP thread per fold, as a Ray task gets (OMP_NUM_THREADS=1): with the
        # default (one per core) the 5 folds on digits took 3-4x longer on a busy 2-core machine
        # (6.5 s vs 1.9 s, measured), the threads spinning against each other and other work.
        with threadpool_limits(limits=1):
            for fit_idx, predict_idx in jobs:
                collect(fit_predict_fold(x, y, fit_idx, predict_idx, **kw), predict_idx)
        return proba, time.perf_counter() - t0

    import ray

    task = ray.remote(num_cpus=1)(fit_predict_fold)
    x_ref, y_ref = ray.put(x), ray.put(y)
    pending: dict = {}
    queue = list(jobs)
    while queue or pending:
        while queue and len(pending) < workers:
            fit_idx, predict_idx = queue.pop(0)
            pending[task.remote(x_ref, y_ref, fit_idx, predict_idx, **kw)] = predict_idx
        done, _ = ray.wait(list(pending), num_returns=1)
        for ref in done:
            collect(ray.get(ref), pending.pop(ref))
    return proba, time.perf_counter() - t0


def rank_label_issues(labels: np.ndarray, proba: np.ndarray) -> np.ndarray:
    """Indices of likely label errors, least self-confident first (cleanlab)."""
    from cleanlab.filter import find_label_issues

    labels = np.asarray(labels, dtype=np.int64)
    present = np.unique(labels)
    if len(present) < 2:
        return np.empty(0, dtype=np.int64)
    # cleanlab wants every class in `labels` to be a column with rows; drop absent classes.
    cols = present
    remap = {int(c): i for i, c in enumerate(cols)}
    p = proba[:, cols]
    p = p / np.clip(p.sum(1, keepdims=True), 1e-12, None)
    lab = np.array([remap[int(v)] for v in labels], dtype=np.int64)
    return np.asarray(find_label_issues(lab, p, filter_by="prune_by_noise_rate",
                                        return_indices_ranked_by="self_confidence"), dtype=np.int64)


def wilson_lower(successes: int, n: int, *, z: float = 1.96) -> float:
    """Lower end of the Wilson score interval (95% by default) of a binomial proportion."""
    if n == 0:
        return 0.0
    p = successes / n
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, (centre - spread) / (1 + z * z / n))


def poisson_upper(count: int, *, z: float = 1.96) -> float:
    """Upper end of the exact (Garwood) interval of a Poisson mean, at the confidence ``z`` gives
    two-sided (95% by default, the level :func:`wilson_lower` uses): one-sided 97.5%."""
    from scipy.stats import chi2, norm

    return float(chi2.ppf(1 - norm.sf(z), 2 * (count + 1)) / 2)


@dataclass(frozen=True)
class Judgement:
    """Whether the auditor may act, and why (one sentence for the terminal, manifest and report)."""

    trusted: bool
    reason: str
    oof_acc: float            # out-of-fold accuracy against the given train labels
    majority_rate: float      # accuracy of always predicting the most common train class
    lift: float               # (lower 95% bound of oof_acc - majority) / (1 - majority)
    own_error_rate: float     # its disagreement rate on the train rows it does not suspect
    explained: float          # suspects its own errors alone would give: own_error_rate x train rows
    expected_precision: float  # 1 - mean probability the auditor gives the suspects' given labels
    explained_high: float = 0.0  # upper 95% bound of ``explained`` (its errors are a count: few rows, wide)

    def metrics(self) -> dict[str, float]:
        return {"oof_acc": round(self.oof_acc, 4), "majority_rate": round(self.majority_rate, 4),
                "lift": round(self.lift, 4), "own_error_rate": round(self.own_error_rate, 4),
                "explained": round(self.explained, 1), "explained_high": round(self.explained_high, 1),
                "expected_precision": round(self.expected_precision, 4), "trusted": int(self.trusted)}


def judge_auditor(labels: np.ndarray, proba: np.ndarray, suspects: np.ndarray, *, min_lift: float,
                  min_excess: float, min_precision: float) -> Judgement:
    """Judge the auditor on the rows it was cross-validated on, before it may change any of them.

    - *Better than chance*: the lower 95% (Wilson) bound of its out-of-fold accuracy must close at
      least ``min_lift`` of the gap between the majority-class rate and 1. A 60%-accurate auditor
      on two balanced classes has lift <= 0.2; digits' SVC with 20% of labels flipped has ~0.75.
    - *Suspects it can explain*: the auditor's own probabilities say how likely each suspect's given
      label is right after all; their mean is the share of suspects its own errors explain, so
      ``1 - mean`` is the precision it can expect when acting. Below ``min_precision`` the
      suspects are more than its error rate lets it tell apart from its own mistakes.
    - *More suspects than its own errors explain*: on the train rows it does not suspect, the
      auditor still disagrees with some labels: its own error rate. At that rate its mistakes
      alone would give ``explained = rate x rows`` disagreements; the suspects must be at least
      ``min_excess`` times that. This is the check that catches a decent auditor that errs
      confidently: on 2,000 correctly labelled face photos (2 classes), a pixel SVC at 91% out of
      fold found 45 suspects, all correctly labelled on inspection, where its 5.5% error rate
      explains 76 (ratio 0.6); digits with 10-30% of labels flipped give ratios of 3.2-7.8
      (2.6-5.3 to the bound below; benchmarks/label_noise.py).
      Its errors are a count, and a strong auditor makes few: ``explained`` is then taken at the
      upper end of its 95% interval (Poisson, like the Wilson bound of the first check). On
      sklearn's digits as shipped (no flips), the SVC disagrees with 6 of the 1,268 train labels
      it does not suspect and finds 13 suspects: 2.1x the point estimate (6.1), but the 6 could as well
      be 13, and the suspects include plainly correct labels (a clear 6 read as a 5, a clear 9 as
      an 8): only flagged. With thousands of rows the bound is the point estimate.
    """
    labels = np.asarray(labels, dtype=np.int64)
    n = len(labels)
    correct = int((proba.argmax(1) == labels).sum())
    acc = correct / n if n else 0.0
    majority = float(np.bincount(labels).max() / n) if n else 1.0
    lift = (wilson_lower(correct, n) - majority) / (1 - majority) if majority < 1 else 0.0
    given_prob = proba[suspects, labels[suspects]] if len(suspects) else np.zeros(0)
    precision = float(1 - given_prob.mean()) if len(suspects) else 1.0
    accepted = np.ones(n, bool)
    accepted[suspects] = False
    own_errors, kept = int((proba.argmax(1) != labels)[accepted].sum()), int(accepted.sum())
    own = own_errors / kept if kept else 0.0
    explained = own * n
    explained_high = poisson_upper(own_errors) / kept * n if kept else float(n)
    args = (acc, majority, lift, own, explained, precision, explained_high)
    if lift < min_lift:
        reason = (f"auditor not clearly better than chance: out-of-fold accuracy {acc:.3f} vs majority-class "
                  f"rate {majority:.3f} (lift {lift:.2f} < min_lift {min_lift:g}); suspects only flagged")
        return Judgement(False, reason, *args)
    if len(suspects) and len(suspects) < min_excess * explained_high:
        reason = (f"suspects no more than the auditor's own errors explain: it disagrees with {own:.1%} of the "
                  f"train labels it does not suspect ({own_errors} of {kept}), which alone gives ~{explained:.0f} "
                  f"of {n} rows, up to {explained_high:.0f} (95% bound); it found {len(suspects)} (< min_excess "
                  f"{min_excess:g} x {explained_high:.0f}); suspects only flagged")
        return Judgement(False, reason, *args)
    if precision < min_precision:
        reason = (f"suspects implausibly many for this auditor: its own probabilities expect "
                  f"{1 - precision:.0%} of the {len(suspects)} suspects to carry the right label (expected "
                  f"precision {precision:.2f} < min_precision {min_precision:g}); suspects only flagged")
        return Judgement(False, reason, *args)
    reason = (f"auditor trusted: out-of-fold accuracy {acc:.3f} vs majority {majority:.3f} (lift {lift:.2f}); "
              f"{len(suspects)} train suspects vs ~{explained:.0f} (at most {explained_high:.0f}) its own "
              f"{own:.1%} error rate explains; its own estimate of their precision {precision:.2f}")
    return Judgement(True, reason, *args)


@dataclass
class LabelDecisions:
    """What the policy does to each row (indices into the rows given to :func:`decide`)."""

    policy: str
    found_train: np.ndarray    # likely issues among train rows, ranked by train labels alone
    found_heldout: np.ndarray  # likely issues among val/test rows, ranked in their own pass (only flagged)
    acted: np.ndarray          # train suspects changed (dropped / relabelled): the ranked prefix the cap allows
    over_cap: int              # train suspects the cap kept the policy from changing
    predicted: np.ndarray      # held-out argmax per row
    confidence: np.ndarray     # held-out probability of that prediction per row
    given_prob: np.ndarray     # held-out probability of the given label per row
    judgement: Judgement | None

    @property
    def found(self) -> np.ndarray:
        """Every likely issue (train, val and test), least self-confident first."""
        both = np.concatenate([self.found_train, self.found_heldout]).astype(np.int64)
        return both[np.argsort(self.given_prob[both], kind="stable")]

    @property
    def applied(self) -> bool:
        """True when the policy may change train rows (drop / relabel, by a trusted auditor)."""
        return self.policy != "flag" and self.judgement is not None and self.judgement.trusted

    def counts(self) -> dict[str, int]:
        """``acted`` is 1 only when train rows were changed; ``touched`` says how many."""
        found = len(self.found_train) + len(self.found_heldout)
        n = {"found": found, "flagged": found, "acted": int(len(self.acted) > 0),
             "touched": len(self.acted), "over_cap": self.over_cap}
        if self.policy != "flag":
            n[ACTION[self.policy]] = len(self.acted)
        return n


def _rank_within(rows: np.ndarray, labels: np.ndarray, proba: np.ndarray) -> np.ndarray:
    """:func:`rank_label_issues` over ``rows`` only (their labels, their probabilities), as indices of all rows."""
    if len(rows) == 0:
        return np.empty(0, dtype=np.int64)
    return rows[rank_label_issues(labels[rows], proba[rows])]


def decide(labels: np.ndarray, proba: np.ndarray, *, train: np.ndarray, policy: str, max_fraction: float,
           min_lift: float, min_excess: float, min_precision: float) -> LabelDecisions:
    """Rank train suspects with train labels only; judge the auditor on the train rows; act on train rows
    only. Val/test suspects come from a second, separate pass over the val/test rows: cleanlab's per-class
    thresholds and noise matrix are estimated from the labels it is given, so one pass over every row
    would let val/test labels move which train rows are suspects (issue 27: 30% of val/test labels
    flipped turned 13 untrusted train suspects into 18 trusted, dropped ones)."""
    labels = np.asarray(labels, dtype=np.int64)
    train = np.asarray(train, bool)
    tr_idx, held_idx = np.flatnonzero(train), np.flatnonzero(~train)
    found_train = _rank_within(tr_idx, labels, proba)
    found_heldout = _rank_within(held_idx, labels, proba)
    pos = np.full(len(labels), -1)
    pos[tr_idx] = np.arange(len(tr_idx))
    judgement = judge_auditor(labels[tr_idx], proba[tr_idx], pos[found_train], min_lift=min_lift,
                              min_excess=min_excess, min_precision=min_precision)
    cap = int(np.floor(max_fraction * len(tr_idx)))
    may_act = policy != "flag" and judgement.trusted
    acted = found_train[:cap] if may_act else np.empty(0, dtype=np.int64)
    predicted = proba.argmax(1)
    rows = np.arange(len(labels))
    return LabelDecisions(policy=policy, found_train=found_train, found_heldout=found_heldout, acted=acted,
                          over_cap=max(0, len(found_train) - cap) if may_act else 0, predicted=predicted,
                          confidence=proba[rows, predicted], given_prob=proba[rows, labels], judgement=judgement)


def suspects_table(decisions: LabelDecisions, *, ids, sources, labels, splits, classes: list[str],
                   top: int) -> list[dict]:
    """The ``top`` train suspects, then every val/test suspect (nothing acts on those: a person has to
    look), each group least self-confident first; ``rank`` is the row's rank in its own pass (train, or
    val/test), so val/test suspects never take a train row's place in the ``top``. Columns: split,
    given vs predicted label, confidence, what happened to the row."""
    acted = set(decisions.acted.tolist())
    rows = []
    listed = [(rank, k) for rank, k in enumerate(decisions.found_train[:top], 1)]
    listed += [(rank, k) for rank, k in enumerate(decisions.found_heldout, 1)]
    for rank, k in listed:
        g, p = int(labels[k]), int(decisions.predicted[k])
        if k in acted:
            action = ACTION[decisions.policy]
        elif splits[k] != "train":
            action = f"flagged ({splits[k]} rows are never changed)"
        elif decisions.policy == "flag":
            action = "flagged"
        elif not decisions.applied:
            action = "flagged (auditor not trusted)"
        else:
            action = "flagged (over cap)"
        rows.append({"rank": rank, "id": ids[k], "split": splits[k], "source": sources[k], "given_label": classes[g],
                     "predicted_label": classes[p], "confidence": round(float(decisions.confidence[k]), 4),
                     "given_label_prob": round(float(decisions.given_prob[k]), 4), "action": action})
    return rows


def detection_scores(flagged: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Precision / recall / F1 of flagged rows (bool mask) against the known flips (bool mask)."""
    flagged, truth = np.asarray(flagged, bool), np.asarray(truth, bool)
    tp = int((flagged & truth).sum())
    precision = tp / flagged.sum() if flagged.sum() else (1.0 if not truth.any() else 0.0)
    recall = tp / truth.sum() if truth.sum() else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": float(precision), "recall": float(recall), "f1": float(f1)}
