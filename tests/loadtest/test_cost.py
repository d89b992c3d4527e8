"""What one agent costs each side, from two CPU readings of the hold."""

from __future__ import annotations

import pytest

from loadtest.cost import CpuReading, line, per_agent


def test_cpu_is_divided_by_the_heartbeats_the_window_should_hold() -> None:
    start = CpuReading(at=100.0, gateways=5.0, locust=7.0, workers=6.0)
    # 60 s of 3,000 agents at a 10 s heartbeat: 18,000 heartbeats.
    end = CpuReading(at=160.0, gateways=5.0 + 1.8, locust=7.0 + 0.9, workers=6.0 + 0.72)
    costs = per_agent(start, end, agents=3000, heartbeat=10.0)
    assert costs["window_s"] == 60.0 and costs["heartbeats"] == 18_000
    assert costs["gateway_cpu_us_per_agent_interval"] == pytest.approx(100.0)
    assert costs["locust_cpu_us_per_heartbeat"] == pytest.approx(50.0)
    assert costs["locust_worker_cpu_us_per_heartbeat"] == pytest.approx(40.0)
    assert "Locust 50.0 µs CPU per heartbeat (workers alone 40.0)" in line(costs)
    assert "gateways 100.0 µs CPU per agent per heartbeat interval" in line(costs)


def test_an_empty_window_has_no_cost() -> None:
    at = CpuReading(at=1.0, gateways=1.0, locust=1.0, workers=1.0)
    assert per_agent(at, at, agents=10, heartbeat=30.0)["locust_cpu_us_per_heartbeat"] is None
