"""What one agent costs each side of a scale run, from the CPU time of the processes it started
(harness/procstat.py) over a window of the hold: the load generator's CPU per heartbeat and the
gateways' CPU per agent per heartbeat interval, everything included (pings, timers, GC, loopback
TCP). Both divide by the heartbeats the window should hold, agents x seconds / heartbeat."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from harness import procstat
from harness.process import Process


@dataclass(frozen=True)
class CpuReading:
    """CPU seconds so far of each group of processes, at one moment (time.monotonic())."""

    at: float
    gateways: float
    locust: float
    workers: float


def reading(gateways: Sequence[Process], master: Process, workers: Sequence[Process]) -> CpuReading:
    def cpu(procs: Sequence[Process]) -> float:
        return sum(procstat.process_cpu(p.pid) for p in procs)

    worker_cpu = cpu(workers)
    return CpuReading(time.monotonic(), cpu(gateways), cpu([master]) + worker_cpu, worker_cpu)


def per_agent(start: CpuReading, end: CpuReading, agents: int, heartbeat: float) -> dict[str, Any]:
    """The window's costs in µs; None where the window held no heartbeat."""
    seconds = end.at - start.at
    beats = agents * seconds / heartbeat

    def micros(used: float) -> float | None:
        return round(used / beats * 1e6, 1) if beats > 0 else None

    return {
        "window_s": round(seconds, 1),
        "heartbeats": round(beats),
        "locust_cpu_us_per_heartbeat": micros(end.locust - start.locust),
        "locust_worker_cpu_us_per_heartbeat": micros(end.workers - start.workers),
        "gateway_cpu_us_per_agent_interval": micros(end.gateways - start.gateways),
    }


def line(costs: dict[str, Any]) -> str:
    return (
        f"Locust {costs['locust_cpu_us_per_heartbeat']} µs CPU per heartbeat"
        f" (workers alone {costs['locust_worker_cpu_us_per_heartbeat']});"
        f" gateways {costs['gateway_cpu_us_per_agent_interval']} µs CPU per agent per heartbeat interval"
        f" (over {costs['window_s']:g} s of the hold, {costs['heartbeats']:,} heartbeats)"
    )
