"""Test-set metrics of a classifier and its comparison with the best baseline."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, log_loss, precision_recall_fscore_support


@torch.no_grad()
def predict_proba(model: torch.nn.Module, x: torch.Tensor, *, batch_size: int = 512) -> np.ndarray:
    model.eval()
    out = [torch.softmax(model(x[i:i + batch_size]), dim=1) for i in range(0, len(x), batch_size)]
    return torch.cat(out).numpy()


def classification_metrics(y_true: np.ndarray, proba: np.ndarray, *, classes: list[str],
                           prefix: str = "test") -> tuple[dict[str, float], list[dict], np.ndarray]:
    """(flat metrics, per-class rows, confusion matrix) for predicted probabilities."""
    y_pred = proba.argmax(1)
    labels = list(range(len(classes)))
    metrics = {
        f"{prefix}/acc": float(accuracy_score(y_true, y_pred)),
        f"{prefix}/f1_macro": float(f1_score(y_true, y_pred, average="macro", labels=labels, zero_division=0)),
        f"{prefix}/loss": float(log_loss(y_true, np.clip(proba, 1e-12, 1.0), labels=labels)),
        f"{prefix}/rows": int(len(y_true)),
    }
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    per_class = [{"class": c, "precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]),
                  "support": int(s[i])} for i, c in enumerate(classes)]
    return metrics, per_class, confusion_matrix(y_true, y_pred, labels=labels)


def verdict(*, net_acc: float, net_name: str, baseline_acc: float, baseline_name: str,
            net_cost: float, baseline_cost: float) -> str:
    """One sentence on whether the network is worth it, in test-accuracy points and cost."""
    diff = 100 * (net_acc - baseline_acc)
    ratio = net_cost / baseline_cost if baseline_cost > 0 else float("inf")
    cost = f"at {ratio:.0f}x the cost" if ratio >= 1.5 else "at a similar cost"
    if abs(diff) < 0.5:
        return f"the {net_name} ties {baseline_name} ({diff:+.1f} points) {cost}: the simpler model would do"
    if diff > 0:
        return f"the {net_name} beats {baseline_name} by {diff:.1f} points {cost}"
    return f"{baseline_name} beats the {net_name} by {-diff:.1f} points; the network is not worth it here"
