import subprocess
import sys
import time

import pytest

from trainwise.components.tracking.cost import (CostMeter, ProcessTreeCpu, Rates, held_devices, metered_devices, nvml_probe,
                                      process_tree_pids, reserved_cost)


class FakeClock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def test_dollars_are_reserved_resources_times_wall_time_times_rates():
    clock, cpu = FakeClock(), FakeClock()
    meter = CostMeter(rates=Rates(cpu_hour_usd=0.05, gpu_hour_usd=2.0), clock=clock, cpu_clock=cpu).start()
    meter.reserve(cpus=4, gpus=1)
    clock.t += 1800          # half an hour
    cpu.t += 3600            # one busy CPU-hour measured
    m = meter.read()
    assert m["cost/wall_s"] == 1800
    assert m["cost/cpu_hours"] == pytest.approx(2.0)
    assert m["cost/gpu_hours"] == pytest.approx(0.5)
    assert m["cost/usd"] == pytest.approx(2.0 * 0.05 + 0.5 * 2.0)
    assert m["cost/cpu_hours_used"] == pytest.approx(1.0)
    assert m["cost/cpu_util"] == pytest.approx(0.5)


def test_reading_before_start_is_an_error():
    with pytest.raises(RuntimeError, match="before start"):
        CostMeter(rates=Rates(1, 1)).read()


class FakeGpu:
    """Two GPUs, 50% busy, drawing 300 W each: energy grows with the fake clock."""

    name, count = "NVIDIA H100 80GB HBM3", 2

    def __init__(self, clock):
        self.clock = clock

    def utilisation(self):
        return 0.5

    def energy_joules(self):
        return 2 * 300.0 * self.clock.t


def test_gpu_type_rates_node_hours_gpu_use_and_energy_on_a_fake_clock():
    clock, cpu = FakeClock(), FakeClock()
    rates = Rates(cpu_hour_usd=0.04, gpu_hour_usd=2.0, gpu_hour_usd_by_type={"A100": 3.0, "h100": 4.0},
                  node_hour_usd=0.5)
    meter = CostMeter(rates=rates, clock=clock, cpu_clock=cpu, gpu=FakeGpu(clock)).start()
    meter.reserve(cpus=8, gpus=2, nodes=1)
    for _ in range(4):       # sampled every 15 minutes for an hour
        clock.t += 900
        meter.sample()
    cpu.t += 2 * 3600        # two busy CPU-hours
    m = meter.read()
    assert m["cost/wall_s"] == 3600
    assert (m["cost/cpu_hours"], m["cost/gpu_hours"], m["cost/node_hours"]) == (8.0, 2.0, 1.0)
    assert m["cost/usd"] == pytest.approx(8 * 0.04 + 2 * 4.0 + 1 * 0.5)  # the H100 rate, not the default
    assert m["cost/usd"] == pytest.approx(8.82)
    assert m["cost/cpu_util"] == pytest.approx(0.25)
    assert m["cost/gpu_hours_used"] == pytest.approx(1.0)   # 2 GPUs x 50% x 1 h
    assert m["cost/gpu_util"] == pytest.approx(0.5)
    assert m["cost/energy_kwh"] == pytest.approx(0.6)       # 600 W for an hour


def test_unknown_gpu_type_uses_the_default_gpu_rate():
    rates = Rates(cpu_hour_usd=0.0, gpu_hour_usd=2.0, gpu_hour_usd_by_type={"A100": 3.0})
    assert reserved_cost(1800, cpus=0, gpus=1, rates=rates, gpu_type="Tesla T4")["cost/usd"] == pytest.approx(1.0)
    assert reserved_cost(1800, cpus=0, gpus=1, rates=rates, gpu_type="NVIDIA A100-SXM4")["cost/usd"] == \
        pytest.approx(1.5)
    with pytest.raises(ValueError, match="non-negative"):
        reserved_cost(-1, cpus=1, rates=rates)


def test_no_gpu_means_no_gpu_use_or_energy_metrics():
    clock, cpu = FakeClock(), FakeClock()
    m = CostMeter(rates=Rates(0.05, 2.0), clock=clock, cpu_clock=cpu).start().read()
    assert "cost/energy_kwh" not in m and "cost/gpu_util" not in m
    assert nvml_probe() is None or nvml_probe().count > 0  # never raises, GPU or not


