"""What a sweep produced, as plain rows: per-trial summary, overfitting verdict, Pareto front, and
the sweep's summary (the tune stage's log lines and ``tune/*`` metrics).

Pure functions of each trial's per-epoch history (no Ray), so they are tested directly.
"""

from __future__ import annotations

import math
import statistics

from trainwise.components.tracking.cost import Rates, reserved_cost


def is_overfit(history: list[dict], *, patience: int) -> bool:
    """val/loss stayed above its best for the last ``patience`` epochs while train/loss kept
    falling: the model was fitting the training set at the validation set's expense."""
    if len(history) <= patience:
        return False
    losses = [h["val/loss"] for h in history]
    best = losses.index(min(losses))
    epochs_after_best = len(history) - 1 - best
    return epochs_after_best >= patience and history[-1]["train/loss"] < history[best]["train/loss"]


# What a trial's history keeps of a row: its metrics ("train/loss", ...) and these.
HISTORY_KEYS = ("epoch", "epoch_s", "samples_per_s", "objective", "time_total_s")


def trial_history(ran: list[dict], reported: list[dict], *, metric: str, mode: str) -> list[dict]:
    """One row per epoch the trial trained, each once, in order, with ``objective`` (the best
    ``metric`` so far, what the sweep reported).

    ``ran``: the history in the trial's latest checkpoint, every epoch it trained across pauses and
    resumes. ``reported``: what Tune recorded (its result.json). That record is not whole: when
    ordered ASHA resumes a paused trial, Tune restores the trial's result.json from its last copy
    in storage, which can predate the epochs before the pause (seen: a trial that ran 8 epochs
    recorded 3-8 only). Tune-only keys (``time_total_s``) come from the report of that epoch where
    there is one. Without a checkpoint (none saved, or deleted), the report is all there is.
    """
    by_epoch = {int(r["epoch"]): r for r in reported}
    rows = [{**{k: v for k, v in by_epoch.get(int(h["epoch"]), {}).items() if k == "time_total_s"},
             **{k: v for k, v in h.items() if "/" in k or k in HISTORY_KEYS}} for h in ran] \
        if ran else [dict(by_epoch[e]) for e in sorted(by_epoch)]
    better, best = (min if mode == "min" else max), None
    for r in rows:
        best = r[metric] if best is None else better(best, r[metric])
        r["objective"] = best
    return rows


def stopped_by(*, epochs: int, max_epochs: int, error: bool, budget: bool, scheduler: str) -> str:
    if error:
        return "error"
    if budget:
        return "budget" if epochs else "budget (never started)"
    if epochs >= max_epochs:
        return "max_epochs"
    return "asha" if scheduler == "asha" else "interrupted"


def trial_row(trial: str, config: dict, history: list[dict], *, metric: str, mode: str, patience: int,
              usd_per_hour: float, **outcome) -> dict:
    """One row of the trials table: config, best epoch's metric, epochs run, why it stopped,
    final train/val gap, overfit verdict, wall time and cost."""
    row = {"trial": trial, **config, "epochs": len(history),
           "stopped_by": stopped_by(epochs=len(history), **outcome), "status": "error" if outcome["error"] else "ok"}
    if not history:
        return {**row, "time_s": 0.0, "cost/usd": 0.0, "overfit": False}
    pick = min if mode == "min" else max
    best = pick(history, key=lambda h: h[metric])
    last = history[-1]
    time_s = float(last.get("time_total_s", sum(h.get("epoch_s", 0.0) for h in history)))
    return {**row, "best_epoch": int(best["epoch"]), f"best_{metric}": float(best[metric]),
            "val/acc": float(best["val/acc"]), "gap/acc": float(last["gap/acc"]),
            "gap/loss": float(last["val/loss"] - last["train/loss"]),
            "overfit": is_overfit(history, patience=patience),
            "time_s": time_s, "cost/usd": time_s / 3600 * usd_per_hour}


def pareto_rows(rows: list[dict], *, metric: str, mode: str) -> list[dict]:
    """Cost vs best metric per trial that reported, cheapest first; ``pareto`` marks the
    trials no other trial beats on both (cheaper and at least as good, or as cheap and better)."""
    key = f"best_{metric}"
    pts = sorted((r for r in rows if key in r and not math.isnan(r[key])), key=lambda r: (r["cost/usd"], r[key]))
    better = (lambda a, b: a < b) if mode == "min" else (lambda a, b: a > b)
    out, best_so_far = [], None
    for r in pts:
        front = best_so_far is None or better(r[key], best_so_far)
        if front:
            best_so_far = r[key]
        out.append({"trial": r["trial"], "cost/usd": r["cost/usd"], key: r[key], "val/acc": r["val/acc"],
                    "epochs": r["epochs"], "pareto": front})
    return out


def curve_rows(histories: dict[str, list[dict]]) -> list[dict]:
    """Every trial's learning curve in one long table (trial, epoch, losses, accuracies, gap)."""
    cols = ("train/loss", "val/loss", "train/acc", "val/acc", "gap/acc")
    return [{"trial": t, "epoch": int(h["epoch"]), **{c: h[c] for c in cols if c in h}}
            for t, hist in histories.items() for h in hist]


