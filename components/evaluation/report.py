"""One self-contained HTML report: tables and plots (PNG embedded as data URIs)."""

from __future__ import annotations

import base64
import html
import io
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def png_data_uri(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def learning_curve_figure(rows: Sequence[dict]):
    epochs = [r["epoch"] for r in rows]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.2))
    for key, ax in (("loss", a1), ("acc", a2)):
        ax.plot(epochs, [r[f"train/{key}"] for r in rows], "o-", label=f"train/{key}")
        ax.plot(epochs, [r[f"val/{key}"] for r in rows], "o-", label=f"val/{key}")
        ax.set_xlabel("epoch")
        ax.legend()
        ax.grid(alpha=0.3)
    return fig


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


def table(rows: Sequence[dict], columns: Sequence[str] | None = None) -> str:
    if not rows:
        return "<p class='missing'>no rows</p>"
    columns = list(columns or rows[0].keys())

    def cell(v):
        if isinstance(v, float):
            return f"{v:.4g}"
        return html.escape(str(v))

    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{cell(r.get(c, ''))}</td>" for c in columns) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


CSS = """body{font-family:system-ui,sans-serif;max-width:980px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3}.verdict{font-size:1.2em;background:#eef6ee;padding:.6em;border-left:4px solid #4a4}
.missing{color:#999;font-style:italic}img{max-width:100%}"""


def render(title: str, sections: Sequence[tuple[str, str]], *, verdict: str | None) -> str:
    """``sections`` are (heading, html body); a body of None says the data does not exist yet."""
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>"]
    if verdict:
        parts.append(f"<p class='verdict'>Verdict: {html.escape(verdict)}</p>")
    for heading, body in sections:
        parts.append(f"<h2>{html.escape(heading)}</h2>")
        parts.append(body if body is not None else "<p class='missing'>not available yet: run the stage that makes it</p>")
    parts.append("</body></html>\n")
    return "".join(parts)
