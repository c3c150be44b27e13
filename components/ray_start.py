"""Start or join Ray, quietly by default (``init_ray``).

A stage's process lifecycle (the orphan watchdog, stopping from a watchdog, the fast exit) is in
:mod:`trainwise.components.stage_exit`.
"""

from __future__ import annotations

import logging
import os
import secrets
import sys
import time

from trainwise.components.stage_exit import stop_stage


class _DropRayletNoise:
    """A stdout wrapper that drops one known-harmless raylet warning and passes the rest.

    Every Tune trial starts short-lived actors (trial, Train controller, workers); on a small
    machine the raylet then prints "N PYTHON worker processes have been started ..." to the
    driver's stdout again and again. Ray has no switch for it (it is not a worker log, so
    ``log_to_driver=False`` keeps it), hence this narrow filter; all other raylet messages
    (OOM kills, failures) still show.
    """

    NOISE = "worker processes have been started on node"

    def __init__(self, stream):
        self._stream = stream
        self._swallow_newline = False

    def write(self, text: str) -> int:
        if self._swallow_newline and text == "\n":
            self._swallow_newline = False
            return len(text)
        self._swallow_newline = False
        if "(raylet)" in text and self.NOISE in text:
            self._swallow_newline = True
            return len(text)
        return self._stream.write(text)

    def __getattr__(self, name):
        return getattr(self._stream, name)


def ray_verbose(requested: bool = False) -> bool:
    return requested or os.environ.get("TRAINWISE_RAY_VERBOSE", "") not in ("", "0", "false")


# Ray Train v2's controller collects each worker's `ray.train.report` by polling every
# RAY_TRAIN_HEALTH_CHECK_INTERVAL_S (default 2 s), and a worker's result queue holds one
# report: every report waits up to one poll. With epochs shorter than that (digits: 0.3 s),
# the poll, not the training, sets the pace (benchmarks/report_poll.py measures it).
POLL_ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"


def init_ray(*, address: str | None = None, num_cpus: int | None = None, verbose: bool = False,
             train_poll_s: float | None = None, schedule_timeout_s: float | None = None,
             object_store_memory: int | None = None) -> dict:
    """``ray.init`` in-process, or join the cluster named by ``RAY_ADDRESS`` / ``address``.

    Returns the cluster's resources. With ``verbose`` false, worker logs stay out of the
    terminal (they remain in Ray's session logs under /tmp/ray). ``train_poll_s`` sets how
    often Ray Train's controller polls its workers, for every actor of this job (an explicit
    RAY_TRAIN_HEALTH_CHECK_INTERVAL_S in the environment wins); None keeps Ray's default.
    ``schedule_timeout_s`` (``ray.schedule_timeout_s``) bounds how long any placement group
    of this process's Ray job may wait for resources: then the stage stops with an error naming
    the shape and the cluster's nodes (trainwise.components.cluster.placement.watch_placement).
    ``object_store_memory`` (bytes) sizes an in-process Ray's object store (None: Ray's default,
    30% of the memory); ignored when joining a cluster.
    """
    import ray

    verbose = ray_verbose(verbose)
    if not verbose:
        # Train v2 / Tune print progress tables and worker chatter; trainwise prints its own.
        os.environ.setdefault("RAY_DEDUP_LOGS", "1")
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
        os.environ.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")
        logging.getLogger("ray").setLevel(logging.ERROR)
        if not isinstance(sys.stdout, _DropRayletNoise):
            sys.stdout = _DropRayletNoise(sys.stdout)
    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS") or address
        kwargs = dict(log_to_driver=verbose, logging_level=logging.INFO if verbose else logging.ERROR)
        poll = os.environ.get(POLL_ENV) or (str(train_poll_s) if train_poll_s else None)
        if poll:
            kwargs["runtime_env"] = {"env_vars": {POLL_ENV: poll}}
        if address:
            ray.init(address=address, **kwargs)
        else:
            # Ray starts its workers at niceness 15, so on a machine doing anything else (the
            # stage's own driver, MLflow logging, the user's editor) the workers that do all of
            # this job's training get the leftovers: benchmarks/train_throughput measured a
            # 1-worker fit at 0.5x the plain loop's samples/s on a busy machine. The in-process
            # node serves this job alone, so its workers run at the driver's priority (what Ray's
            # own job supervisor does for job drivers). An explicit RAY_worker_niceness wins; a
            # cluster's nodes keep whatever `ray start` gave them.
            os.environ.setdefault("RAY_worker_niceness", "0")
            _local_only()
            if object_store_memory:
                kwargs["object_store_memory"] = int(object_store_memory)
            _start_local_ray(ray, num_cpus=num_cpus, dashboard_host=LOOPBACK, **kwargs)
    job = ray.get_runtime_context().get_job_id()
    if schedule_timeout_s and _placement_watch.get(job) is None:
        from trainwise.components.cluster.placement import watch_placement

        _placement_watch[job] = watch_placement(schedule_timeout_s, stop=stop_stage)
    return ray.cluster_resources()


