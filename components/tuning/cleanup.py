"""Free the CPUs of Ray Train worker groups whose trial was stopped.

When Tune stops a trial (ASHA, the budget), the trial's actor and with it its Train
controller and workers are killed; the worker group's placement group then stays reserved
until Ray Train's PlacementGroupCleaner removes it. That cleaner finds its cluster through the
state API's address auto-detection, which fails with "Found multiple active Ray instances"
whenever more than one in-process Ray runs on the machine (parallel test sessions, CI, a
shared workstation). Each stopped trial then keeps its CPUs until the sweep ends, and after a
few the next trial's worker group never starts. The driver knows its own cluster, so the sweep
removes such orphans itself: a placement group whose Train workers all died.

Only this sweep's own groups: on a shared cluster other jobs' Train runs look the same (their
workers die too), and removing their groups would pull resources from under them. Ray records
the job that created each placement group; the worker groups of this sweep's trials are created
by Train controllers that the trials started, all in this driver's Ray job. So both the actors
and the groups are filtered by this job's id.
"""

from __future__ import annotations

import logging
from collections import defaultdict

log = logging.getLogger("trainwise")


def reap_orphaned_train_groups() -> int:
    """Remove placement groups that held Ray Train workers which are all dead; returns how many.

    A worker group still starting has no worker actors yet and is left alone; one that trains
    has live workers. Errors are logged, never raised: this is housekeeping.
    """
    import ray
    from ray._raylet import PlacementGroupID
    from ray.util.placement_group import PlacementGroup, remove_placement_group
    from ray.util.state import list_actors, list_placement_groups

    try:
        context = ray.get_runtime_context()
        job = context.get_job_id()
        actors = list_actors(address=context.gcs_address,
                             filters=[("class_name", "=", "RayTrainWorker"), ("job_id", "=", job)], detail=True,
                             limit=10_000, raise_on_missing_output=False)
        states = defaultdict(set)
        for a in actors:
            if a.placement_group_id:
                states[a.placement_group_id].add(a.state)
        ours = {g.placement_group_id for g in list_placement_groups(
            address=context.gcs_address, filters=[("creator_job_id", "=", job), ("state", "=", "CREATED")],
            limit=10_000, raise_on_missing_output=False)}
        removed = 0
        for pg_id, seen in states.items():
            if seen == {"DEAD"} and pg_id in ours:
                remove_placement_group(PlacementGroup(PlacementGroupID(bytes.fromhex(pg_id))))
                removed += 1
        if removed:
            log.info("freed %d placement group(s) left by finished or stopped trials", removed)
        return removed
    except Exception as err:  # noqa: BLE001 - housekeeping must not end the sweep
        log.debug("placement group clean-up skipped: %s", err)
        return 0


def reap_after_sweep(*, timeout_s: float = 30.0, every_s: float = 2.0) -> int:
    """After ``Tuner.fit`` returns, the last trials' workers die in the background; free their
    placement groups before another sweep in the same Ray needs the CPUs. Returns how many."""
    import time

    import ray
    from ray.util.state import list_actors

    removed, deadline = 0, time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        removed += reap_orphaned_train_groups()
        try:
            alive = list_actors(address=ray.get_runtime_context().gcs_address,
                                filters=[("class_name", "=", "RayTrainWorker"), ("state", "!=", "DEAD"),
                                         ("job_id", "=", ray.get_runtime_context().get_job_id())],
                                limit=10_000, raise_on_missing_output=False)
        except Exception:  # noqa: BLE001
            return removed
        if not alive:
            return removed + reap_orphaned_train_groups()
        time.sleep(every_s)
    return removed
