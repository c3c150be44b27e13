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

from trainwise.components.evaluation.figures import confusion_figure  # noqa: E402  (re-exported)


def png_data_uri(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def learning_curve_figure(rows: Sequence[dict]):
    """Loss and accuracy per epoch, and the overfitting gap (train - val) of both."""
    epochs = [r["epoch"] for r in rows]
    fig, (a1, a2, a3) = plt.subplots(1, 3, figsize=(12, 3.2))
    for key, ax in (("loss", a1), ("acc", a2)):
        ax.plot(epochs, [r[f"train/{key}"] for r in rows], "o-", label=f"train/{key}")
        ax.plot(epochs, [r[f"val/{key}"] for r in rows], "o-", label=f"val/{key}")
        ax.set_xlabel("epoch")
        ax.legend()
        ax.grid(alpha=0.3)
    a3.plot(epochs, [r["train/acc"] - r["val/acc"] for r in rows], "o-", color="C3", label="gap/acc (train - val)")
    a3.plot(epochs, [r["val/loss"] - r["train/loss"] for r in rows], "o-", color="C4", label="val/loss - train/loss")
    a3.axhline(0, color="#999", lw=0.8)
    a3.set_xlabel("epoch")
    a3.set_title("overfitting gap", fontsize=9)
    a3.legend(fontsize=7)
    a3.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def table(rows: Sequence[dict], columns: Sequence[str] | None = None) -> str:
    if not rows:
        return "<p class='missing'>no rows</p>"
    columns = list(columns or rows[0].keys())

    def cell(v):
        if isinstance(v, str) and "." in v:  # numbers read back from CSV files
            try:
                v = float(v)
            except ValueError:
                pass
        if isinstance(v, float):
            return f"{v:.4g}"
        return html.escape(str(v))

    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{cell(r.get(c, ''))}</td>" for c in columns) + "</tr>" for r in rows)
    # In its own box: a wide table (tuning trials, long config values) scrolls sideways there and a
    # long one scrolls down there, instead of stretching the page past the window.
    return f"<div class='tablebox'><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>"


CSS = """body{font-family:system-ui,sans-serif;max-width:1080px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3}.verdict{font-size:1.2em;background:#eef6ee;padding:.6em;border-left:4px solid #4a4}
.missing{color:#999;font-style:italic}img{max-width:100%}nav{font-size:.9em;margin:.5em 0 1.5em}
nav a{margin-right:.8em}h3{font-size:1em;margin:1em 0 .3em}
.tablebox{max-width:100%;max-height:36em;overflow:auto;margin:.5em 0}.tablebox table{margin:0}
.tablebox th{position:sticky;top:0}p,li{overflow-wrap:anywhere}pre{overflow:auto}"""

# Builds the contents line from the h2 headings: the page works without it (no external script).
TOC_JS = """document.addEventListener('DOMContentLoaded',function(){var nav=document.getElementById('toc');
document.querySelectorAll('h2').forEach(function(h,i){h.id='s'+i;var a=document.createElement('a');
a.href='#'+h.id;a.textContent=h.textContent;nav.appendChild(a);});});"""

MISSING = "<p class='missing'>not available yet: run the stage that makes it</p>"


def missing(why: str) -> str:
    return f"<p class='missing'>{html.escape(why)}</p>"


def render(title: str, sections: Sequence[tuple[str, str | None]], *, verdict: str | None) -> str:
    """``sections`` are (heading, html body); a body of None says the data does not exist yet."""
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{CSS}</style><script>{TOC_JS}</script></head><body><h1>{html.escape(title)}</h1>"
             "<nav id='toc'></nav>"]
    if verdict:
        parts.append(f"<p class='verdict'>Verdict: {html.escape(verdict)}</p>")
    for heading, body in sections:
        parts.append(f"<h2>{html.escape(heading)}</h2>")
        parts.append(body if body is not None else MISSING)
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


def _png(alt: str, data: bytes | None) -> str:
    if not data:
        return ""
    return f"<img alt='{html.escape(alt)}' src='data:image/png;base64,{base64.b64encode(data).decode()}'>"