LOOPBACK = "127.0.0.1"
# Ray's switch for nodes that only this machine can reach when "0" (its default on macOS / Windows).
LOCAL_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def _local_only() -> None:
    """Make the in-process Ray reachable from this machine only, and only with a token.

    It serves this one stage, yet on Linux Ray binds its GCS, raylet, workers and agents to every
    interface (measured, Ray 2.60: `*`, every IPv4 address): anyone who can reach the machine could submit
    code to it. A node whose address is 127.0.0.1 binds all of them to loopback. ``ray.init``
    turns an explicit ``_node_ip_address="127.0.0.1"`` back into the machine's address; the
    address Ray picks itself is 127.0.0.1 when its multi-node switch is off. Ray reads the switch
    when it is imported (here, usually earlier), hence it is also set on the module; Ray hands the
    node's address to the processes it starts. The environment variable is for other drivers this
    process starts that join this Ray (they must look for it on 127.0.0.1 too); an explicit
    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=1 keeps Ray's behaviour. Loopback still lets other local
    users in: Ray 2.60 turns token authentication on for a cluster that ray.init starts, with a
    token it writes to ~/.ray/auth_token (mode 0644 under the usual umask; shared by every Ray of
    the account). A fresh token of this process's own, in its environment (/proc/PID/environ is
    readable by its user only; the processes Ray starts inherit it), is used instead, and nothing
    is written to the home directory. RAY_AUTH_MODE=disabled still turns authentication off; an
    explicit RAY_AUTH_TOKEN is kept.
    """
    from ray._private import ray_constants

    os.environ.setdefault(LOCAL_ONLY_ENV, "0")
    ray_constants.ENABLE_RAY_CLUSTER = ray_constants.env_bool(LOCAL_ONLY_ENV, False)
    os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))


# Ray gives a new local node a fixed 30 s to register with its GCS (ray/_private/node.py, not
# configurable); on a loaded machine that window is missed now and then and ray.init fails with
# "The current node timed out during startup". A second start almost always makes it.
LOCAL_START_ATTEMPTS = 3


def _start_local_ray(ray, *, num_cpus: int | None, attempts: int = LOCAL_START_ATTEMPTS, **kwargs) -> None:
    for attempt in range(1, attempts + 1):
        try:
            ray.init(num_cpus=num_cpus, **kwargs)
            return
        except Exception as err:  # Ray raises a bare Exception for this
            if "timed out during startup" not in str(err) or attempt == attempts:
                raise
            print(f"trainwise: Ray's local node missed its 30 s start-up window (a busy machine); "
                  f"starting it again ({attempt + 1} of {attempts})", file=sys.stderr, flush=True)
            ray.shutdown()
            time.sleep(2 * attempt)


_placement_watch: dict = {}  # Ray job id -> its watcher: one per job, however often init_ray is called
