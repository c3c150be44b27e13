"""A real two-node Ray cluster on this machine, for tests: started with `ray start`, stopped by
the processes it started (never a machine-wide `ray stop`, which would kill other Rays)."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LocalCluster:
    gcs_address: str
    jobs_address: str
    env: dict[str, str]        # what a client (submitter, state API) needs: token auth
    temp_dirs: list[Path]


def _ray(args: list[str], env: dict[str, str]) -> str:
    ray_bin = str(Path(sys.executable).parent / "ray")
    # generous: on a 2-core machine shared with other work, `ray start` has taken over 2 minutes
    proc = subprocess.run([ray_bin, "start", *args], env=env, capture_output=True, text=True, timeout=420)
    if proc.returncode != 0:
        raise RuntimeError(f"ray start {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc.stdout + proc.stderr


def _started_by(markers: list[str]) -> list[psutil.Process]:
    """Processes whose command line names one of our temp dirs, and all their descendants."""
    found: dict[int, psutil.Process] = {}
    for proc in psutil.process_iter(["cmdline"]):
        try:
            cmd = " ".join(proc.info["cmdline"] or [])
            if any(m in cmd for m in markers):
                found[proc.pid] = proc
                for child in proc.children(recursive=True):
                    found[child.pid] = child
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return list(found.values())


def stop(markers: list[str], timeout: float = 10.0) -> None:
    procs = _started_by(markers)
    for p in procs:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=timeout)


@contextmanager
def local_cluster(tmp: Path, *, head_cpus: int = 1, worker_cpus: int = 1):
    """A head node and one worker node, each with its own temp dir (two nodes sharing one temp
    dir also share runtime-env files, and one node's cleanup deletes the other's working_dir)."""
    tmp.mkdir(parents=True, exist_ok=True)
    head_dir, worker_dir = tmp / "head", tmp / "worker"
    # A token of our own: token auth is on by default in Ray >= 2.60, and a test must not depend
    # on (or write) ~/.ray/auth_token.
    # RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER: left by an in-process Ray of this test process (init_ray);
    # with it, `ray start --address` refuses to add a node.
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(16), RAY_USAGE_STATS_ENABLED="0",
               # jobs run `python ...`: this interpreter, as on a cluster whose image has the project
               PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
               # Ray Train gives a worker group 60 s to start, then tears it down and retries; on a
               # busy 2-core machine starting two nodes' workers can take longer. Every process of
               # the cluster (raylets, the job's driver, Train controllers) inherits this.
               RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S="600",
               # `ray start --head` gives up when the dashboard is not up in 60 s: seen on the loaded machine
               RAY_DASHBOARD_STARTUP_TIMEOUT_S="300")
    markers = [str(head_dir), str(worker_dir)]
    try:
        for attempt in range(3):
            # Ray gives a starting node a fixed 30 s to register with the GCS; on an overloaded machine
            # it can miss that. Then stop what this attempt started and try again on fresh ports.
            port, dash = free_port(), free_port()
            try:
                _ray(["--head", "--node-ip-address=127.0.0.1", f"--port={port}", f"--num-cpus={head_cpus}",
                      f"--temp-dir={head_dir}", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
                      f"--dashboard-port={dash}", f"--dashboard-agent-listen-port={free_port()}",
                      f"--ray-client-server-port={free_port()}", "--disable-usage-stats"], env)
                break
            except (RuntimeError, subprocess.TimeoutExpired):
                stop([str(head_dir)])
                if attempt == 2:
                    raise
        gcs = f"127.0.0.1:{port}"
        for attempt in range(3):  # the same 30 s registration window as the head's
            try:
                _ray([f"--address={gcs}", "--node-ip-address=127.0.0.1", f"--num-cpus={worker_cpus}",
                      f"--temp-dir={worker_dir}", f"--dashboard-agent-listen-port={free_port()}",
                      '--resources={"second_node": 1}'], env)
                break
            except (RuntimeError, subprocess.TimeoutExpired):
                stop([str(worker_dir)])
                if attempt == 2:
                    raise
        cluster = LocalCluster(gcs_address=gcs, jobs_address=f"http://127.0.0.1:{dash}", env=env,
                               temp_dirs=[head_dir, worker_dir])
        _wait_for_nodes(cluster, 2)
        yield cluster
    finally:
        stop(markers)


def _wait_for_nodes(cluster: LocalCluster, n: int, timeout: float = 300.0) -> None:
    code = ("import ray; ray.init(address=%r, logging_level='ERROR'); "
            "print(sum(1 for x in ray.nodes() if x['Alive']))" % cluster.gcs_address)
    deadline = time.monotonic() + timeout
    while True:
        out = subprocess.run([sys.executable, "-c", code], env=cluster.env, capture_output=True, text=True)
        if out.returncode == 0 and out.stdout.strip().splitlines()[-1:] == [str(n)]:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"cluster did not reach {n} nodes: {out.stdout[-500:]} {out.stderr[-1500:]}")
        time.sleep(1)
