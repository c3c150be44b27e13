"""Classical baselines trained on the same split as the network (scikit-learn).

Models take arrays and do no I/O: the baseline stage reads the split and turns it into inputs
(``pipelines/baseline.py``). Inputs by modality: images are pixels scaled to [0, 1], block-averaged
down to at most ``max_pixels`` values (``image_features``) so a 224x224 RGB image does not become a
150k-wide table; text goes through TF-IDF fitted on the train split only (it is the first step of each
model's pipeline); sequences and tabular features are used raw.
"""

from __future__ import annotations

import time

import numpy as np
from threadpoolctl import threadpool_limits
from sklearn.dummy import DummyClassifier
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer
from sklearn.tree import DecisionTreeClassifier

from trainwise.components.evaluation.scores import macro_f1
from trainwise.components.models.linear_probe import make_linear_probe

BASELINES = ("majority", "logistic_regression", "decision_tree", "gradient_boosting")


def downsample_images(images: np.ndarray, *, max_pixels: int) -> np.ndarray:
    """(N, H, W, C) -> (N, H/f, W/f, C) by averaging f x f blocks, the smallest f with at most
    ``max_pixels`` values per image (f = 1: unchanged). Edge rows/columns that do not fill a block
    are cropped."""
    if max_pixels <= 0:
        raise ValueError(f"max_pixels must be > 0, got {max_pixels}")
    n, h, w, c = images.shape
    f = 1
    while (h // f) * (w // f) * c > max_pixels and f < min(h, w):
        f += 1
    if f == 1:
        return images
    hh, ww = h // f, w // f
    blocks = images[:, :hh * f, :ww * f, :].reshape(n, hh, f, ww, f, c)
    return blocks.mean(axis=(2, 4))


def image_features(images: np.ndarray, *, max_pixels: int) -> np.ndarray:
    """(N, H, W, C) uint8 pixels -> (N, <= max_pixels) float32 rows in [0, 1], block-averaged."""
    x = downsample_images(np.asarray(images, dtype=np.float32) / 255.0, max_pixels=max_pixels)
    return x.reshape(len(x), -1)


def _dense(x):
    return x.toarray() if hasattr(x, "toarray") else x


def make_baseline(name: str, *, seed: int, text: bool = False, tfidf_max_features: int = 5000,
                  early_stopping: bool = True):
    """An unfitted scikit-learn estimator; for text, TF-IDF is its first step (fitted on train only).
    ``early_stopping`` (gradient boosting) needs two train rows of every class present."""
    if name == "majority":
        model = DummyClassifier(strategy="most_frequent")
    elif name == "logistic_regression":
        # TF-IDF rows are already normalised and sparse; scaling them would densify for nothing.
        model = LogisticRegression(max_iter=2000, random_state=seed) if text else make_linear_probe(seed=seed)
    elif name == "decision_tree":
        model = DecisionTreeClassifier(random_state=seed)
    elif name == "gradient_boosting":
        # Early stopping on an internal 10% of train: never looks at val or test.
        model = HistGradientBoostingClassifier(random_state=seed, early_stopping=early_stopping)
        if text:  # HistGradientBoosting needs dense input; tfidf_max_features bounds its width
            model = make_pipeline(FunctionTransformer(_dense, accept_sparse=True), model)
    else:
        raise ValueError(f"unknown baseline {name!r}; choose from {', '.join(BASELINES)}")
    if text:
        return make_pipeline(TfidfVectorizer(max_features=tfidf_max_features, sublinear_tf=True), model)
    return model


def fit_baselines(x_train, y_train: np.ndarray, evals: dict[str, tuple], *, models: list[str], seed: int,
                  n_classes: int, text: bool = False, tfidf_max_features: int = 5000, threads: int = 1,
                  ) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, np.ndarray]]]:
    """Fit each model on the train split; score it on every split in ``evals``; macro F1 over all
    ``n_classes`` classes (:func:`trainwise.components.evaluation.scores.macro_f1`, as the network's).

    Returns ``(scores, predictions)``: ``scores[model]`` = ``{"val/acc", "val/f1_macro",
    "test/acc", "test/f1_macro", "fit_s"}`` (one pair per split in ``evals``) and
    ``predictions[model][split]`` the predicted class of each row, for paired comparisons.
    ``threads`` caps OpenMP/BLAS threads to what the stage is billed for: on a busy machine an
    uncapped HistGradientBoosting spun on every core and took 40x longer than with one thread.
    """
    unknown = [m for m in models if m not in BASELINES]
    if unknown:
        raise ValueError(f"unknown baselines {unknown}; choose from {', '.join(BASELINES)}")
    scores, predictions = {}, {}
    counts = np.bincount(np.asarray(y_train, dtype=np.int64))
    # Gradient boosting's early stopping holds out a stratified 10% of train, which fails with a
    # scikit-learn traceback when a class has one train row (clean refuses classes of one row, but
    # a class of a few rows can still get one train row from the id hash): then it runs without.
    stratifiable = bool(counts.size) and int(counts[counts > 0].min()) >= 2
    for name in models:
        model = make_baseline(name, seed=seed, text=text, tfidf_max_features=tfidf_max_features,
                              early_stopping=stratifiable)
        with threadpool_limits(limits=threads):
            t0 = time.perf_counter()
            model.fit(x_train, y_train)
            s = {"fit_s": time.perf_counter() - t0}
            predictions[name] = {split: np.asarray(model.predict(x)) for split, (x, _) in evals.items()}
        for split, (x, y) in evals.items():
            pred = predictions[name][split]
            s[f"{split}/acc"] = float(accuracy_score(y, pred))
            s[f"{split}/f1_macro"] = macro_f1(y, pred, n_classes=n_classes)
        scores[name] = s
    return scores, predictions


def fit_cost_usd(fit_s: float, *, cpus: float, cpu_hour_usd: float) -> float:
    """What a model's fit time costs at the CPUs the stage reserves (same rates as ``cost/usd``)."""
    return fit_s / 3600 * cpus * cpu_hour_usd

