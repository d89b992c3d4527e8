"""`python -m bench fleet`: what each connected, idle WebSocket agent costs the gateway, all-in.

The unit is an agent held for one heartbeat interval (design principle 7): its heartbeat, the
server's pings, presence refreshes, timers, store writes, garbage collection. N agents connect (each
enrolls with a full report) and then heartbeat every `interval` seconds at their own phase
(bench.fleet_load); after a settle time (10 s at most) the gateway's CPU (user + system, every
thread) is read over a window, and divided by N x window / interval. Resident memory per agent is
(RSS with the fleet connected - RSS before) / N, after a warm-up as in bench.ws_memory.

The reference, in the same run: the bare uvicorn + Starlette WebSocket echo endpoint (bench.baseline,
the gateway's uvicorn settings and ping settings) holding the same number of sockets with the same
load. The gateway runs as in production: a Redis bus (its presence refreshes) and the SQLite store,
default settings otherwise. Both targets run at the same time, pinned to the server core and
measured over the same window, so whatever else takes that core takes it from both alike; this
process (the load for both) is pinned to the other core.

`--profile` runs one more window on the gateway under py-spy and splits its cost by component
(bench.breakdown).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import shlex
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import uvloop

from bench import breakdown, gateway_metrics, targets
from bench.baseline import OPAMP_PATH, heartbeat_reply
from bench.fleet import make_fleet
from bench.fleet_load import Heartbeats
from bench.profile import Recording
from bench.targets import HOST, Cores, Target
from bench.ws_load import (
    Check,
    WsAgent,
    close_fleet,
    connect_fleet,
    expected_reply,
    fixed_check,
    gateway_check,
)
from gateway.opamp import framing
from gateway.proto import opamp_pb2 as pb
from harness import machine, procstat

logger = logging.getLogger("bench.fleet_cost")

RESULTS_DIR = Path(__file__).resolve().parent / "results"
AIM_US = 120.0
AIM_KIB = 25.0
WARM_AGENTS = 100
WARM_SEED, FLEET_SEED = 21, 22
_SPARE_FILES = 200
_SETTLE_SECONDS = 10.0

Progress = Callable[[str], None]


class FleetFileLimitError(Exception):
    """More sockets asked for than the open-files limit allows."""


@dataclass(frozen=True)
class FleetConfig:
    agents: int = 5000
    interval: float = 30.0
    window: float = 60.0
    connect_concurrency: int = 50
    redis: bool = True
    # Both targets' --ws-ping-interval (None: the gateway's default).
    ping_interval: float | None = None
    profile: bool = False
    output: Path = RESULTS_DIR / "latest-fleet.json"

    @property
    def agent_intervals(self) -> float:
        return self.agents * self.window / self.interval


@dataclass
class Side:
    """One target's measurement."""

    name: str
    cpu_seconds: float = 0.0
    core_busy: float = 0.0
    generator_cpu: float = 0.0
    redis_cpu: float = 0.0
    gc_seconds: float = 0.0
    rss_before_kib: int = 0
    rss_after_kib: int = 0
    sent: int = 0
    replies: int = 0
    pings: int = 0
    connect_seconds: float = 0.0
    problems: list[str] | None = None
    profile: dict[str, object] | None = None

    def us_per_agent_interval(self, cfg: FleetConfig) -> float:
        return 1e6 * self.cpu_seconds / cfg.agent_intervals

    def kib_per_agent(self, cfg: FleetConfig) -> float:
        return (self.rss_after_kib - self.rss_before_kib) / cfg.agents


def _raise_file_limit(cfg: FleetConfig) -> None:
    # Both fleets are open at once.
    needed = 2 * (cfg.agents + WARM_AGENTS) + _SPARE_FILES
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if needed > hard:
        raise FleetFileLimitError(f"{needed} open files needed, the hard limit is {hard}: lower --agents")
    if soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


