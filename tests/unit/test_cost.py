import pytest

from components.tracking.cost import CostMeter, Rates


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
