"""Cost meter: resources reserved x wall time x rates, plus measured CPU use.

``cost/usd`` is what the reserved resources cost for the stage's wall time (what a cloud
bill charges); ``cost/cpu_hours_used`` is busy CPU time measured on this machine (psutil,
machine-wide, so it includes in-process Ray workers), to show how much of the
reservation was used.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import psutil


@dataclass(frozen=True)
class Rates:
    cpu_hour_usd: float
    gpu_hour_usd: float


def busy_cpu_seconds() -> float:
    t = psutil.cpu_times()
    return sum(getattr(t, f) for f in ("user", "nice", "system", "irq", "softirq", "steal") if hasattr(t, f))


class CostMeter:
    def __init__(self, *, rates: Rates, cpus: float = 1.0, gpus: float = 0.0,
                 clock: Callable[[], float] = time.monotonic,
                 cpu_clock: Callable[[], float] = busy_cpu_seconds):
        self.rates, self.cpus, self.gpus = rates, cpus, gpus
        self._clock, self._cpu_clock = clock, cpu_clock
        self._t0 = self._c0 = None

    def reserve(self, *, cpus: float, gpus: float = 0.0) -> None:
        """Declare what the stage holds once it knows (e.g. after reading its params)."""
        self.cpus, self.gpus = cpus, gpus

    def start(self) -> "CostMeter":
        self._t0, self._c0 = self._clock(), self._cpu_clock()
        return self

    def read(self) -> dict[str, float]:
        if self._t0 is None:
            raise RuntimeError("CostMeter.read() before start()")
        wall = self._clock() - self._t0
        cpu_h = self.cpus * wall / 3600
        gpu_h = self.gpus * wall / 3600
        used_h = max(0.0, self._cpu_clock() - self._c0) / 3600
        return {
            "cost/wall_s": wall,
            "cost/cpu_hours": cpu_h,
            "cost/gpu_hours": gpu_h,
            "cost/cpu_hours_used": used_h,
            "cost/cpu_util": used_h / cpu_h if cpu_h > 0 else 0.0,
            "cost/usd": cpu_h * self.rates.cpu_hour_usd + gpu_h * self.rates.gpu_hour_usd,
        }