def _gc_seconds(admin_port: int | None) -> float:
    if admin_port is None:
        return 0.0
    return gateway_metrics.scrape(HOST, admin_port, "websocket").gc_seconds


@contextlib.asynccontextmanager
async def _fleet(target: Target, cfg: FleetConfig, gateway: bool) -> AsyncIterator[list[WsAgent]]:
    """The fleet connected and enrolled on `target`, every socket's expected heartbeat reply set."""
    check: Check
    if gateway:
        check = gateway_check
        template = pb.ServerToAgent.FromString(heartbeat_reply())
    else:
        fixed = framing.encode(heartbeat_reply())
        check = fixed_check(fixed)
    fleet = await connect_fleet(
        HOST, target.port, OPAMP_PATH, make_fleet(cfg.agents, FLEET_SEED), cfg.connect_concurrency, check
    )
    try:
        for item in fleet:
            item.sock.expected = expected_reply(template, item.agent.uid) if gateway else fixed
        yield fleet
    finally:
        await close_fleet(fleet)


@contextlib.asynccontextmanager
async def _held(
    target: Target, cfg: FleetConfig, progress: Progress
) -> AsyncIterator[tuple[Side, Heartbeats]]:
    """`target` warmed up, its RSS read, the fleet connected and heartbeating; on exit the load is
    stopped, the sockets closed and what went wrong written into the side's problems."""
    gateway = target.admin_port is not None
    side = Side(target.name, problems=[])
    warm_check = gateway_check if gateway else fixed_check(framing.encode(heartbeat_reply()))
    warm = await connect_fleet(
        HOST, target.port, OPAMP_PATH, make_fleet(WARM_AGENTS, WARM_SEED), 50, warm_check
    )
    await close_fleet(warm)
    await asyncio.sleep(1.0)
    side.rss_before_kib = procstat.memory_kib(target.pid)["rss"]
    started = time.perf_counter()
    async with _fleet(target, cfg, gateway) as fleet:
        side.connect_seconds = time.perf_counter() - started
        progress(f"connected  {target.name:<9} {cfg.agents:,} agents in {side.connect_seconds:.1f} s")
        load = Heartbeats(fleet, cfg.interval, track_uid=gateway)
        load.start()
        try:
            yield side, load
        finally:
            load.stop()
        side.problems = _problems(target, cfg, load, side)


class _Window:
    """One target's counters at the start of a window; `finish` fills its side."""

    def __init__(self, target: Target, cores: Cores, redis_pid: int | None, load: Heartbeats) -> None:
        self.target, self.cores, self.redis_pid, self.load = target, cores, redis_pid, load
        admin = target.admin_port
        self.metrics = gateway_metrics.scrape(HOST, admin, "websocket") if admin else None
        self.cpu = procstat.process_cpu(target.pid)
        self.core = procstat.core_busy(cores.server)
        self.mine = procstat.process_cpu(os.getpid())
        self.redis = procstat.process_cpu(redis_pid) if redis_pid else 0.0
        self.pings = load.pings()
        self.wall = time.monotonic()
        load.window()

    def finish(self, cfg: FleetConfig, side: Side) -> None:
        target, load = self.target, self.load
        wall = time.monotonic() - self.wall
        side.cpu_seconds = procstat.process_cpu(target.pid) - self.cpu
        side.core_busy = (procstat.core_busy(self.cores.server) - self.core) / wall
        side.generator_cpu = (procstat.process_cpu(os.getpid()) - self.mine) / wall
        side.redis_cpu = procstat.process_cpu(self.redis_pid) - self.redis if self.redis_pid else 0.0
        side.sent, side.replies, side.pings = load.sent, load.replies, load.pings() - self.pings
        side.rss_after_kib = procstat.memory_kib(target.pid)["rss"]
        if self.metrics is not None and target.admin_port:
            after = gateway_metrics.scrape(HOST, target.admin_port, "websocket")
            delta = after - self.metrics
            side.gc_seconds = delta.gc_seconds
            assert side.problems is not None
            side.problems += _counter_problems(delta, after, load.sent, cfg)


