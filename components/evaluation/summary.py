"""The pipeline at a glance, from the stages' metrics files: what `trainwise run` prints."""

from __future__ import annotations

import json
from pathlib import Path

SUMMARY_BY_CLI_ENV = "TRAINWISE_SUMMARY_BY_CLI"
STAGES = ("ingest", "clean", "embed", "split", "audit", "baseline", "tune", "train", "evaluate")
EVALUATION_FILE = "evaluation.json"  # in paths.evaluate: verdict, calibration, confidently wrong, attributions


def collect(metrics_dir: str | Path) -> dict[str, dict]:
    """{stage: metrics} for every stage whose metrics file exists."""
    out = {}
    for stage in STAGES:
        p = Path(metrics_dir) / f"{stage}.json"
        if p.exists():
            out[stage] = json.loads(p.read_text())
    return out


def read_evaluation(evaluate_dir: str | Path) -> dict | None:
    """The evaluate stage's details (``paths.evaluate``/evaluation.json), or None before it has run."""
    p = Path(evaluate_dir) / EVALUATION_FILE
    try:
        return json.loads(p.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def read_verdict(evaluate_dir: str | Path) -> str | None:
    """The verdict sentence of the last evaluate run in this workspace."""
    ev = read_evaluation(evaluate_dir)
    return ev.get("verdict", {}).get("sentence") if ev else None


def best_baseline(baseline: dict) -> tuple[str, float]:
    """(name, test/acc) of the baseline with the best validation accuracy."""
    names = {k.split("/")[1] for k in baseline if k.startswith("baseline/") and k.endswith("/val/acc")}
    names.discard("best")
    if not names:
        raise ValueError("no baseline/<model>/val/acc metrics: run the baseline stage first")
    name = max(sorted(names), key=lambda m: baseline[f"baseline/{m}/val/acc"])  # ties: first by name, stably
    return name, baseline[f"baseline/{name}/test/acc"]


def totals(stages: dict[str, dict]) -> dict[str, float]:
    return {
        "pipeline/cost/usd": sum(m.get("cost/usd", 0.0) for m in stages.values()),
        "pipeline/wall_s": sum(m.get("cost/wall_s", 0.0) for m in stages.values()),
        "pipeline/cpu_hours": sum(m.get("cost/cpu_hours", 0.0) for m in stages.values()),
    }


def format_summary(stages: dict[str, dict], *, verdict: str | None, mlflow_hint: str,
                   report: str | Path | None = None) -> str:
    lines = ["", "== trainwise summary =="]
    ev = stages.get("evaluate", {})
    if "test/acc" in ev:
        lines.append(f"test accuracy      {ev['test/acc']:.4f}  (macro F1 {ev['test/f1_macro']:.4f})")
    if "baseline" in stages:
        name, acc = best_baseline(stages["baseline"])
        lines.append(f"best baseline      {name}: {acc:.4f}")
    if verdict:
        lines.append(f"verdict            {verdict}")
    t = totals(stages)
    per_stage = ", ".join(f"{s} {m.get('cost/wall_s', 0):.0f}s" for s, m in stages.items())
    lines.append(f"cost               ${t['pipeline/cost/usd']:.4f} for {t['pipeline/cpu_hours']:.3f} "
                 f"reserved CPU-hours, {t['pipeline/wall_s']:.0f}s of stage time ({per_stage})")
    lines.append(f"MLflow             {mlflow_hint}")
    if report:
        lines.append(f"report             {report}")
    return "\n".join(lines) + "\n"