def _data_section(manifests: dict[str, dict | None], suspects: list[dict] | None, suspects_png: bytes | None,
                  suspects_file: str) -> str | None:
    rows = [{"stage": name, "rows in": m.get("rows_in", m["rows"]), "rows out": m["rows"],
             "set aside": ", ".join(f"{k}: {v}" for k, v in m["set_aside"].items()) or "none"}
            for name, m in manifests.items() if m]
    if not rows:
        return None
    body = table(rows)
    clean = manifests.get("clean") or {}
    reasons = clean.get("set_aside", {})
    dup = sum(v for k, v in reasons.items() if "dup" in k)
    body += (f"<p>clean: {sum(reasons.values()) - dup} quarantined, {dup} duplicates set aside"
             f" (per reason above).</p>" if clean else "")
    body += "<h3>Label suspects</h3>"
    audit = (manifests.get("audit") or {}).get("label_issues") or {}
    if audit.get("decision") or audit.get("skipped"):  # did the audit change training data, and why
        # from the count of rows changed, not from whether the policy was allowed to act (a trusted
        # auditor under a cap of 0 rows changes none)
        n = int(audit.get("touched", 0))
        verb = f"changed {n} train row{'s' if n != 1 else ''}" if n else "changed no row"
        body += f"<p>label audit {verb}: {html.escape(audit.get('decision') or audit['skipped'])}</p>"
    if suspects is None:
        body += missing(f"not available: the audit stage wrote no {suspects_file}")
    elif not suspects:
        body += "<p>no likely label errors found.</p>"
    else:
        body += table(suspects) + _png("label suspects", suspects_png)
    return body


def _split_section(split: dict | None, split_metrics: dict, images: dict[str, bytes] | None = None,
                   snippets: dict[str, str] | None = None) -> str | None:
    if not split:
        return None
    images, snippets = images or {}, snippets or {}
    rows = [{"split": s, **c} for s, c in split.get("split_class_counts", {}).items()]
    body = table(rows) if rows else missing("no per-split class counts in the split manifest")
    body += _near_duplicate_section(split.get("near_duplicate_groups"), images, snippets)
    leak = _leakage_rows(split, split_metrics)
    body += "<h3>Leakage check</h3>"
    body += table(leak) if leak else missing("not available: the split stage reports no leakage check")
    return body


def _near_duplicate_section(nd: dict | None, images: dict[str, bytes], snippets: dict[str, str]) -> str:
    """What the split checked for near-duplicates, the pairs nearest the threshold (not grouped) and a
    sample of the groups it formed (weakest link first), with thumbnails or text snippets: enough to
    judge the threshold by eye."""
    body = "<h3>Near-duplicates (grouped before the split)</h3>"
    if not nd:
        return body + missing("not available: this split manifest has no near-duplicate record (an older split)")
    body += (f"<p>checked: {html.escape(str(nd.get('method', '?')))}. {nd.get('groups', 0)} groups of 2+ rows hold "
             f"{nd.get('rows_in_groups', 0)} rows; the largest has {nd.get('largest_group', 0)} rows. A group never "
             "crosses splits.</p>")
    for g in nd.get("over_max_group") or []:
        how = (f"a threshold above {nd['split_threshold']:.4f} would split it" if nd.get("split_threshold") is not None
               else "it is held together by identical content")
        body += (f"<p class='warn'>group {html.escape(str(g['group']))} has {g['rows']} rows, more than max_group "
                 f"{nd.get('max_group')}: {how}.</p>")
    for note in nd.get("notes") or []:
        body += f"<p>{html.escape(str(note))}</p>"

    def text_of(i: str) -> str:
        t = snippets.get(i)
        return "" if t is None else (t[:80] + ("…" if len(t) > 80 else ""))

    misses = nd.get("near_misses") or []
    if misses:
        body += (f"<h4>Closest pairs left apart ({nd.get('kind')} below {nd.get('threshold')})</h4>"
                 "<p>If these are copies of one item, lower the threshold; if the grouped pairs below are not, raise it.</p>")
        body += table([{"id": m["id"], "other": m["other"], "similarity": m["similarity"],
                        "splits": "/".join(m.get("splits", [])),
                        **({"text": text_of(m["id"]), "other text": text_of(m["other"])} if snippets else {})}
                       for m in misses])
        body += _png("closest pairs left apart", images.get("near_misses"))
    sample = nd.get("sample") or []
    if sample:
        body += "<h4>A sample of the groups found by content (weakest link first)</h4>"
        body += table([{"group": g["group"], "rows": g["rows"], "weakest link": g["weakest"],
                        "split": "/".join(g.get("splits", [])),
                        "members": ", ".join(g["ids"][:6]) if not snippets else " | ".join(text_of(i) for i in g["ids"][:4])}
                       for g in sample])
        body += _png("near-duplicate groups", images.get("near_groups"))
    return body


