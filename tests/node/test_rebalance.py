"""The pure parts of rebalancing: fair share, which sockets to shed, each socket's age limit; and the
age check against a registry of real Holder-shaped connections."""

from __future__ import annotations

import random
from typing import Any, cast

import pytest

from gateway.metrics import Metrics
from gateway.node.rebalance import ConnectionAge, age_limit, excess_sockets, fair_share
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
