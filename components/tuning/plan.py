"""The sweep's plan once the cluster is known: how many trials run at once, what one costs.

The tune stage builds :class:`~trainwise.components.tuning.sweep.SweepOptions` from params, starts Ray, and
hands the cluster's nodes here; :func:`plan_sweep` fits the trials to the nodes (a trial's workers
each need a node with room for a whole worker: one worker is the trial actor itself; more are their
Train placement group, beside a trial actor that holds no CPU, see components/tuning/sweep.py) and
prices one trial as the stage is priced (components/tracking/cost.py: GPU type, node rate), with its
share of the node-hours the stage reserves: trials at once split the node between them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from trainwise.components.cluster.placement import cannot_fit, groups_that_fit
from trainwise.components.tracking.cost import Rates
from trainwise.components.tuning.budget import trial_gpu_type, trial_usd_per_hour
from trainwise.components.tuning.sweep import SweepOptions


class SweepDoesNotFit(ValueError):
    """Not even one trial fits on the cluster's nodes; the message says why."""


@dataclass(frozen=True)
class SweepPlan:
    options: SweepOptions          # max_concurrent_trials fitted to the nodes, usd_per_trial_hour set
    worker: dict[str, float]       # one trial worker's resources ({"CPU": n[, "GPU": 1]})
    fits: int                      # trials the nodes hold at once
    gpu_type: str | None           # the trials' GPU type, for their price (None: no GPU)
    node_share: float              # one trial's share of the nodes the stage reserves
    repeatability_note: str | None  # why the same params can give another sweep, or None


def repeatability_note(*, scheduler: str, workers_per_trial: int, max_concurrent_trials: int) -> str | None:
    """What to tell the user when the same params.yaml can give a different sweep, else None.

    One-worker trials use the ordered ASHA (the same decisions at any concurrency); multi-worker
    trials keep Ray's, whose decisions depend on which trial reports first (docs/tuning.md)."""
    if scheduler == "asha" and workers_per_trial > 1 and max_concurrent_trials > 1:
        return (f"note: with tune.workers_per_trial={workers_per_trial} and {max_concurrent_trials} trials at once, "
                "ASHA judges each trial against whatever the others have reported so far, so the same params can "
                "stop different trials from one run to the next; for a repeatable sweep set "
                "tune.max_concurrent_trials: 1 or tune.scheduler: fifo (docs/tuning.md)")
    return None


def plan_sweep(options: SweepOptions, nodes: list[tuple[dict[str, float], int]], *, workers_per_trial: int,
               cpus_per_worker: float, use_gpu: bool, rates: Rates, nodes_reserved: float,
               fallback_gpu_type: str | None) -> SweepPlan:
    """Fit ``options`` to ``nodes`` (trainwise.components.cluster.placement.cluster_nodes): at most as many
    trials at once as the nodes hold (more would only queue for workers, and run into
    ray.schedule_timeout_s), each priced per hour. Raises :class:`SweepDoesNotFit` when not one fits.
    ``nodes_reserved``: the nodes the stage is billed for; ``fallback_gpu_type``: the stage
    machine's own GPU, when the cluster reports none."""
    worker = {"CPU": cpus_per_worker, **({"GPU": 1} if use_gpu else {})}
    why = cannot_fit(nodes, worker, workers_per_trial)
    if why:
        raise SweepDoesNotFit(why)
    fits = groups_that_fit(nodes, worker, workers_per_trial)
    if fits < options.max_concurrent_trials:
        options = replace(options, max_concurrent_trials=fits)
    gpu_type = trial_gpu_type(nodes, rates, fallback=fallback_gpu_type) if use_gpu else None
    node_share = nodes_reserved / options.max_concurrent_trials
    options = replace(options, usd_per_trial_hour=trial_usd_per_hour(
        workers=workers_per_trial, cpus_per_worker=cpus_per_worker, use_gpu=use_gpu, node_share=node_share,
        rates=rates, gpu_type=gpu_type))
    note = repeatability_note(scheduler=options.scheduler, workers_per_trial=workers_per_trial,
                              max_concurrent_trials=options.max_concurrent_trials)
    return SweepPlan(options=options, worker=worker, fits=fits, gpu_type=gpu_type, node_share=node_share,
                     repeatability_note=note)