def _leakage_rows(split: dict, split_metrics: dict) -> list[dict]:
    """The leakage check as (check, value) rows: the split stage's metrics (``split/leakage/...``, the
    names DVC and MLflow show), else its manifest's ``leakage`` record flattened; example lists are
    counted, never printed as raw Python values."""
    rows = [{"check": k, "value": v} for k, v in split_metrics.items()
            if "leak" in k.lower() and isinstance(v, (int, float, str))]
    if rows:
        return rows

    def flat(d: dict, prefix: str):
        for k, v in d.items():
            if isinstance(v, dict):
                yield from flat(v, f"{prefix}{k}.")
            elif isinstance(v, (list, tuple)):
                yield {"check": f"{prefix}{k}", "value": f"{len(v)} listed in the split manifest"}
            else:
                yield {"check": f"{prefix}{k}", "value": v}

    return [r for k, v in split.items() if "leak" in k.lower()
            for r in (flat(v, f"{k}.") if isinstance(v, dict) else [{"check": k, "value": v}])]


def _curve_section(curve: list[dict] | None, train: dict) -> str | None:
    if not curve:
        return None
    body = _img("learning curves", learning_curve_figure(curve))
    if "gap/acc" in train:
        body += (f"<p>overfitting gap at the kept epoch: gap/acc = {train['gap/acc']:+.4f} "
                 f"(train/acc {train.get('train/acc', float('nan')):.4f}, val/acc {train.get('val/acc', float('nan')):.4f})</p>")
    return body


def _trials_section(trials: list[dict] | None) -> str | None:
    if not trials:
        return None
    body = table(trials)
    # trials.csv names its score column after tune.metric: best_val/loss (the default) or best_val/acc.
    metric = next((k for k in trials[0] if k.startswith("best_") and k != "best_epoch"), "best_val/loss")
    pts = []
    for t in trials:
        try:
            pts.append((float(t["cost/usd"]), float(t[metric])))
        except (KeyError, TypeError, ValueError):  # a trial that failed or never reported an epoch
            continue
    if len(pts) >= 2:
        from trainwise.components.evaluation.figures import pareto_figure

        maximize = "loss" not in metric
        body += _img("tune pareto", pareto_figure([c for c, _ in pts], [m for _, m in pts],
                                                  metric_name=metric.replace("_", " ", 1), maximize=maximize))
    else:
        body += missing(f"Pareto plot: needs at least two trials with cost/usd and {metric}")
    return body


def _verdict_section(base_rows: list[dict], evaluation: dict | None) -> str | None:
    if not base_rows:
        return None
    body = table(base_rows)
    v = (evaluation or {}).get("verdict")
    if v:
        body += (f"<p class='verdict'>{html.escape(v['sentence'])}</p>"
                 f"<p>best baseline (chosen on val): {html.escape(v['baseline'])}; network - baseline test accuracy "
                 f"{v['diff']:+.2f} points, {v['confidence']:.0%} paired-bootstrap interval [{v['ci_low']:+.2f}, "
                 f"{v['ci_high']:+.2f}], McNemar p = {v['mcnemar_p']:.3g}; cost: network (tune + train) "
                 f"${v['net_cost_usd']:.5f} vs baseline stage ${v['baseline_cost_usd']:.5f} = "
                 f"{v['cost_ratio']:.2g}x (wall time x resources: the ratio moves with the machine's load)."
                 f"</p>")
    else:
        body += missing("verdict: not available yet (run evaluate)")
    return body


def _test_section(ev: dict, evaluation: dict | None, images: dict, confusion, classes) -> str | None:
    if not ev:
        return None
    body = table([{k: v for k, v in ev.items() if k.startswith("test/")}])
    if images.get("confusion"):
        body += _png("confusion matrix", images["confusion"])
    elif confusion and classes:
        body += _img("confusion matrix", confusion_figure(confusion_matrix_from_pairs(confusion, classes), classes))
    body += "<h3>Calibration</h3>"
    cal = (evaluation or {}).get("calibration")
    if cal:
        body += f"<p>expected calibration error (ECE) = {cal['ece']:.4f}</p>" + _png("reliability diagram",
                                                                                    images.get("reliability"))
    else:
        body += missing("not available yet (run evaluate)")
    body += "<h3>Most confidently wrong</h3>"
    wrong = (evaluation or {}).get("confidently_wrong")
    if wrong is None:
        body += missing("not available yet (run evaluate)")
    elif not wrong:
        body += "<p>no wrong predictions on the test split.</p>"
    else:
        body += table(wrong) + _png("confidently wrong", images.get("confident_wrong"))
    return body


