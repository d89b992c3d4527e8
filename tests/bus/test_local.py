from __future__ import annotations

import asyncio

import pytest

from gateway.bus.base import AgentCommand, ConfigsChanged, Envelope, Owner
from gateway.bus.local import LocalBus, LocalHub

pytestmark = pytest.mark.anyio

UID = b"\x01" * 16


class Inbox:
    def __init__(self) -> None:
        self.got: asyncio.Queue[Envelope] = asyncio.Queue()

    async def __call__(self, envelope: Envelope) -> None:
        await self.got.put(envelope)


async def test_broadcast_reaches_every_node_and_send_only_one() -> None:
    hub = LocalHub()
    a, b = LocalBus("a", hub), LocalBus("b", hub)
    inbox_a, inbox_b = Inbox(), Inbox()
    await a.start(inbox_a)
    await b.start(inbox_b)
    assert await a.broadcast(ConfigsChanged("x")) == 2
    assert (await asyncio.wait_for(inbox_a.got.get(), 1)).event == ConfigsChanged("x")
    assert (await asyncio.wait_for(inbox_b.got.get(), 1)).source == "a"
    assert await a.send("b", AgentCommand(UID, 0)) == 1
    assert (await asyncio.wait_for(inbox_b.got.get(), 1)).event == AgentCommand(UID, 0)
    assert inbox_a.got.empty()
    assert await a.send("gone", AgentCommand(UID, 0)) == 0
    await b.stop()
    assert await a.send("b", AgentCommand(UID, 0)) == 0
    await a.stop()


async def test_owner_records() -> None:
    hub = LocalHub()
    bus, other = LocalBus("a", hub), LocalBus("b", hub)
    await bus.start(Inbox())
    await other.start(Inbox())
    first, second = Owner("a", "1"), Owner("b", "2")
    assert await bus.claim([(UID, first)]) == [None]
    assert await bus.claim([(UID, second)]) == [first]
    # A release by the older owner does not drop the newer record.
    await bus.release([(UID, first)])
    assert await bus.owners([UID, b"\x02" * 16]) == {UID: second}
    # Refreshing a lost claim reports it; refreshing a missing one re-creates it.
    assert await bus.refresh([(UID, first)]) == [UID]
    await bus.release([(UID, second)])
    assert await bus.refresh([(UID, first)]) == []
    assert await bus.owners([UID]) == {UID: first}
    await other.stop()
    await bus.stop()


async def test_owner_records_of_a_stopped_node_are_not_trusted_and_live_nodes_carry_loads() -> None:
    hub = LocalHub()
    a, b = LocalBus("a", hub), LocalBus("b", hub)
    await a.start(Inbox())
    await b.start(Inbox())
    await a.beat(3)
    await a.claim([(UID, Owner("b", "1"))])
    assert await a.owners([UID]) == {UID: Owner("b", "1")}
    assert await a.live_nodes() == {"a": 3, "b": 0}
    await b.stop()
    assert await a.owners([UID]) == {}
    assert await a.live_nodes() == {"a": 3}
    await a.stop()
