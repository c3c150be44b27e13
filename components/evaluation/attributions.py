"""Which parts of an input drove the network's prediction (Captum), for a fixed sample of test rows.

Generic over the model's input: a float tensor of any shape (images (N, C, H, W), sequences
(N, L) / (N, C, L) / (N, L, C), features (N, F)) is attributed directly, per input value; an
integer tensor of token ids (text) is attributed at the model's first ``nn.Embedding`` layer
(Captum's layer integrated gradients), summed over the embedding dimension to one score per
token. The target is the class the model predicted, so a wrong prediction shows what misled it.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

METHODS = ("integrated_gradients", "saliency")
# Integrated gradients runs ``steps`` copies of every row through the model with gradients kept;
# all at once, 16 texts x 32 steps x 256 tokens through all-MiniLM-L6-v2 reached 20.8 GB RSS
# (issue 27). Captum's ``internal_batch_size`` splits that path into passes of a bounded size, with
# the same result. Text passes are bounded in tokens (attention memory grows with the width), at
# ~0.5 GB per pass for MiniLM at its full 256-token width; float inputs in rows.
TOKENS_PER_PASS = 4096
ROWS_PER_PASS = 32


def sample_right_and_wrong(y_true: np.ndarray, y_pred: np.ndarray, *, n: int, seed: int) -> list[int]:
    """``n`` row indices, half wrongly predicted and half right where there are enough of each
    (the other kind fills the gap); the same ``seed`` gives the same rows. Wrong rows come first."""
    rng = np.random.default_rng(seed)
    wrong = np.flatnonzero(y_pred != y_true)
    right = np.flatnonzero(y_pred == y_true)
    n_wrong = min(len(wrong), n // 2)
    n_right = min(len(right), n - n_wrong)
    n_wrong = min(len(wrong), n - n_right)
    pick_wrong = np.sort(rng.choice(wrong, n_wrong, replace=False)) if n_wrong else np.array([], int)
    pick_right = np.sort(rng.choice(right, n_right, replace=False)) if n_right else np.array([], int)
    return [int(i) for i in np.concatenate([pick_wrong, pick_right])]


def _embedding_layer(model: nn.Module) -> nn.Module:
    for m in model.modules():
        if isinstance(m, (nn.Embedding, nn.EmbeddingBag)):
            return m
    raise ValueError("integer (token id) inputs need an nn.Embedding layer in the model to attribute to; "
                     f"{type(model).__name__} has none")


def attribute(model: nn.Module, x: torch.Tensor, target: torch.Tensor | list[int], *,
              method: str = "integrated_gradients", steps: int = 32) -> np.ndarray:
    """Attribution of each input value (float inputs: same shape as ``x``) or each token (integer
    inputs: shape (N, L)) toward ``target``'s logit. Baseline of integrated gradients: all zeros
    (a black image, a flat signal; for text, token id 0, the padding id)."""
    from captum.attr import IntegratedGradients, LayerIntegratedGradients, Saliency

    if method not in METHODS:
        raise ValueError(f"unknown attribution method {method!r}; choose from {METHODS}")
    model.eval()
    target = torch.as_tensor(target, dtype=torch.long)
    if len(x) == 0:
        return np.zeros((0, *x.shape[1:]), dtype=np.float32)
    if x.is_floating_point():
        x = x.detach().clone().requires_grad_(True)
        if method == "saliency":
            attr = Saliency(model).attribute(x, target=target, abs=False)
        else:
            attr = IntegratedGradients(model).attribute(x, baselines=torch.zeros_like(x), target=target,
                                                        n_steps=steps, internal_batch_size=ROWS_PER_PASS)
        return attr.detach().numpy().astype(np.float32)
    # Token ids have no gradient; attribute at the embedding output instead (the same for both methods:
    # layer integrated gradients, so the scores of a text model are comparable run to run).
    # Trailing columns that are padding in every row are cut first: there the input equals the
    # all-padding baseline, so their attribution is exactly 0 (given back as 0), and they would only
    # cost memory (short messages padded to 256 tokens).
    width = max(int((x != 0).any(0).nonzero().max().item()) + 1, 1) if (x != 0).any() else 1
    lig = LayerIntegratedGradients(model, _embedding_layer(model))
    attr = lig.attribute(x[:, :width], baselines=torch.zeros_like(x[:, :width]), target=target, n_steps=steps,
                         internal_batch_size=max(TOKENS_PER_PASS // width, 1))
    out = np.zeros(x.shape, dtype=np.float32)
    out[:, :width] = attr.detach().sum(-1).numpy()
    return out


def top_tokens(token_ids: np.ndarray, attr: np.ndarray, *, vocab: list[str] | None = None, k: int = 5,
               pad_id: int = 0) -> list[list[tuple[str, float]]]:
    """The ``k`` tokens of each row with the largest attribution toward the prediction (padding skipped)."""
    out = []
    for ids, scores in zip(np.asarray(token_ids), np.asarray(attr)):
        keep = [j for j in np.argsort(-scores, kind="stable") if ids[j] != pad_id][:k]
        out.append([(vocab[ids[j]] if vocab is not None and ids[j] < len(vocab) else f"#{ids[j]}",
                     float(scores[j])) for j in keep])
    return out


def explain_sample(model: nn.Module, x: torch.Tensor, y_true: np.ndarray, proba: np.ndarray, *, modality: str,
                   classes: list[str], ids: list[str], n: int, seed: int, method: str = "integrated_gradients",
                   steps: int = 32, vocab: list[str] | None = None):
    """Attribute a fixed sample of rows (half right, half wrong) and draw them for the modality.

    Returns ``(records, figure or None)``: one record per row (id, label, predicted, confidence,
    correct; ``top_tokens`` for token inputs); the figure is an image overlay grid or per-position
    plots (features and text get a table only).
    """
    from trainwise.components.evaluation import figures

    pred = proba.argmax(1)
    idx = sample_right_and_wrong(y_true, pred, n=n, seed=seed)
    if not idx:
        return [], None
    xs = x[idx]
    attr = attribute(model, xs, torch.as_tensor(pred[idx]), method=method, steps=steps)
    records = [{"id": ids[i], "label": classes[y_true[i]], "predicted": classes[pred[i]],
                "confidence": float(proba[i, pred[i]]), "correct": bool(pred[i] == y_true[i])} for i in idx]
    titles = [f"{r['label']}→{r['predicted']} {'✓' if r['correct'] else '✗'}" for r in records]
    if not xs.is_floating_point():
        for r, toks in zip(records, top_tokens(xs.numpy(), attr, vocab=vocab)):
            r["top_tokens"] = [{"token": t, "score": s} for t, s in toks]
        return records, None
    if modality == "image" and xs.ndim == 4:
        return records, figures.image_attribution_figure(xs.numpy(), attr, titles)
    if modality == "sequence":
        return records, figures.sequence_attribution_figure(xs.numpy(), attr, titles)
    flat = attr.reshape(len(attr), -1)
    for r, a in zip(records, flat):  # features: the strongest inputs by index
        r["top_features"] = [{"index": int(j), "score": float(a[j])} for j in np.argsort(-np.abs(a))[:5]]
    return records, None