def _counter_problems(
    delta: gateway_metrics.Counters, now: gateway_metrics.Counters, sent: int, cfg: FleetConfig
) -> list[str]:
    found = []
    if delta.full_state_requests or delta.shed or delta.failed or delta.other_events:
        found.append(
            f"gateway: {delta.full_state_requests:.0f} full-state requests, {delta.shed:.0f} shed, "
            f"{delta.failed:.0f} not ok, {delta.other_events:.0f} messages that were not heartbeats"
        )
    # Heartbeats sent just before the window may be counted in it, and the reverse at its end.
    slack = max(5, sent // 50)
    if abs(delta.heartbeats - sent) > slack:
        found.append(f"gateway counted {delta.heartbeats:.0f} heartbeats in the window, the load sent {sent}")
    if (now.websocket_connections, now.websocket_agents) != (cfg.agents, cfg.agents):
        found.append(
            f"gateway holds {now.websocket_connections:.0f} sockets and {now.websocket_agents:.0f} agents, "
            f"expected {cfg.agents}"
        )
    return found


def _problems(target: Target, cfg: FleetConfig, load: Heartbeats, side: Side) -> list[str]:
    found = list(side.problems or [])
    bad = {k: v for k, v in load.checks.items() if k != "ok"}
    if bad:
        found.append(f"{target.name}: bad replies {bad}; e.g. {load.examples[:2]}")
    closed = load.closed()
    if closed:
        sock = closed[0].sock
        found.append(
            f"{target.name}: closed {len(closed)} sockets (first: {sock.close_code} {sock.close_reason})"
        )
    expected = cfg.agent_intervals
    if side.sent < 0.9 * expected:
        found.append(
            f"{target.name}: the load sent {side.sent} heartbeats in the window, expected ~{expected:.0f}"
        )
    return found


async def _profiled_window(
    target: Target, cfg: FleetConfig, cores: Cores, workdir: Path, load: Heartbeats, progress: Progress
) -> dict[str, object]:
    """One more window under py-spy (its pauses would skew the measured one), split by component."""
    recording = Recording(target.pid, cfg.window, cores, workdir)
    side = Side("profile", problems=[])
    window = _Window(target, cores, None, load)
    await asyncio.sleep(cfg.window)
    window.finish(cfg, side)
    saved = RESULTS_DIR / "latest-fleet-profile.folded"
    summary = recording.finish(cfg.window, saved)
    cost = breakdown.per_agent_interval(
        saved.read_text(), side.us_per_agent_interval(cfg), 1e6 * side.gc_seconds / cfg.agent_intervals
    )
    progress(f"profile    gateway   {cost['samples']} samples (py-spy); stacks in {saved}")
    return {"summary": summary, "breakdown": cost, "us_per_agent_interval": side.us_per_agent_interval(cfg)}


def _line(side: Side, cfg: FleetConfig) -> str:
    return (
        f"window     {side.name:<9} {side.us_per_agent_interval(cfg):7.1f} µs CPU per agent-interval, "
        f"{side.kib_per_agent(cfg):5.1f} KiB per agent; {side.sent:,} heartbeats, {side.pings:,} pings; "
        f"its core {side.core_busy:.0%} busy, load generator {side.generator_cpu:.0%}"
    )


@contextlib.contextmanager
def _redis(cfg: FleetConfig, workdir: Path) -> Iterator[tuple[str | None, int | None]]:
    if not cfg.redis:
        yield None, None
        return
    with targets.redis_server(workdir) as server:
        yield server.url, server.pid


async def _run(cfg: FleetConfig, progress: Progress, argv: list[str]) -> dict[str, object]:
    _raise_file_limit(cfg)
    cores = targets.choose_cores()
    if cores.load is not None:
        os.sched_setaffinity(0, {cores.load})
    progress(f"pinning    {cores.describe()}")
    busy_before = procstat.core_busy(None)
    await asyncio.sleep(1.0)
    machine_busy = (procstat.core_busy(None) - busy_before) / (os.cpu_count() or 1)
    progress(f"machine    {machine_busy:.0%} of all CPUs busy before the run (should be near 0%)")
    started_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    with tempfile.TemporaryDirectory(prefix="opamp-bench-fleet-") as tmp:
        workdir = Path(tmp)
        flags: dict[str, object] = {"max_connections": cfg.agents + WARM_AGENTS + 100}
        if cfg.ping_interval is not None:
            flags["ws_ping_interval"] = cfg.ping_interval
        with (
            _redis(cfg, workdir) as (redis_url, redis_pid),
            targets.gateway(cores, workdir, flags, redis_url) as gw,
            targets.baseline(heartbeat_reply(), "uvloop", cores, workdir, cfg.ping_interval) as bl,
        ):
            async with (
                _held(gw, cfg, progress) as (gateway, gw_load),
                _held(bl, cfg, progress) as (
                    baseline,
                    bl_load,
                ),
            ):
                # Enrollments are committed before their replies: this only lets the first
                # heartbeats and the writer's first flushes pass before the window.
                await asyncio.sleep(min(cfg.interval, _SETTLE_SECONDS))
                # Both targets in the same window on the same core: whatever else takes the core
                # takes it from both alike.
                windows = [_Window(gw, cores, redis_pid, gw_load), _Window(bl, cores, None, bl_load)]
                await asyncio.sleep(cfg.window)
                for window, side in zip(windows, (gateway, baseline), strict=True):
                    window.finish(cfg, side)
                    progress(_line(side, cfg))
                if cfg.profile:
                    gateway.profile = await _profiled_window(gw, cfg, cores, workdir, gw_load, progress)
    return _result(cfg, gateway, baseline, machine_busy, started_at, cores, argv)


def _result(
    cfg: FleetConfig,
    gateway: Side,
    baseline: Side,
    machine_busy: float,
    started_at: str,
    cores: Cores,
    argv: list[str],
) -> dict[str, object]:
    def side(s: Side) -> dict[str, object]:
        out = asdict(s)
        out["us_per_agent_interval"] = s.us_per_agent_interval(cfg)
        out["kib_per_agent"] = s.kib_per_agent(cfg)
        out["gc_us_per_agent_interval"] = 1e6 * s.gc_seconds / cfg.agent_intervals
        out["redis_us_per_agent_interval"] = 1e6 * s.redis_cpu / cfg.agent_intervals
        return out

    gw_us, bl_us = gateway.us_per_agent_interval(cfg), baseline.us_per_agent_interval(cfg)
    problems = (gateway.problems or []) + (baseline.problems or [])
    described = machine.describe(None)
    del described["wrk"]
    return {
        "benchmark": "websocket-fleet-cost",
        "started_at": started_at,
        "command": shlex.join(["python", "-m", "bench", *argv]),
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()},
        "pinning": cores.describe(),
        "machine_busy_before": machine_busy,
        "machine": described,
        "targets": {"gateway": side(gateway), "baseline": side(baseline)},
        "cpu_ratio": gw_us / bl_us if bl_us else 0.0,
        "memory_ratio": gateway.kib_per_agent(cfg) / baseline.kib_per_agent(cfg)
        if baseline.kib_per_agent(cfg)
        else 0.0,
        "aim": {"us_per_agent_interval": AIM_US * cfg.interval / 30.0, "kib_per_agent": AIM_KIB},
        "problems": problems,
        "valid": not problems,
        "python_executable": sys.executable,
    }


def run(cfg: FleetConfig, progress: Progress, argv: list[str]) -> dict[str, object]:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(_run(cfg, progress, argv))
