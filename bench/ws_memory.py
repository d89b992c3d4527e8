"""Memory per idle WebSocket agent: resident memory of a target before and after thousands of
agents connect, each sending its first full report and then staying connected without a word.

A fresh target is started for this (the throughput phases leave caches and allocator high-water
marks behind), warmed with a few agents that connect, report and leave (imports, code paths and
first allocations are paid once, not per agent), and then measured: before, after each step of
agents, after a settle time with every socket idle (the gateway's writer flushed), and once more
after all sockets closed (what a node keeps after its agents leave, such as SQLite's page cache).
Per agent: (after - before) / agents, and the slope of a straight line through the steps, which
leaves fixed costs out.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from bench import gateway_metrics
from bench.agents import ReplyError
from bench.fleet import make_fleet
from bench.targets import HOST, Target
from bench.ws_client import CLOSE_NORMAL
from bench.ws_load import Check, WsAgent, close_fleet, connect_fleet
from harness import procstat

logger = logging.getLogger("bench.ws_memory")

WARM_AGENTS = 100
STEPS = 5
SETTLE_TIMEOUT = 60.0
# Seeds apart from the throughput fleets' (1 and 2): these agents are new to the store.
WARM_SEED, IDLE_SEED = 11, 12


@dataclass(frozen=True)
class MemoryConfig:
    agents: int
    idle_seconds: float
    concurrency: int
    path: str


def _slope(points: list[tuple[int, int]]) -> float:
    """Least-squares slope of (agents, KiB): the marginal KiB per agent."""
    n = len(points)
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    var = sum((x - mean_x) ** 2 for x, _ in points)
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / var if var else 0.0


async def _settle(target: Target, admin_port: int | None, seconds: float) -> None:
    """Idle for `seconds`; for the gateway, also until its writer has flushed every enrollment."""
    await asyncio.sleep(seconds)
    if admin_port is None:
        return
    deadline = time.monotonic() + SETTLE_TIMEOUT
    while gateway_metrics.scrape(HOST, admin_port, "websocket").writer_queue_depth > 0:
        if time.monotonic() > deadline:
            raise ReplyError(f"the {target.name}'s writer did not flush within {SETTLE_TIMEOUT:.0f} s")
        await asyncio.sleep(0.2)


async def measure(
    target: Target,
    cfg: MemoryConfig,
    check: Check,
    progress: Callable[[str], None],
) -> dict[str, object]:
    """Connect `cfg.agents` idle agents to `target` and return its memory per agent (KiB)."""
    name, pid, admin = target.name, target.pid, target.admin_port
    warm = await connect_fleet(HOST, target.port, cfg.path, make_fleet(WARM_AGENTS, WARM_SEED), 50, check)
    await close_fleet(warm)
    await _settle(target, admin, 1.0)
    before = procstat.memory_kib(pid)
    progress(
        f"memory     {name:<9} RSS {before['rss'] / 1024:7.1f} MiB with no agent connected (after warm-up)"
    )
    agents = make_fleet(cfg.agents, IDLE_SEED)
    fleet: list[WsAgent] = []
    points = [(0, before["rss"])]
    step = max(1, cfg.agents // STEPS)
    started = time.perf_counter()
    try:
        for first in range(0, cfg.agents, step):
            batch = agents[first : first + step]
            fleet += await connect_fleet(HOST, target.port, cfg.path, batch, cfg.concurrency, check)
            rss = procstat.memory_kib(pid)["rss"]
            points.append((len(fleet), rss))
            progress(
                f"memory     {name:<9} {len(fleet):>6,} agents connected  RSS {rss / 1024:7.1f} MiB"
                f"  (+{(rss - before['rss']) / len(fleet):5.1f} KiB per agent)"
            )
        connect_seconds = time.perf_counter() - started
        await _settle(target, admin, cfg.idle_seconds)
        after = procstat.memory_kib(pid)
        problems = _idle_problems(fleet, target, cfg.agents)
        await close_fleet(fleet)
        fleet = []
        await _settle(target, admin, 1.0)
        closed = procstat.memory_kib(pid)
    finally:
        await close_fleet(fleet)
    per_agent = (after["rss"] - before["rss"]) / cfg.agents
    slope = _slope(points)
    progress(
        f"memory     {name:<9} {cfg.agents:,} idle agents: +{per_agent:.1f} KiB RSS per agent "
        f"(marginal {slope:.1f}); {(closed['rss'] - before['rss']) / 1024:.1f} MiB kept after they left"
    )
    return {
        "agents": cfg.agents,
        "connect_seconds": connect_seconds,
        "idle_seconds": cfg.idle_seconds,
        "before_kib": before,
        "after_kib": after,
        "closed_kib": closed,
        "steps": [{"agents": n, "rss_kib": rss} for n, rss in points],
        "kib_per_agent": per_agent,
        "anon_kib_per_agent": (after["anon"] - before["anon"]) / cfg.agents,
        "marginal_kib_per_agent": slope,
        "problems": problems,
    }


def _idle_problems(fleet: list[WsAgent], target: Target, agents: int) -> list[str]:
    found = []
    dropped = [item for item in fleet if item.sock.close_code not in (None, CLOSE_NORMAL)]
    if dropped:
        sock = dropped[0].sock
        found.append(
            f"memory: {len(dropped)} idle sockets closed by the {target.name} "
            f"(first: {sock.close_code} {sock.close_reason})"
        )
    if target.admin_port is not None:
        seen = gateway_metrics.scrape(HOST, target.admin_port, "websocket")
        if (seen.websocket_connections, seen.websocket_agents) != (agents, agents):
            found.append(
                f"memory: the gateway holds {seen.websocket_connections:.0f} sockets and "
                f"{seen.websocket_agents:.0f} connected agents, expected {agents}"
            )
    return found
