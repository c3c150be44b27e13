"""Classical baselines trained on the same split as the network (scikit-learn)."""

from __future__ import annotations

import time

import numpy as np
from sklearn.dummy import DummyClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.tree import DecisionTreeClassifier


def make_baseline(name: str, *, seed: int):
    if name == "majority":
        return DummyClassifier(strategy="most_frequent")
    if name == "logistic_regression":
        return make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed))
    if name == "decision_tree":
        return DecisionTreeClassifier(random_state=seed)
    raise ValueError(f"unknown baseline {name!r}; choose from majority, logistic_regression, decision_tree")


def fit_baselines(x_train: np.ndarray, y_train: np.ndarray, evals: dict[str, tuple[np.ndarray, np.ndarray]],
                  *, models: list[str], seed: int) -> dict[str, dict[str, float]]:
    """Fit each model on the train split; score it on every split in ``evals``.

    Returns ``{model: {"val/acc": ..., "test/acc": ..., "test/f1_macro": ..., "fit_s": ...}}``.
    """
    results = {}
    for name in models:
        model = make_baseline(name, seed=seed)
        t0 = time.perf_counter()
        model.fit(x_train, y_train)
        scores = {"fit_s": time.perf_counter() - t0}
        for split, (x, y) in evals.items():
            pred = model.predict(x)
            scores[f"{split}/acc"] = float(accuracy_score(y, pred))
            scores[f"{split}/f1_macro"] = float(f1_score(y, pred, average="macro"))
        results[name] = scores
    return results
