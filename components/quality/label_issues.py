"""Likely label errors by confident learning, and what to do about them.

1. Out-of-fold predicted probabilities: k-fold training of a fast classical model, one Ray task
   per fold, at most ``workers`` folds at once. Every row is predicted by a model that never
   saw its (possibly wrong) label.
2. cleanlab's ``find_label_issues`` on those probabilities (``prune_by_noise_rate``: estimate
   the noise matrix, then remove that many off-diagonal rows, least self-confident first).
3. A policy: ``drop`` (set aside), ``flag`` (kept, ``label_issue`` column true) or ``relabel``
   (to the out-of-fold prediction; the given label kept in ``given_label``), touching at most
   ``max_fraction`` of the rows, the least self-confident first.

Model choice, measured on digits with 10-30% symmetric noise in the train portion (5 folds,
label-issue F1 against the known flips): SVC (RBF, probabilities by Platt scaling) 0.92 /
0.96 / 0.96, k-NN(10) 0.92 / 0.94 / 0.93, logistic regression 0.88 / 0.93 / 0.94, each fold
under 2 s. ``svc`` is the default.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

MODELS = ("svc", "logistic_regression", "knn")
POLICIES = ("drop", "flag", "relabel")


@dataclass(frozen=True)
class LabelIssueOptions:
    policy: str = "drop"
    max_fraction: float = 0.3
    model: str = "svc"
    folds: int = 5
    workers: int = 2
    top_suspects: int = 50
    seed: int = 0

    def __post_init__(self):
        if self.policy not in POLICIES:
            raise ValueError(f"label-issue policy {self.policy!r}: choose from {POLICIES}")
        if self.model not in MODELS:
            raise ValueError(f"label-issue model {self.model!r}: choose from {MODELS}")
        if self.folds < 2:
            raise ValueError(f"label-issue folds must be >= 2, got {self.folds}")
        if not 0 <= self.max_fraction <= 1:
            raise ValueError(f"label-issue max_fraction must be in [0, 1], got {self.max_fraction}")
        if self.workers < 1:
            raise ValueError(f"label-issue workers must be >= 1, got {self.workers}")


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


def fit_predict_fold(x, y, train_idx, test_idx, *, model: str, n_classes: int, seed: int) -> np.ndarray:
    """Fit on one fold's training rows; class probabilities (all ``n_classes``) of its held-out rows."""
    clf = make_model(model, seed=seed).fit(x[train_idx], y[train_idx])
    proba = clf.predict_proba(x[test_idx])
    out = np.zeros((len(test_idx), n_classes), dtype=np.float64)
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
        raise TooFewRows(f"label-issue search skipped: needs 2+ classes with 2+ rows each, "
                         f"got class counts {counts.tolist()}")
    return list(StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(np.zeros(len(y)), y))


def oof_probabilities(x, y: np.ndarray, *, n_classes: int, model: str = "svc", folds: int = 5,
                      workers: int = 2, seed: int = 0) -> tuple[np.ndarray, float]:
    """Out-of-fold predicted probabilities (N, n_classes) and the wall seconds they took.

    Each fold is a Ray task (1 CPU); at most ``workers`` run at once. Ray must already be
    initialised (``components.runtime.init_ray``); ``x`` goes to the object store once.
    """
    import ray

    y = np.asarray(y, dtype=np.int64)
    t0 = time.perf_counter()
    splits = fold_indices(y, folds=folds, seed=seed)
    task = ray.remote(num_cpus=1)(fit_predict_fold)
    x_ref, y_ref = ray.put(x), ray.put(y)
    proba = np.zeros((len(y), n_classes), dtype=np.float64)
    pending: dict = {}
    queue = list(enumerate(splits))
    while queue or pending:
        while queue and len(pending) < workers:
            k, (tr, te) = queue.pop(0)
            pending[task.remote(x_ref, y_ref, tr, te, model=model, n_classes=n_classes, seed=seed)] = te
        done, _ = ray.wait(list(pending), num_returns=1)
        for ref in done:
            proba[pending.pop(ref)] = ray.get(ref)
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


@dataclass
class LabelDecisions:
    """What the policy does to each row (indices into the rows given to :func:`decide`)."""

    policy: str
    found: np.ndarray          # every likely issue, ranked
    acted: np.ndarray          # the ranked prefix the cap allows
    predicted: np.ndarray      # out-of-fold argmax per row
    confidence: np.ndarray     # out-of-fold probability of that prediction per row
    given_prob: np.ndarray     # out-of-fold probability of the given label per row

    @property
    def capped(self) -> int:
        return len(self.found) - len(self.acted)

    def counts(self) -> dict[str, int]:
        action = {"drop": "dropped", "flag": "flagged", "relabel": "relabeled"}[self.policy]
        # `touched` is the same number under one name for every policy (for metric diffs)
        return {"found": len(self.found), action: len(self.acted), "touched": len(self.acted),
                "over_cap": self.capped}


def decide(labels: np.ndarray, proba: np.ndarray, *, policy: str, max_fraction: float) -> LabelDecisions:
    found = rank_label_issues(labels, proba)
    cap = int(np.floor(max_fraction * len(labels)))
    predicted = proba.argmax(1)
    rows = np.arange(len(labels))
    return LabelDecisions(policy=policy, found=found, acted=found[:cap], predicted=predicted,
                          confidence=proba[rows, predicted], given_prob=proba[rows, labels])


def suspects_table(decisions: LabelDecisions, *, ids, sources, labels, classes: list[str], top: int) -> list[dict]:
    """The top suspects, least self-confident first: given vs predicted label and confidence."""
    acted = set(decisions.acted.tolist())
    action = {"drop": "dropped", "flag": "flagged", "relabel": "relabeled"}[decisions.policy]
    rows = []
    for rank, k in enumerate(decisions.found[:top], 1):
        g, p = int(labels[k]), int(decisions.predicted[k])
        rows.append({"rank": rank, "id": ids[k], "source": sources[k], "given_label": classes[g],
                     "predicted_label": classes[p], "confidence": round(float(decisions.confidence[k]), 4),
                     "given_label_prob": round(float(decisions.given_prob[k]), 4),
                     "action": action if k in acted else "none (over cap)"})
    return rows


def detection_scores(flagged: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Precision / recall / F1 of flagged rows (bool mask) against the known flips (bool mask)."""
    flagged, truth = np.asarray(flagged, bool), np.asarray(truth, bool)
    tp = int((flagged & truth).sum())
    precision = tp / flagged.sum() if flagged.sum() else (1.0 if not truth.any() else 0.0)
    recall = tp / truth.sum() if truth.sum() else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": float(precision), "recall": float(recall), "f1": float(f1)}
