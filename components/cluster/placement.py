"""What fits where on a Ray cluster, counted per node, and a bound on waiting for it.

Ray places a group of workers (a placement group: one bundle per worker) only when every
bundle finds a node with room for it. Counting CPUs over the whole cluster says nothing about
that: two 1-CPU nodes have 2 CPUs, yet once anything else holds 0.01 CPU on each, no 1-CPU
worker fits anywhere (issue 18: a sweep whose trial actors held 0.01 CPU per node waited
forever). So everything here counts per node:

- :func:`cluster_nodes` is the cluster's nodes as (resources, count): the node types an
  autoscaler may start (Ray publishes them in the GCS) or, without one, the nodes alive now;
- :func:`groups_that_fit` is how many groups of ``n`` identical bundles fit at once under a
  placement strategy; :func:`cannot_fit` says why one group never fits, or None;
- :func:`watch_placement` stops the stage (``trainwise.components.stage_exit.stop_stage``) when a placement
  group of this Ray job has been pending longer than ``ray.schedule_timeout_s``, naming the
  shape it asked for, the cluster's nodes, and the fixes.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from typing import Callable

log = logging.getLogger("trainwise")

Nodes = list[tuple[dict[str, float], int]]  # (a node's total resources, how many such nodes)

# Resources a node reports that say nothing about what a worker can get.
_HIDDEN = ("object_store_memory",)
# Room for rounding: Ray stores resources in units of 1e-4.
_EPS = 1e-6


def _shown(resources: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in resources.items()
            if k not in _HIDDEN and not k.startswith("node:") and "_group_" not in k and v}


def cluster_nodes() -> Nodes:
    """The nodes of the connected Ray cluster, grouped by shape.

    With an autoscaler that publishes its node types (Ray autoscaler v2, KubeRay), the nodes
    it may grow to (each type x its max count), so a shape that only fits on a node not started
    yet is not refused; otherwise the nodes alive now.
    """
    import ray

    try:
        config = ray._private.state.state.get_cluster_config()  # what Ray Train itself reads for this
    except Exception:  # noqa: BLE001 - older GCS, or not published: fall back to live nodes
        config = None
    groups = list(getattr(config, "node_group_configs", None) or [])
    if groups:
        # max_count < 0: no upper bound for that node type
        nodes = [({k: float(v) for k, v in g.resources.items()}, int(g.max_count) if g.max_count > 0 else 10**6)
                 for g in groups if g.max_count and g.resources]
        if nodes:
            return _merge(nodes)
    return _merge([({k: float(v) for k, v in n["Resources"].items()}, 1) for n in ray.nodes() if n.get("Alive")])


def _merge(nodes: Nodes) -> Nodes:
    """Group nodes of the same shape. Memory is left out of the shape (Ray sizes it from what is free
    when the node starts, so like machines differ a little) and the group keeps its smallest."""
    merged: dict[tuple, tuple[int, float]] = {}
    for res, count in nodes:
        key = tuple(sorted((k, v) for k, v in _shown(res).items() if k != "memory"))
        have, memory = merged.get(key, (0, float("inf")))
        merged[key] = (have + count, min(memory, res.get("memory", 0.0)))
    return [({**dict(k), **({"memory": m} if m else {})}, c) for k, (c, m) in sorted(merged.items())]  # stable order


def slots(node: dict[str, float], bundle: dict[str, float]) -> int:
    """How many ``bundle``s one node of total resources ``node`` holds at once."""
    need = {k: v for k, v in bundle.items() if v > 0}
    if not need:
        return 10**9
    return min(math.floor(node.get(k, 0.0) / v + _EPS) for k, v in need.items())


def groups_that_fit(nodes: Nodes, bundle: dict[str, float], n: int, strategy: str = "PACK") -> int:
    """How many groups of ``n`` x ``bundle`` (placement ``strategy``) the nodes hold at once.

    PACK and SPREAD are preferences: any bundle may go to any node, so what counts is the number
    of bundle-sized slots over all nodes. STRICT_PACK puts a whole group on one node;
    STRICT_SPREAD puts each bundle of a group on a different node.
    """
    if n <= 0:
        return 0
    per_node = [(slots(res, bundle), count) for res, count in nodes]
    if strategy == "STRICT_PACK":
        return sum((s // n) * c for s, c in per_node)
    total = sum(s * c for s, c in per_node)
    if strategy != "STRICT_SPREAD":
        return total // n
    # k groups fit iff the nodes can give each group n distinct nodes: sum(min(slots, k)) >= k * n
    k = 0
    while k < total // n and sum(min(s, k + 1) * c for s, c in per_node) >= (k + 1) * n:
        k += 1
    return k


def describe_bundle(bundle: dict[str, float]) -> str:
    return "{" + ", ".join(f"{k}: {_amount(k, v)}" for k, v in sorted(_shown(bundle).items())) + "}"


def describe_nodes(nodes: Nodes) -> str:
    """``2 x {CPU: 1}, 1 x {CPU: 8, GPU: 1}``: the nodes' shapes (memory left out, see _merge)."""
    if not nodes:
        return "no nodes"
    return ", ".join(f"{c} x {describe_bundle({k: v for k, v in res.items() if k != 'memory'})}"
                     for res, c in nodes)


def describe_group(bundle: dict[str, float], n: int, strategy: str) -> str:
    return f"{n} x {describe_bundle(bundle)} ({strategy})"


def _amount(key: str, value: float) -> str:
    if key == "memory":
        return f"{value / 2**30:.3g} GiB"
    return f"{value:g}"