def plot_pareto(points: list[dict], path, *, metric: str, title: str = "tune: cost vs metric") -> None:
    """PNG of cost vs best metric, the Pareto front joined by a step line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key = f"best_{metric}"
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    ax.scatter([p["cost/usd"] for p in points], [p[key] for p in points], c="tab:gray", label="trial")
    front = [p for p in points if p["pareto"]]
    ax.step([p["cost/usd"] for p in front], [p[key] for p in front], where="post", c="tab:red",
            marker="o", label="Pareto front")
    for p in front:
        ax.annotate(p["trial"].removeprefix("trial_"), (p["cost/usd"], p[key]), fontsize=7,
                    textcoords="offset points", xytext=(4, 4))
    ax.set_xlabel("trial cost (USD)")
    ax.set_ylabel(f"best {metric}")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    tmp = f"{path}.tmp.png"
    fig.savefig(tmp)
    plt.close(fig)
    import os

    os.replace(tmp, path)


# -- the sweep's summary: what the tune stage logs and records -------------------------------------

def add_reserved_cost(rows: list[dict], *, cpus: float, gpus: float, nodes: float, rates: Rates,
                      gpu_type: str | None) -> None:
    """Each row gets cost/wall_s, cost/cpu_hours, ... of the resources its trial held, beside the
    cost/usd it already has (what the budget counted)."""
    for row in rows:
        held = reserved_cost(row.get("time_s", 0.0), cpus=cpus, gpus=gpus, nodes=nodes, rates=rates,
                             gpu_type=gpu_type)
        row.update({k: v for k, v in held.items() if k != "cost/usd"})


def best_trial(rows: list[dict], *, metric: str, mode: str) -> dict | None:
    """The row of the trial with the best ``best_<metric>`` among those that ran; None if none did."""
    key = f"best_{metric}"
    ok = [r for r in rows if r["status"] == "ok" and key in r]
    return (min if mode == "min" else max)(ok, key=lambda r: r[key]) if ok else None


def trial_line(row: dict, *, space_keys: list[str], metric: str) -> str:
    """One trial, on one line of the stage's log."""
    r = row
    return "%s %s epochs=%d stopped_by=%s best %s=%s gap/acc=%s%s $%.6f" % (
        r["trial"], {k: (f"{r[k]:.3g}" if isinstance(r[k], float) else r[k]) for k in space_keys}, r["epochs"],
        r["stopped_by"], metric, f"{r.get(f'best_{metric}', float('nan')):.4f}",
        f"{r.get('gap/acc', float('nan')):+.3f}", "  OVERFIT" if r["overfit"] else "", r["cost/usd"])


def spend_line(rows: list[dict], *, num_samples: int, budget_usd: float | None, exhausted_by: str | None) -> str:
    """What the sweep spent and how many trials the budget stopped or never started."""
    spent = sum(r["cost/usd"] for r in rows)
    never = num_samples - sum(1 for r in rows if r["epochs"])
    by_budget = sum(1 for r in rows if r["stopped_by"] == "budget")
    return "spent $%.6f on trials%s; %d of %d trials ran, %d stopped by the budget, %d never started%s" % (
        spent, f" of a ${budget_usd:g} budget" if budget_usd else "", num_samples - never, num_samples, by_budget,
        never, f" (budget spent: {exhausted_by})" if exhausted_by else "")


def startup_metrics(startup_s: list[float]) -> dict[str, float]:
    if not startup_s:
        return {}
    return {"tune/trial_startup_s_median": statistics.median(startup_s), "tune/trial_startup_s_max": max(startup_s),
            "tune/trial_starts": len(startup_s)}


def sweep_metrics(rows: list[dict], histories: dict[str, list[dict]], best: dict, *, metric: str, num_samples: int,
                  monitor, resumed: bool, repeatable: bool, sweep_wall_s: float, concurrent: int) -> dict:
    """The tune stage's ``tune/*`` metrics. ``monitor``: the sweep's trainwise.components.tuning.budget.SweepMonitor;
    ``repeatable``: no note says the same params can give another sweep."""
    never = num_samples - sum(1 for r in rows if r["epochs"])
    by_budget = sum(1 for r in rows if r["stopped_by"] == "budget")
    return {"tune/trials": len(rows), "tune/failed_trials": sum(r["status"] == "error" for r in rows),
            "tune/trial_epochs": sum(r["epochs"] for r in rows),
            "tune/asha_stopped_trials": sum(r["stopped_by"] == "asha" for r in rows),
            # a trial at a rung before an earlier trial: it waited, paused (components/tuning/ordered_asha.py)
            "tune/asha_pauses": getattr(monitor.scheduler, "num_paused", 0),
            "tune/overfit_trials": sum(bool(r["overfit"]) for r in rows),
            "tune/budget_stopped_trials": by_budget, "tune/skipped_trials": never,
            "tune/spent_usd": sum(r["cost/usd"] for r in rows),
            "tune/budget_exhausted": int(monitor.exhausted_by is not None),
            "tune/resumed": int(resumed),
            # 1: these params give these trials on every run (the wall and cost figures aside)
            "tune/repeatable": int(repeatable and not resumed and monitor.exhausted_by is None),
            # Tune's overhead = sweep wall against the time trials spent in epochs (benchmarks/pipeline_stages.py)
            "tune/sweep_wall_s": sweep_wall_s,
            "tune/trial_epochs_s": sum(e.get("epoch_s", 0.0) for h in histories.values() for e in h),
            "tune/concurrent_trials": concurrent,
            # per trial start (new actor, reused actor, resume): Tune's start to its first
            # epoch, less the epoch; the first trials pay a new actor's process and imports
            **startup_metrics(monitor.startup_s),
            **({"tune/first_actors_start_s": max(monitor.first_start_wait_s[:concurrent])}
               if monitor.first_start_wait_s else {}),
            f"tune/best/{metric}": best[f"best_{metric}"], "tune/best/val/acc": best["val/acc"]}
