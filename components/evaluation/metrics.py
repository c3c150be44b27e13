"""Test-set metrics of a classifier and its comparison with the best baseline."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import accuracy_score, confusion_matrix, log_loss, precision_recall_fscore_support

from trainwise.components.evaluation.scores import macro_f1


# Token-id inputs: at most this many tokens (rows x longest row) per forward pass. A batch of 512
# texts is as wide as its longest one: one 256-token message among short SMS made evaluate's
# pass over 800 texts through all-MiniLM-L6-v2 take 2.7 GB and 5 minutes on 2 cores (issue 27).
TOKENS_PER_BATCH = 16384


@torch.inference_mode()  # (not only no_grad: a text backbone skips its padding then, components/models/text_backbones.py)
def predict_proba(model: torch.nn.Module, x: torch.Tensor, *, batch_size: int = 512) -> np.ndarray:
    """Class probabilities, ``batch_size`` rows a pass; token ids (integer inputs, 0 = padding) are
    taken shortest first in passes of at most TOKENS_PER_BATCH tokens, and returned in input order."""
    model.eval()
    if x.is_floating_point() or x.ndim != 2 or not len(x):
        out = [torch.softmax(model(x[i:i + batch_size]), dim=1) for i in range(0, len(x), batch_size)]
        return torch.cat(out).numpy() if out else np.zeros((0, 0), np.float32)
    # length = position of the last non-padding token + 1 (what the text backbone keeps)
    lengths = torch.where(x != 0, torch.arange(1, x.shape[1] + 1), 0).amax(1).clamp(min=1)
    order = torch.argsort(lengths, stable=True)
    proba, i = [None] * len(x), 0
    while i < len(x):
        n = 1
        while i + n < len(x) and n < batch_size and (n + 1) * int(lengths[order[i + n]]) <= TOKENS_PER_BATCH:
            n += 1
        rows = order[i:i + n]
        for r, p in zip(rows.tolist(), torch.softmax(model(x[rows]), dim=1)):
            proba[r] = p
        i += n
    return torch.stack(proba).numpy()


def classification_metrics(y_true: np.ndarray, proba: np.ndarray, *, classes: list[str],
                           prefix: str = "test") -> tuple[dict[str, float], list[dict], np.ndarray]:
    """(flat metrics, per-class rows, confusion matrix) for predicted probabilities."""
    y_pred = proba.argmax(1)
    labels = list(range(len(classes)))
    metrics = {
        f"{prefix}/acc": float(accuracy_score(y_true, y_pred)),
        f"{prefix}/f1_macro": macro_f1(y_true, y_pred, n_classes=len(classes)),
        f"{prefix}/loss": float(log_loss(y_true, np.clip(proba, 1e-12, 1.0), labels=labels)),
        f"{prefix}/rows": int(len(y_true)),
    }
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    per_class = [{"class": c, "precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]),
                  "support": int(s[i])} for i, c in enumerate(classes)]
    return metrics, per_class, confusion_matrix(y_true, y_pred, labels=labels)


def calibration(y_true: np.ndarray, proba: np.ndarray, *, bins: int = 15) -> tuple[float, list[dict]]:
    """Expected calibration error of the top-class confidence, and the reliability-diagram rows.

    ECE = sum over equal-width confidence bins of (rows in bin / rows) x |accuracy - mean confidence|.
    Only non-empty bins get a row: ``{"bin", "confidence", "accuracy", "count"}``.
    """
    if bins < 2:
        raise ValueError(f"bins must be >= 2, got {bins}")
    conf = proba.max(1)
    correct = proba.argmax(1) == y_true
    which = np.minimum((conf * bins).astype(int), bins - 1)  # confidence 1.0 goes to the last bin
    ece, rows = 0.0, []
    for b in range(bins):
        m = which == b
        if not m.any():
            continue
        acc, c = float(correct[m].mean()), float(conf[m].mean())
        ece += m.sum() / len(y_true) * abs(acc - c)
        rows.append({"bin": f"{b / bins:.2f}-{(b + 1) / bins:.2f}", "confidence": c, "accuracy": acc,
                     "count": int(m.sum())})
    return float(ece), rows


def confidently_wrong(y_true: np.ndarray, proba: np.ndarray, *, k: int) -> list[int]:
    """Row indices of the ``k`` wrong predictions made with the highest confidence, most confident first."""
    pred = proba.argmax(1)
    wrong = np.flatnonzero(pred != y_true)
    order = np.argsort(-proba[wrong, pred[wrong]], kind="stable")
    return wrong[order[:k]].tolist()


def paired_comparison(net_correct: np.ndarray, base_correct: np.ndarray, *, resamples: int = 1000,
                      confidence: float = 0.95, seed: int = 0) -> dict[str, float]:
    """Network minus baseline accuracy on the same test rows, in points, with a paired bootstrap
    interval (the same resampled rows score both models) and McNemar's exact p-value.

    Returns ``{"diff", "ci_low", "ci_high", "mcnemar_p", "significant"}``; significant means the
    interval excludes zero.
    """
    from scipy.stats import binomtest

    a = np.asarray(net_correct, dtype=np.float64)
    b = np.asarray(base_correct, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise ValueError(f"need two equal-length, non-empty 1-D arrays of per-row correctness, got {a.shape} and {b.shape}")
    if not 0.5 < confidence < 1:
        raise ValueError(f"confidence must be in (0.5, 1), got {confidence}")
    d = a - b
    rng = np.random.default_rng(seed)
    chunk = max(1, 2_000_000 // len(d))  # bound memory on large test sets
    diffs = np.concatenate([d[rng.integers(0, len(d), size=(min(chunk, resamples - i), len(d)))].mean(1)
                            for i in range(0, resamples, chunk)])
    tail = (1 - confidence) / 2
    low, high = np.quantile(diffs, [tail, 1 - tail])
    net_only, base_only = int((d > 0).sum()), int((d < 0).sum())
    p = binomtest(min(net_only, base_only), net_only + base_only, 0.5).pvalue if net_only + base_only else 1.0
    return {"diff": 100 * float(d.mean()), "ci_low": 100 * float(low), "ci_high": 100 * float(high),
            "mcnemar_p": float(p), "significant": float(low > 0 or high < 0)}


def paired_f1_interval(y_true: np.ndarray, net_pred: np.ndarray, base_pred: np.ndarray, *, n_classes: int,
                       resamples: int = 1000, confidence: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Paired-bootstrap interval of (network - baseline) macro F1 on the same test rows, in F1 units.

    The registry gate's interval when ``register.metric`` is test/f1_macro (for test/acc it uses
    :func:`paired_comparison`'s, the verdict's own). Same resampling: each resample scores both
    models on the same rows.
    """
    y, a, b = (np.asarray(v) for v in (y_true, net_pred, base_pred))
    if not (y.shape == a.shape == b.shape) or y.ndim != 1 or len(y) == 0:
        raise ValueError(f"need equal-length, non-empty label and prediction arrays, got {y.shape}, {a.shape}, {b.shape}")
    rng = np.random.default_rng(seed)
    diffs = np.empty(resamples)
    for i in range(resamples):
        idx = rng.integers(0, len(y), size=len(y))
        diffs[i] = macro_f1(y[idx], a[idx], n_classes=n_classes) - macro_f1(y[idx], b[idx], n_classes=n_classes)
    tail = (1 - confidence) / 2
    low, high = np.quantile(diffs, [tail, 1 - tail])
    return float(low), float(high)


