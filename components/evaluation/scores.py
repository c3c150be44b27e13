"""Scores with one definition everywhere (the network's, the baselines', the registry gate's).

Kept free of torch so that the baseline stage can import it without importing the network's side.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import f1_score


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, *, n_classes: int) -> float:
    """Macro F1 over **every** class of the dataset (``labels=range(n_classes)``), an absent class
    scoring 0: sklearn's default averages over the classes that occur in ``y_true`` or ``y_pred``
    only, so a model that never predicts a class missing from a small test split looked better than
    one scored over all classes, and the baselines and the network were not compared on one scale."""
    return float(f1_score(y_true, y_pred, average="macro", labels=list(range(n_classes)), zero_division=0))