def cannot_fit(nodes: Nodes, bundle: dict[str, float], n: int, strategy: str = "PACK") -> str | None:
    """Why one group of ``n`` x ``bundle`` can never be placed on these nodes, or None."""
    if groups_that_fit(nodes, bundle, n, strategy) >= 1:
        return None
    best = max((slots(res, bundle) for res, _ in nodes), default=0)
    most = groups_that_fit(nodes, bundle, 1, "PACK")
    if best == 0:
        where = "no node has room for even one of them"
    elif strategy == "STRICT_PACK":
        where = f"STRICT_PACK needs one node for all {n}; the largest node holds {best}"
    elif strategy == "STRICT_SPREAD":
        where = f"STRICT_SPREAD needs {n} different nodes with room for one each"
    else:
        where = f"the cluster's nodes hold at most {most} of them at once"
    return (f"asks for {describe_group(bundle, n, strategy)} at once, but the Ray cluster's nodes are "
            f"{describe_nodes(nodes)}: {where}")


# --- bounded waiting ------------------------------------------------------------------------

FIXES = ("fewer workers per trial or run (tune.workers_per_trial, train.num_workers) or fewer CPUs/GPUs "
         "per worker, bigger nodes (or more of them), or lower tune.max_concurrent_trials; if the cluster "
         "is only busy with other work, raise ray.schedule_timeout_s")


def _free_per_node() -> str:
    import ray

    try:
        free = ray._private.state.available_resources_per_node()  # the numbers `ray status` prints
        totals = {n["NodeID"]: n for n in ray.nodes() if n.get("Alive")}
    except Exception:  # noqa: BLE001 - only decorates the message
        return ""
    parts = []
    for node_id, node in totals.items():
        have = {k: v for k, v in free.get(node_id, {}).items() if k in ("CPU", "GPU")}
        total = {k: v for k, v in node["Resources"].items() if k in ("CPU", "GPU")}
        parts.append(f"{node.get('NodeManagerAddress', node_id[:8])}: "
                     + ", ".join(f"{have.get(k, 0):g}/{v:g} {k}" for k, v in sorted(total.items())))
    return "; free now: " + "; ".join(parts) if parts else ""


def pending_message(group: dict, waited_s: float, timeout_s: float) -> str:
    """The error for a placement group that waited too long (``group``: a state-API row)."""
    bundles = [b.get("unit_resources", {}) for b in group.get("bundles") or []]
    shape = (describe_group(bundles[0], len(bundles), group.get("strategy", "PACK"))
             if bundles and all(b == bundles[0] for b in bundles)
             else ", ".join(describe_bundle(b) for b in bundles) + f" ({group.get('strategy', 'PACK')})")
    why = (group.get("stats") or {}).get("scheduling_state", "")
    said = {"INFEASIBLE": "Ray says no node can ever hold it",
            "NO_RESOURCES": "Ray says the nodes that could hold it are busy"}.get(why, f"Ray's state: {why or '?'}")
    return (f"a placement group of this stage, {shape}, waited {waited_s:.0f}s for resources "
            f"(ray.schedule_timeout_s={timeout_s:g}); {said}. The cluster's nodes: "
            f"{describe_nodes(cluster_nodes())}{_free_per_node()}. Fix: {FIXES}")


def pending_groups(job_id: str) -> list[dict]:
    """This job's placement groups that are waiting for resources (state API rows as dicts)."""
    import ray
    from ray.util.state import list_placement_groups

    rows = list_placement_groups(address=ray.get_runtime_context().gcs_address,
                                 filters=[("creator_job_id", "=", job_id), ("state", "=", "PENDING")],
                                 detail=True, limit=10_000, raise_on_missing_output=False)
    return [r if isinstance(r, dict) else r.__dict__ for r in rows]


def watch_placement(timeout_s: float, *, stop: Callable[[str], None], every_s: float = 5.0,
                    clock: Callable[[], float] = time.monotonic) -> threading.Thread:
    """Call ``stop(message)`` once a placement group of this Ray job has been pending for
    ``timeout_s`` (a daemon thread; returns it). Pending time is counted from when this watcher
    first saw the group, on this process's clock (no cross-machine clock skew).

    Placement groups are where a stage waits on resources: Ray Train reserves its worker group
    in one, Tune each trial's resources. The stages keep them from queueing behind each other
    (concurrency is capped to what fits per node), so one pending this long means the cluster
    cannot give the shape now: too big for any node, or held by other work.
    """
    import ray

    job_id = ray.get_runtime_context().get_job_id()
    first_seen: dict[str, float] = {}

    def watch() -> None:
        # ends with the Ray session it watches (a later ray.init in this process is another job)
        while ray.is_initialized() and ray.get_runtime_context().get_job_id() == job_id:
            try:
                pending = pending_groups(job_id)
            except Exception as err:  # noqa: BLE001 - a state-API hiccup is not a reason to stop
                log.debug("placement watch: %s", err)
                pending = None
            if pending is not None:
                now = clock()
                ids = {g["placement_group_id"] for g in pending}
                for pg_id in list(first_seen):
                    if pg_id not in ids:
                        del first_seen[pg_id]
                for g in pending:
                    waited = now - first_seen.setdefault(g["placement_group_id"], now)
                    if waited >= timeout_s:
                        stop(pending_message(g, waited, timeout_s))
                        return
            time.sleep(every_s)

    thread = threading.Thread(target=watch, name="trainwise-placement-watch", daemon=True)
    thread.start()
    return thread