def _times(ratio: float) -> str:
    """The cost ratio as the sentence quotes it: one significant figure. Both costs are wall time x
    resources x rates; the baseline's is seconds of fitting, so two identical repros on this
    2-core machine gave 12.5x and 19.6x (a busy moment) and 19.35x and 19.41x (idle): a second
    figure would claim what the measurement does not hold (the metric keeps the full value)."""
    if not np.isfinite(ratio):
        return "an unmeasured multiple of"
    return f"about {float(f'{ratio:.1g}'):g}x"


def verdict(*, net_name: str, baseline_name: str, diff: float, ci_low: float, ci_high: float,
            cost_ratio: float, confidence: float = 0.95) -> str:
    """One sentence on whether the network is worth it: the accuracy difference (points, ± half the
    confidence interval), whether it is significant, and the cost ratio (network / baseline)."""
    pm = f"{abs(diff):.1f} ± {(ci_high - ci_low) / 2:.1f} points ({confidence:.0%} CI)"
    if 1 / 1.5 < cost_ratio < 1.5:
        cost = "at a similar cost"
    elif cost_ratio >= 1.5:
        cost = f"at {_times(cost_ratio)} the cost"
    else:
        cost = f"at {_times(cost_ratio)} the cost"
    if ci_low > 0:
        return f"the {net_name} beats {baseline_name} by {pm} {cost}"
    if ci_high < 0:
        return f"{baseline_name} beats the {net_name} by {pm}; the network, {cost}, is not worth it here"
    sign = "+" if diff >= 0 else "-"
    advice = "the simpler model would do" if cost_ratio > 1 / 1.5 else "either would do"
    return (f"the {net_name} and {baseline_name} differ by {sign}{pm}, not significant, with the network "
            f"{cost}: {advice}")