def test_process_tree_cpu_counts_a_child_that_has_already_exited():
    tree = ProcessTreeCpu()
    before = tree()
    # The child burns 1.5 CPU-seconds, says so, then waits on stdin: its CPU time is read while
    # it is certainly alive, then it exits, and what it used must stay counted.
    child = subprocess.Popen([sys.executable, "-c", "import sys, time\nt=time.process_time()\n"
                              "while time.process_time() - t < 1.5: pass\n"
                              "print('burnt', flush=True)\nsys.stdin.read()\n"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline() == "burnt\n"
        while_alive = tree() - before  # what the meter's sampling thread sees
    finally:
        child.stdin.close()
        child.wait(timeout=60)
    assert while_alive >= 1.0
    assert tree() - before >= 1.0  # the exited child's CPU time is still counted


def test_a_meter_from_process_start_bills_the_interpreter_start_and_imports():
    import psutil

    age = time.time() - psutil.Process().create_time()  # this test process: seconds at least
    rates = Rates(cpu_hour_usd=3.6, gpu_hour_usd=0.0)
    since_start = CostMeter(rates=rates, cpus=1, cpu_clock=lambda: 7.2).start(from_process_start=True).read()
    from_now = CostMeter(rates=rates, cpus=1, cpu_clock=lambda: 7.2).start().read()
    assert since_start["cost/wall_s"] >= age - 0.01
    assert from_now["cost/wall_s"] < 1.0 < age
    assert since_start["cost/cpu_hours_used"] == pytest.approx(7.2 / 3600)  # CPU from zero, not from now
    assert from_now["cost/cpu_hours_used"] == 0.0


def test_the_meter_reads_the_gpus_this_process_may_use_not_every_gpu():
    """NVML sees every GPU of the machine; CUDA_VISIBLE_DEVICES (and Ray's ids for a worker) say which
    are this stage's (issue 27: the meter read them all, other users' jobs included)."""
    assert metered_devices(None) is None                         # unset: every GPU
    assert metered_devices("2,3") == ["2", "3"]
    assert metered_devices("") == []                             # set empty: no GPU
    assert metered_devices("GPU-8e1f-aa, MIG-4c2d") == ["GPU-8e1f-aa", "MIG-4c2d"]
    assert metered_devices("0,1,-1,3") == ["0", "1"]              # CUDA stops at the first invalid entry
    assert metered_devices("0,1,2,3", ray_gpu_ids=[3]) == ["3"]  # a Ray worker: what Ray gave it


def test_of_the_visible_gpus_the_meter_reads_those_its_processes_run_on():
    mine = process_tree_pids()
    assert mine[0] > 0 and all(isinstance(p, int) for p in mine)
    me, other_user = mine[0], 10**9  # a pid no process has
    on = {0: [other_user], 1: [me], 2: [], 3: [me, other_user]}
    assert held_devices(on, mine) == [1, 3]
    assert held_devices({0: [], 1: []}, mine) == []                                # nothing started yet
    # NVML's pids from outside a container's pid namespace match none here: read what is visible
    assert held_devices({0: [other_user], 1: []}, mine, pid_visible=lambda p: False) == [0, 1]


class FakeNvml:
    """pynvml's calls the probe makes, for four GPUs: pids per GPU, 80% busy, 100 J per read."""

    class NVMLError(Exception):
        pass

    def __init__(self, procs):
        self.procs, self.mj = procs, {i: 0.0 for i in range(4)}

    def nvmlDeviceGetCount(self):
        return 4

    def nvmlDeviceGetHandleByIndex(self, i):
        return i

    def nvmlDeviceGetHandleByUUID(self, uuid):
        return int(uuid.rsplit("-", 1)[1])

    def nvmlDeviceGetName(self, h):
        return b"NVIDIA H200"

    def nvmlDeviceGetComputeRunningProcesses(self, h):
        from types import SimpleNamespace
        return [SimpleNamespace(pid=p) for p in self.procs.get(h, [])]

    def nvmlDeviceGetGraphicsRunningProcesses(self, h):
        return []

    def nvmlDeviceGetUtilizationRates(self, h):
        from types import SimpleNamespace
        return SimpleNamespace(gpu=80)

    def nvmlDeviceGetTotalEnergyConsumption(self, h):
        self.mj[h] += 100_000.0
        return self.mj[h]


def test_a_meter_with_a_process_filter_bills_gpu_use_and_energy_of_held_gpus_only():
    from trainwise.components.tracking.cost import NvmlProbe

    me = process_tree_pids()[0]
    nv = FakeNvml({1: [me], 2: [10**9]})  # GPU 1 ours, GPU 2 someone else's, 0 and 3 idle
    probe = NvmlProbe(nv, ["GPU-x-1", "2", "3"], pids=process_tree_pids)
    assert probe.devices == 3 and probe.name == "NVIDIA H200"
    clock, cpu = FakeClock(), FakeClock()
    meter = CostMeter(rates=Rates(0.0, 2.0), clock=clock, cpu_clock=cpu, gpu=probe).start()
    meter.reserve(cpus=1, gpus=1)
    for _ in range(4):
        clock.t += 900
        meter.sample()
    m = meter.read()
    assert probe.count == 1
    assert m["cost/gpu_hours_used"] == pytest.approx(0.8)       # one GPU 80% busy for an hour, not three
    assert m["cost/gpu_util"] == pytest.approx(0.8)
    assert m["cost/energy_kwh"] == pytest.approx(4 * 100 / 3.6e6)  # GPU 1's draw between its 5 reads
