"""Spreading WebSockets over all nodes: long-lived sockets never move on their own, so a node that
came back after a crash would stay empty while the others hold its agents.

Two ways, both closing sockets the way drain does (through the connection's `Holder.drain`: a last
ServerToAgent{Unavailable, retry_info} with a random 1 to --drain-retry-window s delay, then 1001),
so the balancer in front sends each agent to the least loaded node when it comes back:

- `ConnectionAge` (--max-connection-age): each socket is closed once it is older than its own limit,
  drawn from [age x (1 - jitter), age], so sockets opened together (after a restart) are not all
  closed together. The due closes of one check are spread evenly until the next check.
- `Rebalance` (POST /api/v1/rebalance): this node closes the sockets above its fair share, evenly
  over a window. The fair share is the WebSocket agents of every live node (their liveness records,
  bus.live_nodes) divided by the number of live nodes.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from dataclasses import dataclass

from gateway.bus.base import Bus
from gateway.metrics import Metrics
from gateway.node.registry import Holder, Registry
from gateway.periodic import Periodic

logger = logging.getLogger("gateway.node.rebalance")

# A socket whose peer stopped reading must not hold up the others (as in drain).
_CLOSE_TIMEOUT = 5.0
# The age check runs this often at most, and at least ten times per --max-connection-age.
_MAX_CHECK_INTERVAL = 30.0


async def close_spread(
    sockets: list[Holder],
    seconds: float,
    retry_window: float,
    rng: random.Random,
    metrics: Metrics,
    reason: str,
) -> int:
    """Close `sockets` evenly over `seconds`, each told to come back after 1 to `retry_window` s."""
    started = time.monotonic()
    closing: list[asyncio.Task[None]] = []
    for i, conn in enumerate(sockets):
        delay = started + seconds * i / len(sockets) - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        closing.append(asyncio.create_task(_close(conn, rng.uniform(1.0, retry_window), metrics, reason)))
    await asyncio.gather(*closing)
    return len(closing)


async def _close(conn: Holder, retry_after: float, metrics: Metrics, reason: str) -> None:
    try:
        await asyncio.wait_for(conn.drain(retry_after), _CLOSE_TIMEOUT)
    except TimeoutError:
        logger.warning("a WebSocket did not take its close frame within %.0fs", _CLOSE_TIMEOUT)
    metrics.rebalance_closed.labels(reason=reason).inc()


def age_limit(max_age: float, jitter: float, rng: random.Random) -> float:
    """One socket's age limit: uniform in [max_age x (1 - jitter), max_age]."""
    return max_age * (1.0 - jitter * rng.random())


def fair_share(loads: dict[str, int]) -> int:
    """Agents per node if the live nodes' agents were spread evenly (rounded up)."""
    if not loads:
        return 0
    return math.ceil(sum(loads.values()) / len(loads))


def excess_sockets(per_socket: dict[Holder, int], keep: int, rng: random.Random) -> list[Holder]:
    """Sockets to close so that at most `keep` agents stay, in random order (a socket carrying several
    agents counts for all of them)."""
    sockets = list(per_socket)
    rng.shuffle(sockets)
    held = sum(per_socket.values())
    out: list[Holder] = []
    for conn in sockets:
        if held <= keep:
            break
        out.append(conn)
        held -= per_socket[conn]
    return out


class ConnectionAge:
    def __init__(
        self,
        registry: Registry,
        metrics: Metrics,
        *,
        max_age: float,
        jitter: float,
        retry_window: float,
        rng: random.Random | None = None,
    ) -> None:
        self._registry = registry
        self._metrics = metrics
        self._max_age = max_age
        self._jitter = jitter
        self._retry_window = retry_window
        self._rng = rng or random.Random()
        self.interval = min(_MAX_CHECK_INTERVAL, max_age / 10) if max_age > 0 else 0.0
        self._limits: dict[Holder, float] = {}
        self._closing: set[Holder] = set()
        self._timer = Periodic("connection-age", self.interval or 1.0, self.check)
        self._tasks: set[asyncio.Task[int]] = set()

    async def start(self) -> None:
        if self._max_age > 0:
            self._timer.start()

    async def stop(self) -> None:
        await self._timer.stop()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def due(self, now: float) -> list[Holder]:
        """The open sockets past their age limit at `now` (time.monotonic()) not being closed yet."""
        limits: dict[Holder, float] = {}
        due: list[Holder] = []
        for conn, opened in self._registry.opened():
            limit = self._limits.get(conn)
            if limit is None:
                limit = age_limit(self._max_age, self._jitter, self._rng)
            limits[conn] = limit
            if now - opened >= limit and conn not in self._closing:
                due.append(conn)
        # Forget closed sockets.
        self._limits = limits
        self._closing &= set(limits)
        return due

    async def check(self) -> None:
        due = self.due(time.monotonic())
        if not due:
            return
        logger.info("closing %d WebSockets past --max-connection-age", len(due))
        self._closing.update(due)
        task = asyncio.create_task(
            close_spread(due, self.interval, self._retry_window, self._rng, self._metrics, "age"),
            name="connection-age",
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


@dataclass(frozen=True, slots=True)
class Plan:
    nodes: int
    agents: int
    fair_share: int
    shedding: int
    sockets: int
    window: float


class Rebalance:
    def __init__(
        self, node_id: str, registry: Registry, bus: Bus, metrics: Metrics, *, retry_window: float
    ) -> None:
        self._node_id = node_id
        self._registry = registry
        self._bus = bus
        self._metrics = metrics
        self._retry_window = retry_window
        self._rng = random.Random()
        self.task: asyncio.Task[int] | None = None

    async def plan(self, window: float) -> tuple[Plan, list[Holder]]:
        """What shedding down to the fair share means now; BusUnavailable without the liveness records."""
        per_socket = self._registry.agents_per_socket()
        mine = sum(per_socket.values())
        loads = await self._bus.live_nodes()
        # This node's own count is fresher than its last beat (and present if the beat was lost).
        loads[self._node_id] = mine
        fair = fair_share(loads)
        sockets = excess_sockets(dict(per_socket), fair, self._rng)
        shedding = sum(per_socket[c] for c in sockets)
        return Plan(len(loads), mine, fair, shedding, len(sockets), window), sockets

    async def start(self, window: float) -> Plan:
        """Begin shedding the agents above the fair share over `window` seconds (a running shed is
        replaced by the new plan's)."""
        plan, sockets = await self.plan(window)
        if self.task is not None and not self.task.done():
            self.task.cancel()
        logger.info(
            "rebalance: %d agents here, fair share %d over %d live nodes: closing %d WebSockets (%d agents) "
            "over %.1fs",
            plan.agents,
            plan.fair_share,
            plan.nodes,
            plan.sockets,
            plan.shedding,
            window,
        )
        if sockets:
            self.task = asyncio.create_task(
                close_spread(sockets, window, self._retry_window, self._rng, self._metrics, "rebalance"),
                name="rebalance",
            )
        return plan

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
            self.task = None
