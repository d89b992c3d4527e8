"""The scale runner's watch over a run, from Locust's start until the hold is over: a sample every
`--sample-every` seconds (the gateways' counters, CPU and memory of every process, Locust's latest
row), and what happens at set times of the hold: the config change, the py-spy profile, the gateway
kill. The hold's cost window (loadtest/cost.py) runs from the hold's start to its end or the kill."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness import procstat
from harness.gateway import GatewayProcess
from harness.process import Process
from loadtest import cost, processes
from loadtest.change import CONFIG_NAME, ConfigChange
from loadtest.cluster import Cluster, ClusterError
from loadtest.config import RunConfig, bound
from loadtest.failover import GatewayKill
from loadtest.monitor import CpuMeter, GatewayCounters, Sample, gateway_counters, locust_latest, rss_mib


class Watch:
    def __init__(
        self,
        cfg: RunConfig,
        cluster: Cluster,
        workdir: Path,
        gateways: list[GatewayProcess],
        locust: tuple[Process, list[Process]],
        progress: Callable[[str], object],
    ) -> None:
        self.cfg, self.cluster, self.workdir, self.progress = cfg, cluster, workdir, progress
        self.master, self.workers = locust
        # The gateways still running: all of them until the kill.
        self.gateways = list(gateways)
        self.change = ConfigChange(expected=cfg.agents, timeout=cfg.converge_timeout)
        self.kill = GatewayKill(expected=cfg.agents, within=cfg.reconnect_within)
        self.samples: list[Sample] = []
        self.events: dict[str, float] = {}
        self.hold_started: float | None = None
        self.at_hold = self.last_counters = GatewayCounters()
        self.costs: dict[str, Any] = {}
        self._cost_start: cost.CpuReading | None = None
        self._gw_cpu = CpuMeter(gateways)
        self._locust_cpu = CpuMeter([self.master, *self.workers])
        self._redis_cpu = CpuMeter([p for p in cluster.procs if p.name == "redis"])
        self._profiled = False
        self._peak_users = 0
        # The gateways' message counter at the last sample (re-read after the kill: one fewer gateway).
        self._last_messages = 0.0
        self.start = time.monotonic()

    def run(self) -> None:
        """Sample until the hold, the config change and the kill's watch are over."""
        busy_before = procstat.core_busy(None)
        last_t, self._last_messages = self.start, gateway_counters(self.gateways).messages
        deadline = self.start + bound(self.cfg) + 60
        while self.master.returncode is None:
            if time.monotonic() > deadline:
                raise ClusterError(f"the run overran its bound of {deadline - self.start:.0f} s")
            for proc in (*self.workers, *self.gateways):
                proc.check()
            time.sleep(self.cfg.sample_every)
            now = time.monotonic()
            counters = gateway_counters(self.gateways)
            busy = procstat.core_busy(None)
            dt = now - last_t
            sample = self._sample(now - self.start, dt, counters, counters.messages - self._last_messages)
            sample = Sample(**{**sample.__dict__, "machine_busy_cores": round((busy - busy_before) / dt, 3)})
            busy_before, last_t, self._last_messages = busy, now, counters.messages
            self.samples.append(sample)
            self.progress(_progress(sample, self.cfg.agents, self.change, self.kill))
            if self._act(now - self.start):
                break

    def _sample(self, t: float, dt: float, counters: GatewayCounters, messages: float) -> Sample:
        if self.master.returncode is None and not self.kill.started:
            # Locust still running: the agents are still connected, so this counts the hold (up to a
            # gateway kill: the killed gateway's counters are gone after it).
            self.last_counters = counters
        row = locust_latest(self.workdir / "locust_stats_history.csv")
        self._peak_users = max(self._peak_users, row.users)
        if row.users == 0 and self._peak_users > 0:
            # Locust stops every user when its last worker goes missing; the run is over then.
            raise ClusterError(f"Locust dropped all {self._peak_users:,} users (a worker went missing?)")
        if (
            self.hold_started is None
            and counters.connected >= self.cfg.agents
            and row.users >= self.cfg.agents
        ):
            self.hold_started, self.at_hold = t, counters
            self.events["hold"] = t
            self._cost_start = cost.reading(self.gateways, self.master, self.workers)
            self.progress(
                f"all {self.cfg.agents:,} agents connected after {t:.0f} s; holding {self.cfg.hold:g} s"
            )
        killed_at = self.kill.killed_at
        return Sample(
            t=round(t, 1),
            phase="ramp" if self.hold_started is None else "hold",
            users=row.users,
            connected=int(counters.connected),
            gateway_messages_per_s=round(messages / dt, 1),
            locust_requests_per_s=row.requests_per_s,
            failures=row.failures,
            heartbeat_p50_ms=row.heartbeat_p50,
            heartbeat_p99_ms=row.heartbeat_p99,
            gateway_cpu_cores=round(self._gw_cpu.cores(dt), 3),
            gateway_rss_mib=round(rss_mib(self.gateways), 1),
            locust_cpu_cores=round(self._locust_cpu.cores(dt), 3),
            locust_rss_mib=round(rss_mib([self.master, *self.workers]), 1),
            redis_cpu_cores=round(self._redis_cpu.cores(dt), 3),
            machine_busy_cores=0.0,
            gateways_up=len(self.gateways),
            since_kill_s=None if killed_at is None else round(time.monotonic() - killed_at, 1),
        )

    def _act(self, t: float) -> bool:
        """What is due at `t` in the hold; True when the hold is over."""
        if self.hold_started is None:
            return False
        into = t - self.hold_started
        cfg = self.cfg
        if cfg.change_at is not None and not self.change.started and into >= cfg.change_at:
            self.events["config change"] = t
            self.progress(f"changing config {CONFIG_NAME!r} for every agent")
            self.change.start(self.gateways)
        if cfg.profile_seconds and not self._profiled and into >= 10:
            profile = processes.profile(self.cluster, self.gateways[0], cfg.profile_seconds, self.workdir)
            self._profiled = profile is not None
        if cfg.kill_gateway_after is not None and not self.kill.started and into >= cfg.kill_gateway_after:
            self._kill_one(t)
        if self.kill.recovered_s is not None and "all reconnected" not in self.events:
            self.events["all reconnected"] = self.events["gateway killed"] + self.kill.recovered_s
        if into >= cfg.hold and not self.change.running and not self.kill.running:
            self._end_cost_window()
            self.progress(f"hold over after {into:.0f} s; stopping Locust")
            return True
        return False

    def _kill_one(self, t: float) -> None:
        self._end_cost_window()
        victim, survivors = self.gateways[-1], self.gateways[:-1]
        self.events["gateway killed"] = t
        self.progress(
            f"killing {victim.name} (pid {victim.pid}, SIGKILL); its agents must reconnect elsewhere"
        )
        failures = self.samples[-1].failures if self.samples else 0
        self.kill.start(victim, survivors, failures)
        # From now on only the survivors are checked, scraped and measured.
        self.gateways = survivors
        self._gw_cpu = CpuMeter(survivors)
        self._last_messages = gateway_counters(survivors).messages

    def _end_cost_window(self) -> None:
        if self._cost_start is not None and not self.costs:
            end = cost.reading(self.gateways, self.master, self.workers)
            self.costs = cost.per_agent(self._cost_start, end, self.cfg.agents, self.cfg.heartbeat)
            self.progress(f"cost: {cost.line(self.costs)}")


def _progress(s: Sample, target: int, change: ConfigChange, kill: GatewayKill) -> str:
    p99 = "-" if s.heartbeat_p99_ms is None else f"{s.heartbeat_p99_ms:.0f}"
    p50 = "-" if s.heartbeat_p50_ms is None else f"{s.heartbeat_p50_ms:.0f}"
    conv = f"  config {change.status} {change.applied:,}/{target:,} applied" if change.started else ""
    killed = f"  kill: {kill.status}" if kill.started else ""
    return (
        f"[{s.t:6.0f} s] {s.phase:<6} agents {s.connected:,}/{target:,} users {s.users:,}  "
        f"gw {s.gateway_messages_per_s:,.0f} msg/s  hb p50 {p50} p99 {p99} ms  failures {s.failures}  "
        f"gw {s.gateway_cpu_cores:.2f} cores {s.gateway_rss_mib:,.0f} MiB  "
        f"locust {s.locust_cpu_cores:.2f} cores  machine {s.machine_busy_cores:.2f}{conv}{killed}"
    )
