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
from typing import Callable, Iterable, Mapping, Protocol

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


def process_tree_pids(pid: int | None = None) -> list[int]:
    """A process (default: this one) and all its live descendants: in-process Ray's raylet and workers
    are the driver's descendants, so these are the stage's processes on this machine."""
    try:
        root = psutil.Process(pid)
        return [root.pid, *(c.pid for c in root.children(recursive=True))]
    except psutil.Error:
        return []


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


def metered_devices(cuda_visible_devices: str | None, *, ray_gpu_ids: list | None = None) -> list[str] | None:
    """The GPUs a meter should read, as CUDA names them: ``ray_gpu_ids`` (what Ray assigned this worker,
    ``ray.get_gpu_ids()``) when given, else the ``CUDA_VISIBLE_DEVICES`` list, else None (every GPU).

    NVML ignores ``CUDA_VISIBLE_DEVICES``: without this a meter read every GPU of the machine, other
    users' jobs on them included. Entries are indices (``"2"``) or UUIDs (``"GPU-..."``, ``"MIG-..."``);
    an empty value hides every GPU ([]). Anything from the first invalid entry on is ignored, as CUDA does.
    """
    if ray_gpu_ids is not None:
        return [str(i) for i in ray_gpu_ids]
    if cuda_visible_devices is None:
        return None
    out = []
    for entry in (e.strip() for e in cuda_visible_devices.split(",")):
        if not (entry.isdigit() or entry.startswith(("GPU-", "MIG-"))):
            break
        out.append(entry)
    return out


def held_devices(processes_by_device: Mapping[int, Iterable[int]], pids: Iterable[int], *,
                 pid_visible: Callable[[int], bool] = psutil.pid_exists) -> list[int]:
    """The devices (keys of ``processes_by_device``: device -> pids NVML reports on it) on which one of
    ``pids`` runs: the GPUs a stage's workers hold, when ``pids`` is its process tree.

    NVML reports the host's pids. In a container with its own pid namespace they match none of ours,
    and a device cannot be told apart from another user's: then every device given is read (those
    ``CUDA_VISIBLE_DEVICES`` leaves, usually the container's own), rather than none.
    """
    ours = set(pids)
    held = [d for d, procs in processes_by_device.items() if ours.intersection(procs)]
    if held:
        return held
    foreign = any(procs and not any(pid_visible(p) for p in procs) for procs in processes_by_device.values())
    return list(processes_by_device) if foreign else []


class NvmlProbe:
    """NVML through ``pynvml`` (package nvidia-ml-py); :func:`nvml_probe` returns None without it.

    ``devices``: CUDA names of the GPUs it may read (:func:`metered_devices`); None: every GPU.
    ``pids``: when given, a callable returning the pids of the stage's process tree; then only the
    devices on which one of them runs are read (:func:`held_devices`), at each sample, so another
    user's job on another GPU of the machine is not metered as this stage's. ``count`` is the number
    of devices read at the last :meth:`utilisation`; energy is summed over the devices while held.
    """

    def __init__(self, pynvml, devices: list[str] | None = None, *, pids: Callable[[], Iterable[int]] | None = None):
        self._nv = pynvml
        if devices is None:
            self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
        else:  # NVML numbers GPUs by PCI bus: CUDA's order on machines of one GPU model (on any with
            # CUDA_DEVICE_ORDER=PCI_BUS_ID); UUIDs name one GPU either way
            self._handles = [pynvml.nvmlDeviceGetHandleByUUID(d) if not d.isdigit()
                             else pynvml.nvmlDeviceGetHandleByIndex(int(d)) for d in devices]
        self._pids = pids
        self.devices = len(self._handles)  # GPUs it may read
        self.count = self.devices if pids is None else 0
        name = pynvml.nvmlDeviceGetName(self._handles[0]) if self._handles else None
        self.name = name.decode() if isinstance(name, bytes) else name
        self._energy_j = 0.0
        self._last_mj: dict[int, float] = {}

    def _held(self) -> list[int]:
        if self._pids is None:
            return list(range(len(self._handles)))
        on = {}
        for i, h in enumerate(self._handles):
            procs = []
            for query in ("nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetGraphicsRunningProcesses"):
                try:
                    procs += [p.pid for p in getattr(self._nv, query)(h)]
                except (self._nv.NVMLError, AttributeError):
                    pass
            on[i] = procs
        return held_devices(on, self._pids())

    def utilisation(self) -> float:
        """Mean busy fraction of the devices held now (sets ``count``); adds their energy since the last call."""
        held = self._held()
        self.count = len(held)
        self._add_energy(held)
        vals = [self._nv.nvmlDeviceGetUtilizationRates(self._handles[i]).gpu / 100 for i in held]
        return sum(vals) / len(vals) if vals else 0.0

    def _add_energy(self, held: list[int]) -> None:
        now = {}
        for i in held:
            try:  # millijoules since the driver loaded (Volta and later)
                now[i] = float(self._nv.nvmlDeviceGetTotalEnergyConsumption(self._handles[i]))
            except self._nv.NVMLError:
                continue
            if i in self._last_mj:
                self._energy_j += max(0.0, now[i] - self._last_mj[i]) / 1000
        self._last_mj = now  # a device given up and taken again counts from its next sample

    def energy_joules(self) -> float | None:
        """Joules drawn by the devices while they were held (between samples), or None if unreported."""
        if self._pids is None:
            try:
                return sum(self._nv.nvmlDeviceGetTotalEnergyConsumption(h) for h in self._handles) / 1000
            except self._nv.NVMLError:
                return None
        return self._energy_j


def nvml_probe(devices: list[str] | None = None, *, pids: Callable[[], Iterable[int]] | None = None
               ) -> NvmlProbe | None:
    """An NVML reader when a GPU and the library are present; None otherwise (never raises).
    ``devices`` default: :func:`metered_devices` of this process's ``CUDA_VISIBLE_DEVICES`` (the GPUs
    its Ray workers can be given); ``pids``: see :class:`NvmlProbe`."""
    import os

    try:
        import pynvml

        pynvml.nvmlInit()
        if devices is None:
            devices = metered_devices(os.environ.get("CUDA_VISIBLE_DEVICES"))
        probe = NvmlProbe(pynvml, devices, pids=pids)
        return probe if probe.devices else None
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
            busy = self.gpu.utilisation()  # first: a probe of held devices counts them as it reads them
            self._gpu_busy_s += busy * self.gpu.count * (now - self._last_sample)
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

