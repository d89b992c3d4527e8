"""The pure parts of rebalancing: fair share, which sockets to shed, each socket's age limit; and the
age check against a registry of real Holder-shaped connections."""

from __future__ import annotations

import asyncio
import random
from typing import Any, cast

import pytest

from gateway.bus.local import LocalBus, LocalHub
from gateway.metrics import Metrics
from gateway.node.rebalance import (
    ConnectionAge,
    Rebalance,
    age_limit,
    close_spread,
    excess_sockets,
    fair_share,
)
from gateway.node.registry import Registry

pytestmark = pytest.mark.anyio


class _Conn:
    def __init__(self, epoch: str) -> None:
        self.epoch = epoch
        self.drained: list[float] = []

    async def drain(self, retry_after: float) -> None:
        self.drained.append(retry_after)


def test_fair_share_rounds_up_and_is_zero_without_nodes() -> None:
    assert fair_share({}) == 0
    assert fair_share({"a": 7, "b": 0}) == 4
    assert fair_share({"a": 6, "b": 0, "c": 0}) == 2


def test_excess_sockets_shed_down_to_keep_counting_every_agent_of_a_socket() -> None:
    rng = random.Random(1)
    conns: list[Any] = [_Conn(str(i)) for i in range(5)]
    per_socket: dict[Any, int] = {c: 1 for c in conns}
    assert len(excess_sockets(per_socket, 2, rng)) == 3
    assert excess_sockets(per_socket, 5, rng) == []
    proxy: dict[Any, int] = {conns[0]: 10, conns[1]: 1}
    shed: list[Any] = excess_sockets(proxy, 5, rng)
    # Closing the proxy alone brings the node to 1 agent; closing the single one first still leaves 10.
    assert conns[0] in shed and sum(proxy[c] for c in shed) >= 6


def test_age_limits_are_spread_within_the_jitter() -> None:
    rng = random.Random(2)
    limits = [age_limit(100.0, 0.2, rng) for _ in range(1000)]
    assert 80.0 <= min(limits) < 81.0 and 99.0 < max(limits) <= 100.0
    assert age_limit(100.0, 0.0, rng) == 100.0


async def test_connection_age_closes_only_sockets_past_their_limit_and_each_once() -> None:
    registry = Registry()
    old: Any = _Conn("old")
    new: Any = _Conn("new")
    registry.attach(cast(Any, old))
    registry.attach(cast(Any, new))
    age = ConnectionAge(registry, Metrics(), max_age=10.0, jitter=0.0, retry_window=3.0)
    opened = dict(registry.opened())
    # Ten seconds after `old` opened, but `new` is one second younger.
    registry._sockets[cast(Any, new)] = opened[cast(Any, old)] + 1.0
    now = opened[cast(Any, old)] + 10.0
    assert age.due(now) == [old]
    age._closing.add(cast(Any, old))
    assert age.due(now) == []
    assert age.due(now + 1.0) == [new]
    registry.detach(cast(Any, old))
    age.due(now + 1.0)
    assert cast(Any, old) not in age._limits
    await age.stop()


async def test_close_spread_drains_every_socket_with_a_retry_delay_in_the_window() -> None:
    conns: list[Any] = [_Conn(str(i)) for i in range(4)]
    metrics = Metrics()
    assert await close_spread(conns, 0.05, 3.0, random.Random(3), metrics, "rebalance") == 4
    delays = [d for c in conns for d in c.drained]
    assert len(delays) == 4 and all(1.0 <= d <= 3.0 for d in delays)
    assert metrics.rebalance_closed.labels(reason="rebalance")._value.get() == 4


async def test_connection_age_check_closes_the_due_sockets() -> None:
    registry = Registry()
    conn: Any = _Conn("c")
    registry.attach(conn)
    age = ConnectionAge(registry, Metrics(), max_age=0.01, jitter=0.0, retry_window=1.0)
    await asyncio.sleep(0.02)
    await age.check()
    await asyncio.gather(*age._tasks)
    assert conn.drained == [1.0]
    await age.check()  # already closing: not again
    assert conn.drained == [1.0]
    await age.stop()


async def test_rebalance_sheds_above_the_fair_share_of_the_live_nodes() -> None:
    hub = LocalHub()
    mine, other = LocalBus("a", hub), LocalBus("b", hub)
    for bus in (mine, other):
        await bus.start(_ignore)
    await other.beat(1)
    registry = Registry()
    conns: list[Any] = [_Conn(str(i)) for i in range(5)]
    for i, conn in enumerate(conns):
        registry.attach(conn)
        registry.register(bytes([i]) * 16, conn)
    rebalance = Rebalance("a", registry, mine, Metrics(), retry_window=1.0)
    plan = await rebalance.start(0.01)
    assert (plan.nodes, plan.agents, plan.fair_share, plan.shedding, plan.sockets) == (2, 5, 3, 2, 2)
    assert rebalance.task is not None
    assert await rebalance.task == 2
    assert sum(len(c.drained) for c in conns) == 2
    await rebalance.stop()
    for bus in (mine, other):
        await bus.stop()


async def _ignore(_envelope: object) -> None:
    return None