def _attribution_section(evaluation: dict | None, image: bytes | None) -> str | None:
    att = (evaluation or {}).get("attributions")
    if not att:
        return None
    rows = att.get("rows", [])
    if not rows:
        return missing("no test examples were attributed (evaluate.attribution_samples = 0)")
    flat = []
    for r in rows:
        row = {k: r[k] for k in ("id", "label", "predicted", "confidence", "correct")}
        if "top_tokens" in r:
            row["top tokens"] = ", ".join(f"{t['token']} ({t['score']:+.2f})" for t in r["top_tokens"])
        if "top_features" in r:
            row["top features"] = ", ".join(f"{t.get('name', t['index'])} ({t['score']:+.2f})"
                                            for t in r["top_features"])
        flat.append(row)
    return (f"<p>method: {html.escape(att.get('method', '?'))} (Captum), toward the predicted class; "
            f"a fixed sample of right and wrong test rows.</p>" + _png("attributions", image) + table(flat))


def _mlflow_section(hint: str, runs: list[dict] | None) -> str:
    body = f"<p><code>{html.escape(hint)}</code></p>"
    if not runs:
        return body + missing("no MLflow runs found for this pipeline run")
    cells = []
    for r in runs:
        link = r.get("url")
        rid = html.escape(r["run_id"])
        cells.append({"stage": r["stage"], "run id": rid, "status": r.get("status", "")}
                     | ({"link": link} if link else {}))
    out = table(cells)
    for r in runs:  # make links clickable (table() escapes cell text)
        if r.get("url"):
            u = html.escape(r["url"])
            out = out.replace(f"<td>{u}</td>", f"<td><a href='{u}'>open</a></td>")
    return body + out


def build_report(*, title: str, verdict: str | None, stages: dict[str, dict], manifests: dict[str, dict | None],
                 curve: list[dict] | None, confusion: list[dict] | None, per_class: list[dict] | None,
                 trials: list[dict] | None, network: str, pipeline: dict[str, float], mlflow_hint: str,
                 evaluation: dict | None = None, images: dict[str, bytes] | None = None,
                 label_suspects: list[dict] | None = None, suspects_file: str = "label_suspects.jsonl",
                 mlflow_runs: list[dict] | None = None, snippets: dict[str, str] | None = None) -> str:
    """The whole page from the pipeline's outputs; a section whose inputs are missing says so.

    ``images``: PNG bytes by name (confusion, reliability, confident_wrong, attributions,
    label_suspects, near_misses, near_groups); ``evaluation``: the evaluate stage's evaluation.json;
    ``snippets``: text rows by id (near-duplicate pairs and groups of a text dataset).
    """
    images = images or {}
    split = manifests.get("split") or {}
    base = stages.get("baseline", {})
    base_rows = [{"model": m, **{k: base.get(f"baseline/{m}/{k}", float("nan"))
                                 for k in ("val/acc", "test/acc", "test/f1_macro", "fit_s", "cost/usd")}}
                 for m in sorted({k.split("/")[1] for k in base if k.endswith("/fit_s")})]
    ev = stages.get("evaluate", {})
    if ev and "train" in stages:
        base_rows.append({"model": f"network ({network})", "val/acc": stages["train"].get("val/acc", float("nan")),
                          "test/acc": ev["test/acc"], "test/f1_macro": ev["test/f1_macro"],
                          "fit_s": stages["train"]["cost/wall_s"] + stages.get("tune", {}).get("cost/wall_s", 0.0),
                          "cost/usd": stages["train"]["cost/usd"] + stages.get("tune", {}).get("cost/usd", 0.0)})
    cost_rows = [{"stage": s, "wall_s": m.get("cost/wall_s", 0.0), "cpu_hours": m.get("cost/cpu_hours", 0.0),
                  "cpu_util": m.get("cost/cpu_util", 0.0), "usd": m.get("cost/usd", 0.0)} for s, m in stages.items()]
    cost_rows.append({"stage": "total", "wall_s": pipeline["pipeline/wall_s"],
                      "cpu_hours": pipeline["pipeline/cpu_hours"], "usd": pipeline["pipeline/cost/usd"]})
    return render(title, [
        ("Data", _data_section(manifests, label_suspects, images.get("label_suspects"), suspects_file)),
        ("Split and leakage check", _split_section(split, stages.get("split", {}), images, snippets)),
        ("Learning curves and overfitting gap", _curve_section(curve, stages.get("train", {}))),
        ("Tuning trials", _trials_section(trials)),
        ("Baselines vs network", _verdict_section(base_rows, evaluation)),
        ("Test metrics and calibration", _test_section(ev, evaluation, images, confusion, split.get("classes"))),
        ("Per class", table(per_class) if per_class else None),
        ("Attributions", _attribution_section(evaluation, images.get("attributions"))),
        ("Cost per stage", table(cost_rows)),
        ("MLflow runs", _mlflow_section(mlflow_hint, mlflow_runs)),
    ], verdict=verdict)
