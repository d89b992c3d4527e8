"""The Redis bus against a real redis-server."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable

import pytest

from gateway.bus.base import AgentCommand, BusUnavailable, ConfigsChanged, Envelope, Owner
from gateway.bus.redis import ALIVE_KEY, BROADCAST_CHANNEL, NODES_KEY, RedisBus, owner_key
from harness.redis_server import RedisServer
from tests.support.redis_server import RedisFactory
from tests.support.waiting import eventually as _eventually

pytestmark = pytest.mark.anyio


class Inbox:
    def __init__(self) -> None:
        self.got: asyncio.Queue[Envelope] = asyncio.Queue()
        self.ups = 0

    async def __call__(self, envelope: Envelope) -> None:
        await self.got.put(envelope)

    async def on_up(self) -> None:
        self.ups += 1

    async def next(self, timeout: float = 5.0) -> Envelope:
        return await asyncio.wait_for(self.got.get(), timeout)


async def eventually(check: Callable[[], object], timeout: float = 10.0) -> None:
    # Redis reconnects back off for up to 2 s: a longer deadline than the shared default.
    await _eventually(check, timeout=timeout, interval=0.02)


def new_uid() -> bytes:
    return uuid.uuid4().bytes


@contextlib.asynccontextmanager
async def bus(url: str, name: str | None = None, **kwargs: object) -> AsyncIterator[tuple[RedisBus, Inbox]]:
    b = RedisBus(url, name or f"node-{uuid.uuid4().hex[:8]}", **kwargs)  # type: ignore[arg-type]
    inbox = Inbox()
    await b.start(inbox, inbox.on_up)
    try:
        await eventually(lambda: b.up)
        yield b, inbox
    finally:
        await b.stop()


async def test_send_reaches_only_the_named_node(shared_redis: RedisServer) -> None:
    async with bus(shared_redis.url) as (a, inbox_a), bus(shared_redis.url) as (b, inbox_b):
        uid = new_uid()
        assert await a.send(b.node_id, AgentCommand(uid, 0)) == 1
        got = await inbox_b.next()
        assert got.event == AgentCommand(uid, 0) and got.source == a.node_id
        assert time.time() - got.sent_at < 1
        assert await a.send("nobody-listens-here", AgentCommand(uid, 0)) == 0
        await asyncio.sleep(0.05)
        assert inbox_a.got.empty()


async def test_broadcast_reaches_every_node(shared_redis: RedisServer) -> None:
    async with bus(shared_redis.url) as (a, inbox_a), bus(shared_redis.url) as (_b, inbox_b):
        receivers = await a.broadcast(ConfigsChanged("test"))
        assert receivers >= 2
        for inbox in (inbox_a, inbox_b):
            while (await inbox.next()).event != ConfigsChanged("test"):
                pass  # other tests' broadcasts


async def test_garbage_on_a_channel_is_skipped(shared_redis: RedisServer) -> None:
    async with bus(shared_redis.url) as (a, inbox):
        await a._redis.publish(a.node_channel, b"not an event")
        await a._redis.publish(a.node_channel, b'{"type": "Reboot"}')
        uid = new_uid()
        await a.send(a.node_id, AgentCommand(uid, 0))
        assert (await inbox.next()).event == AgentCommand(uid, 0)


async def alive(bus: RedisBus, *nodes: str, ttl_ms: int = 60_000) -> None:
    """Liveness records for nodes that are not running here (beat() speaks for its own node only)."""
    for node in nodes:
        await bus._redis.set(ALIVE_KEY.format(node=node), 0, px=ttl_ms)
        await bus._redis.sadd(NODES_KEY, node)


async def test_owner_records(shared_redis: RedisServer) -> None:
    async with bus(shared_redis.url) as (a, _):
        uid, other = new_uid(), new_uid()
        first, second = Owner("a", "1"), Owner("b", "2")
        await alive(a, "a", "b")
        assert await a.claim([(uid, first), (other, first)]) == [None, None]
        assert await a.claim([(uid, second)]) == [first]
        await a.release([(uid, first)])
        assert await a.owners([uid, other, new_uid()]) == {uid: second, other: first}
        assert await a.refresh([(uid, first), (other, first)]) == [uid]
        await a.release([(uid, second)])
        assert await a.owners([uid]) == {}
        # A refresh re-creates a record that vanished (TTL during an outage, Redis restarted empty).
        assert await a.refresh([(uid, first)]) == []
        assert await a.owners([uid]) == {uid: first}
        ttl = await a._redis.pttl(owner_key(uid))
        assert 170_000 < ttl <= 180_000


async def test_owner_records_expire_unless_refreshed(shared_redis: RedisServer) -> None:
    async with bus(shared_redis.url, owner_ttl=0.3) as (a, _):
        kept, dropped = new_uid(), new_uid()
        owner = Owner(a.node_id, "e")
        await a.beat(0)
        await a.claim([(kept, owner), (dropped, owner)])
        for _ in range(4):
            await asyncio.sleep(0.15)
            await a.refresh([(kept, owner)])
        assert await a.owners([kept, dropped]) == {kept: owner}


async def test_owner_records_of_a_node_whose_liveness_expired_are_not_trusted(
    shared_redis: RedisServer,
) -> None:
    async with bus(shared_redis.url, node_ttl=0.3) as (a, _), bus(shared_redis.url, node_ttl=0.3) as (b, _):
        uid = new_uid()
        await a.beat(5)
        await b.beat(7)
        await a.claim([(uid, Owner(b.node_id, "e"))])
        assert await a.owners([uid]) == {uid: Owner(b.node_id, "e")}
        assert (await a.live_nodes()).items() >= {a.node_id: 5, b.node_id: 7}.items()
        ttl = await a._redis.pttl(ALIVE_KEY.format(node=a.node_id))
        assert 0 < ttl <= 300
        # Only a beats on: b is hung or dead.
        for _ in range(4):
            await asyncio.sleep(0.15)
            await a.beat(5)
        assert await a.owners([uid]) == {}
        live = await a.live_nodes()
        assert a.node_id in live and b.node_id not in live
        # The owner record itself is still there: b's liveness alone decides.
        assert await a._redis.get(owner_key(uid)) is not None
        assert b.node_id.encode() not in await a._redis.smembers(NODES_KEY)


async def test_outage_is_reported_fast_and_recovered(redis_factory: RedisFactory) -> None:
    server = redis_factory()
    async with bus(server.url, backoff=(0.05, 0.2)) as (a, inbox):
        assert a.status() == {"kind": "redis", "state": "up"}
        assert inbox.ups == 1
        server.kill()
        await eventually(lambda: not a.up)
        assert a.status()["state"] == "down" and a.status()["error"]
        started = time.monotonic()
        with pytest.raises(BusUnavailable):
            await a.send(a.node_id, AgentCommand(new_uid(), 0))
        with pytest.raises(BusUnavailable):
            await a.owners([new_uid()])
        assert time.monotonic() - started < 0.1
        server.start()
        await eventually(lambda: a.up)
        # on_up runs again, so the node re-claims its sockets in a Redis that forgot everything.
        await eventually(lambda: inbox.ups == 2)
        uid = new_uid()
        assert await a.send(a.node_id, AgentCommand(uid, 0)) == 1
        assert (await inbox.next()).event == AgentCommand(uid, 0)


async def test_channel_names(shared_redis: RedisServer) -> None:
    async with bus(shared_redis.url, name="node-x") as (a, _):
        assert a.node_channel == "opamp:node:node-x"
        channels = await a._redis.pubsub_channels()
        assert {BROADCAST_CHANNEL.encode(), b"opamp:node:node-x"} <= set(channels)
