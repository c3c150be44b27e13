"""Cost meter: what a stage (or a trial) held, for how long, how much of it was used, in dollars.

Two views, kept apart on purpose:

- *reserved*: the resources the work held (Ray workers x CPUs per worker, GPUs, nodes) times
  its wall time. This is what a cloud bill charges, so ``cost/usd`` is computed from it.
- *used*: what was measured: CPU seconds of this process and every process it started
  (psutil; in-process Ray's raylet and workers are descendants of the driver), and, when a GPU
  is visible through NVML, its utilisation and energy. ``cost/cpu_util`` = used / reserved
  tells how much of the reservation did work.

Every number comes from injectable clocks and probes, so tests run on a fake clock with exact
dollars.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping, Protocol

import psutil


@dataclass(frozen=True)
class Rates:
    """Prices in USD. ``gpu_hour_usd_by_type`` keys match a GPU's name case-insensitively as a
    substring (``"H100"`` matches ``"NVIDIA H100 80GB HBM3"``); ``gpu_hour_usd`` is the fallback."""

    cpu_hour_usd: float
    gpu_hour_usd: float
    gpu_hour_usd_by_type: Mapping[str, float] = field(default_factory=dict)
    node_hour_usd: float = 0.0

    def gpu_rate(self, gpu_type: str | None) -> float:
        if gpu_type:
            for key, rate in self.gpu_hour_usd_by_type.items():
                if key.lower() in gpu_type.lower():
                    return rate
        return self.gpu_hour_usd


def reserved_cost(wall_s: float, *, cpus: float, gpus: float = 0.0, nodes: float = 0.0, rates: Rates,
                  gpu_type: str | None = None) -> dict[str, float]:
    """``cost/*`` of holding ``cpus``/``gpus``/``nodes`` for ``wall_s`` seconds (no measurement).

    Used for Tune trials, whose resources are known from the trial's placement but whose
    processes live in Ray workers the driver does not watch.
    """
    if wall_s < 0 or cpus < 0 or gpus < 0 or nodes < 0:
        raise ValueError(f"reserved_cost needs non-negative inputs, got wall_s={wall_s} cpus={cpus} "
                         f"gpus={gpus} nodes={nodes}")
    cpu_h, gpu_h, node_h = cpus * wall_s / 3600, gpus * wall_s / 3600, nodes * wall_s / 3600
    return {
        "cost/wall_s": wall_s,
        "cost/cpu_hours": cpu_h,
        "cost/gpu_hours": gpu_h,
        "cost/node_hours": node_h,
        "cost/usd": cpu_h * rates.cpu_hour_usd + gpu_h * rates.gpu_rate(gpu_type) + node_h * rates.node_hour_usd,
    }


def busy_cpu_seconds() -> float:
    """Machine-wide busy CPU seconds (kept for callers that want the whole machine)."""
    t = psutil.cpu_times()
    return sum(getattr(t, f) for f in ("user", "nice", "system", "irq", "softirq", "steal") if hasattr(t, f))


class ProcessTreeCpu:
    """CPU seconds of a process and all its descendants, including ones that have exited.

    psutil only reports live processes, so each call remembers the largest CPU time seen per
    (pid, create_time); a process that exits keeps what it had when last seen. Sampling more
    often (the meter's background thread) loses less of short-lived children. Reaped direct
    children also show up in the root's ``children_user/children_system``; those are counted
    only for pids never seen alive, to avoid counting twice.
    """

    def __init__(self, pid: int | None = None):
        self._root = psutil.Process(pid)
        self._seen: dict[tuple[int, float], float] = {}
        self._lock = threading.Lock()

    def __call__(self) -> float:
        procs = [self._root]
        try:
            procs += self._root.children(recursive=True)
        except psutil.Error:
            pass
        with self._lock:
            for p in procs:
                try:
                    with p.oneshot():
                        key, t = (p.pid, p.create_time()), p.cpu_times()
                except psutil.Error:
                    continue
                cpu = t.user + t.system
                if cpu > self._seen.get(key, -1.0):
                    self._seen[key] = cpu
            return sum(self._seen.values())


class GpuProbe(Protocol):
    """What the meter needs from a GPU reader (NVML in production, a fake in tests)."""

    name: str | None
    count: int

    def utilisation(self) -> float: ...          # mean busy fraction over the visible GPUs, 0..1
    def energy_joules(self) -> float | None: ...  # cumulative, summed over GPUs; None if not reported


class NvmlProbe:
    """NVML through ``pynvml`` (package nvidia-ml-py); :func:`nvml_probe` returns None without it."""

    def __init__(self, pynvml):
        self._nv = pynvml
        n = pynvml.nvmlDeviceGetCount()
        self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(n)]
        self.count = n
        name = pynvml.nvmlDeviceGetName(self._handles[0]) if n else None
        self.name = name.decode() if isinstance(name, bytes) else name

    def utilisation(self) -> float:
        vals = [self._nv.nvmlDeviceGetUtilizationRates(h).gpu / 100 for h in self._handles]
        return sum(vals) / len(vals) if vals else 0.0

    def energy_joules(self) -> float | None:
        try:  # millijoules since the driver loaded (Volta and later)
            return sum(self._nv.nvmlDeviceGetTotalEnergyConsumption(h) for h in self._handles) / 1000
        except self._nv.NVMLError:
            return None


def nvml_probe() -> NvmlProbe | None:
    """An NVML reader when a GPU and the library are present; None otherwise (never raises)."""
    try:
        import pynvml

        pynvml.nvmlInit()
        probe = NvmlProbe(pynvml)
        return probe if probe.count else None
    except Exception:  # no library, no driver, no GPU: the meter reports CPU only
        return None


class CostMeter:
    """Reserved resources x wall time x rates, plus measured CPU (and GPU) use.

    ``start()`` begins the clock; ``sample()`` records GPU utilisation and the process tree's
    CPU time (call it periodically, or ``start(sample_every_s=...)`` for a daemon thread);
    ``read()`` returns the ``cost/*`` metrics so far.
    """

    def __init__(self, *, rates: Rates, cpus: float = 1.0, gpus: float = 0.0, nodes: float = 0.0,
                 clock: Callable[[], float] = time.monotonic,
                 cpu_clock: Callable[[], float] | None = None,
                 gpu: GpuProbe | None = None, gpu_type: str | None = None):
        self.rates, self.cpus, self.gpus, self.nodes = rates, cpus, gpus, nodes
        self._clock = clock
        self._cpu_clock = cpu_clock if cpu_clock is not None else ProcessTreeCpu()
        self.gpu = gpu
        self.gpu_type = gpu_type or (gpu.name if gpu else None)
        self._t0 = self._c0 = self._e0 = None
        self._gpu_busy_s = 0.0     # integral of utilisation x GPUs over time
        self._last_sample = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def reserve(self, *, cpus: float, gpus: float = 0.0, nodes: float | None = None,
                gpu_type: str | None = None) -> None:
        """Declare what the stage holds once it knows (e.g. after reading its params)."""
        self.cpus, self.gpus = cpus, gpus
        if nodes is not None:
            self.nodes = nodes
        if gpu_type:
            self.gpu_type = gpu_type

    def start(self, *, sample_every_s: float | None = None, from_process_start: bool = False) -> "CostMeter":
        """Start the clock now, or (``from_process_start``) backdated to when this process started,
        with CPU counted from zero: a stage's interpreter start and imports are part of its bill."""
        self._t0 = self._last_sample = self._clock()
        self._c0 = self._cpu_clock()
        if from_process_start:
            self._t0 -= max(0.0, time.time() - psutil.Process().create_time())
            self._last_sample = self._t0
            self._c0 = 0.0
        self._e0 = self.gpu.energy_joules() if self.gpu else None
        if sample_every_s:
            self._thread = threading.Thread(target=self._loop, args=(sample_every_s,), daemon=True,
                                            name="trainwise-cost-meter")
            self._thread.start()
        return self

    def _loop(self, every: float) -> None:
        while not self._stop.wait(every):
            try:
                self.sample()
            except Exception:  # a failed probe must never take the stage down
                pass

    def stop(self) -> None:
        self._stop.set()

    def sample(self) -> None:
        now = self._clock()
        self._cpu_clock()  # ProcessTreeCpu remembers children before they exit
        if self.gpu is not None and self._last_sample is not None:
            self._gpu_busy_s += self.gpu.utilisation() * self.gpu.count * (now - self._last_sample)
        self._last_sample = now

    def read(self) -> dict[str, float]:
        if self._t0 is None:
            raise RuntimeError("CostMeter.read() before start()")
        self.sample()
        wall = self._clock() - self._t0
        out = reserved_cost(wall, cpus=self.cpus, gpus=self.gpus, nodes=self.nodes, rates=self.rates,
                            gpu_type=self.gpu_type)
        used_h = max(0.0, self._cpu_clock() - self._c0) / 3600
        out["cost/cpu_hours_used"] = used_h
        out["cost/cpu_util"] = used_h / out["cost/cpu_hours"] if out["cost/cpu_hours"] > 0 else 0.0
        if self.gpu is not None:
            gpu_used_h = self._gpu_busy_s / 3600
            out["cost/gpu_hours_used"] = gpu_used_h
            out["cost/gpu_util"] = gpu_used_h / out["cost/gpu_hours"] if out["cost/gpu_hours"] > 0 else 0.0
            e1 = self.gpu.energy_joules()
            if self._e0 is not None and e1 is not None:
                out["cost/energy_kwh"] = max(0.0, e1 - self._e0) / 3.6e6
        return out

