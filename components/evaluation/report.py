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


def confusion_matrix_from_pairs(pairs: Sequence[dict], classes: list[str]) -> np.ndarray:
    idx = {c: i for i, c in enumerate(classes)}
    cm = np.zeros((len(classes), len(classes)), dtype=int)
    for r in pairs:
        cm[idx[r["actual"]], idx[r["predicted"]]] += 1
    return cm


def _img(alt: str, fig) -> str:
    return f"<img alt='{html.escape(alt)}' src='{png_data_uri(fig)}'>"


def build_report(*, title: str, verdict: str | None, stages: dict[str, dict], manifests: dict[str, dict],
                 curve: list[dict] | None, confusion: list[dict] | None, per_class: list[dict] | None,
                 trials: list[dict] | None, network: str, pipeline: dict[str, float], mlflow_hint: str) -> str:
    """The whole page from the pipeline's outputs; a section whose inputs are missing says so."""
    data_rows = [{"stage": name, "rows in": m.get("rows_in", m["rows"]), "rows out": m["rows"],
                  "set aside": ", ".join(f"{k}: {v}" for k, v in m["set_aside"].items()) or "none"}
                 for name, m in manifests.items()]
    split = manifests.get("split", {})
    split_rows = [{"split": s, **c} for s, c in split.get("split_class_counts", {}).items()]
    base = stages.get("baseline", {})
    base_rows = [{"model": m, **{k: base[f"baseline/{m}/{k}"] for k in ("val/acc", "test/acc", "test/f1_macro", "fit_s")}}
                 for m in sorted({k.split("/")[1] for k in base if k.endswith("/fit_s")})]
    ev = stages.get("evaluate", {})
    if ev and "train" in stages:
        base_rows.append({"model": f"network ({network})", "val/acc": stages["train"]["val/acc"],
                          "test/acc": ev["test/acc"], "test/f1_macro": ev["test/f1_macro"],
                          "fit_s": stages["train"]["cost/wall_s"]})
    cost_rows = [{"stage": s, "wall_s": m.get("cost/wall_s", 0.0), "cpu_hours": m.get("cost/cpu_hours", 0.0),
                  "cpu_util": m.get("cost/cpu_util", 0.0), "usd": m.get("cost/usd", 0.0)} for s, m in stages.items()]
    cost_rows.append({"stage": "total", "wall_s": pipeline["pipeline/wall_s"],
                      "cpu_hours": pipeline["pipeline/cpu_hours"], "usd": pipeline["pipeline/cost/usd"]})
    test_metrics = None
    if ev:
        test_metrics = table([{k: v for k, v in ev.items() if k.startswith("test/")}])
        if confusion and split.get("classes"):
            cm = confusion_matrix_from_pairs(confusion, split["classes"])
            test_metrics += _img("confusion matrix", confusion_figure(cm, split["classes"]))
    return render(title, [
        ("Data", table(data_rows) if data_rows else None),
        ("Split", table(split_rows) if split_rows else None),
        ("Learning curves", _img("learning curves", learning_curve_figure(curve)) if curve else None),
        ("Tuning trials", table(trials) if trials else None),
        ("Baselines vs network (test split)", table(base_rows) if base_rows else None),
        ("Test metrics", test_metrics),
        ("Per class", table(per_class) if per_class else None),
        ("Cost", table(cost_rows)),
        ("MLflow", f"<p><code>{html.escape(mlflow_hint)}</code></p>"),
    ], verdict=verdict)
