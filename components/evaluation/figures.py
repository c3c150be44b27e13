"""Figures of the evaluation (matplotlib, Agg): reliability diagram, attribution overlays and
per-position plots, example thumbnails, the tune Pareto plot. Each returns a figure; ``save_png``
writes it atomically."""

from __future__ import annotations

import io
import math
import os
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402



def png_bytes(fig, *, dpi: int = 110) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def save_png(fig, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(png_bytes(fig))
    os.replace(tmp, path)
    return path


def confusion_figure(cm: np.ndarray, classes: list[str]):
    fig, ax = plt.subplots(figsize=(4.2, 4))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes)
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            if cm[i, j]:
                ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if cm[i, j] > cm.max() / 2 else "black")
    return fig


def reliability_figure(rows: Sequence[dict], *, ece: float):
    """Accuracy vs confidence per bin; the diagonal is perfect calibration."""
    fig, ax = plt.subplots(figsize=(4.2, 4))
    ax.plot([0, 1], [0, 1], "--", color="#999", label="perfectly calibrated")
    if rows:
        conf = [r["confidence"] for r in rows]
        ax.bar(conf, [r["accuracy"] for r in rows], width=0.05, alpha=0.7, label="accuracy in bin")
        ax.plot(conf, [r["accuracy"] for r in rows], "o", color="C1")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("confidence (top-class probability)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"reliability (ECE {ece:.3f})")
    ax.legend(loc="upper left", fontsize=8)
    return fig


def _grid(n: int, cols: int):
    cols = max(1, min(cols, n))
    rows = max(1, math.ceil(n / cols))
    return rows, cols


def _as_image(x: np.ndarray) -> np.ndarray:
    """(C, H, W) float in [0, 1] -> (H, W) or (H, W, 3) for imshow."""
    return x[0] if x.shape[0] == 1 else np.clip(np.transpose(x[:3], (1, 2, 0)), 0, 1)


def image_attribution_figure(images: np.ndarray, attr: np.ndarray, titles: Sequence[str], *, cols: int = 8):
    """Each example twice: the image, then the image with |attribution| (summed over channels)
    overlaid as a heat map. ``images``/``attr`` are (N, C, H, W)."""
    n = len(images)
    rows, cols = _grid(n, cols)
    fig, axes = plt.subplots(2 * rows, cols, figsize=(1.25 * cols, 2.6 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i in range(n):
        r, c = divmod(i, cols)
        img = _as_image(images[i])
        heat = np.abs(attr[i]).sum(0)
        heat = heat / heat.max() if heat.max() > 0 else heat
        axes[2 * r, c].imshow(img, cmap="gray")
        axes[2 * r, c].set_title(titles[i], fontsize=7)
        axes[2 * r + 1, c].imshow(img, cmap="gray")
        axes[2 * r + 1, c].imshow(heat, cmap="inferno", alpha=0.6)
    fig.tight_layout()
    return fig


def per_position(a: np.ndarray, *, reduce: str = "sum") -> np.ndarray:
    """(N, L) from (N, L), (N, 1, L), (N, C, L) or (N, L, C): channels are reduced (the smaller axis)."""
    if a.ndim == 2:
        return a
    if a.ndim != 3:
        raise ValueError(f"expected a sequence batch of 2 or 3 dims, got shape {a.shape}")
    axis = 1 if a.shape[1] <= a.shape[2] else 2
    return a.sum(axis) if reduce == "sum" else a.mean(axis)


def sequence_attribution_figure(seqs: np.ndarray, attr: np.ndarray, titles: Sequence[str], *, cols: int = 4):
    """Per example: the signal (line) and each position's attribution (bars, red = toward the
    predicted class, blue = against)."""
    s, a = per_position(np.asarray(seqs), reduce="mean"), per_position(np.asarray(attr))
    n = len(s)
    rows, cols = _grid(n, cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.0 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i in range(n):
        ax = axes.flat[i]
        ax.axis("on")
        pos = np.arange(s.shape[1])
        ax.bar(pos, a[i], color=np.where(a[i] >= 0, "#d62728", "#1f77b4"), alpha=0.6, width=1.0)
        tw = ax.twinx()
        tw.plot(pos, s[i], color="black", lw=1)
        tw.set_yticks([])
        ax.set_title(titles[i], fontsize=8)
        ax.tick_params(labelsize=6)
    fig.tight_layout()
    return fig


def thumbnails_figure(images: Sequence[np.ndarray], titles: Sequence[str], *, cols: int = 8):
    """Small images with a caption each; images are (H, W, C) uint8 or (C, H, W) float in [0, 1]."""
    n = len(images)
    rows, cols = _grid(n, cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.3 * cols, 1.5 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, (img, title) in enumerate(zip(images, titles)):
        img = np.asarray(img)
        if img.dtype == np.uint8:
            img = img[..., 0] if img.shape[-1] == 1 else img
        else:
            img = _as_image(img)
        axes.flat[i].imshow(img, cmap="gray")
        axes.flat[i].set_title(title, fontsize=7)
    fig.tight_layout()
    return fig


def sequences_figure(seqs: np.ndarray, titles: Sequence[str], *, cols: int = 4):
    s = per_position(np.asarray(seqs), reduce="mean") if np.asarray(seqs).ndim == 3 else np.asarray(seqs)
    rows, cols = _grid(len(s), cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.0 * cols, 1.6 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i in range(len(s)):
        ax = axes.flat[i]
        ax.axis("on")
        ax.plot(s[i], color="black", lw=1)
        ax.set_title(titles[i], fontsize=8)
        ax.tick_params(labelsize=6)
    fig.tight_layout()
    return fig


def examples_figure(x: np.ndarray, titles: Sequence[str], *, modality: str):
    """Model inputs as pictures: images (N, C, H, W) as thumbnails, sequences as line plots."""
    if modality == "image":
        return thumbnails_figure(list(x), titles)
    if modality == "sequence":
        return sequences_figure(x, titles)
    raise ValueError(f"no picture for modality {modality!r} (image | sequence)")


def pareto_front(points: Sequence[tuple[float, float]], *, maximize: bool) -> list[int]:
    """Indices of the points no other point beats on both cost (lower) and metric, by cost."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1] if maximize else points[i][1]))
    front, best = [], None
    for i in order:
        m = points[i][1]
        if best is None or (m > best if maximize else m < best):
            front.append(i)
            best = m
    return front


def pareto_figure(costs: Sequence[float], metric: Sequence[float], *, metric_name: str, maximize: bool):
    pts = list(zip(costs, metric))
    front = pareto_front(pts, maximize=maximize)
    fig, ax = plt.subplots(figsize=(5, 3.4))
    ax.scatter(costs, metric, color="#999", label="trial")
    ax.plot([pts[i][0] for i in front], [pts[i][1] for i in front], "o-", color="C3", label="Pareto front")
    ax.set_xlabel("trial cost (USD)")
    ax.set_ylabel(metric_name)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig
