"""The Redis bus: pub/sub between gateway nodes, and owner records saying who holds which socket.

- `opamp:all`: broadcast channel, every node subscribes (fleet-wide events).
- `opamp:node:{node_id}`: each node's own channel (commands and takeovers for its sockets).
- `opamp:owner:{uid}` = {"node", "epoch"} with a TTL (--owner-ttl), refreshed by the owning node.
- `opamp:alive:{node_id}` = the node's WebSocket agent count, with a short TTL (--node-ttl), refreshed
  every third of it; `opamp:nodes` is the set of node ids to look those up by (pruned as they
  expire). An owner record naming a node whose liveness key expired is not trusted.

One dedicated pub/sub connection per node, reconnected with jittered exponential backoff. While it is
down, `up` is False and every call raises BusUnavailable at once instead of waiting on timeouts:
callers fall back to the store (pending commands), which agents read on their next message. Pub/sub
is at-most-once; nothing here is the source of truth. Standalone Redis only: the owner scripts touch
many keys at once, which Redis Cluster would refuse across hash slots.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Sequence
from typing import Any, TypeVar, cast

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from gateway.bus.base import (
    BadEvent,
    BusUnavailable,
    Envelope,
    Event,
    Handler,
    OnUp,
    Owner,
    decode,
    encode,
)
from gateway.fleet.agent import uid_str

logger = logging.getLogger("gateway.bus.redis")

T = TypeVar("T")

BROADCAST_CHANNEL = "opamp:all"
NODE_CHANNEL = "opamp:node:{node}"
OWNER_KEY = "opamp:owner:{uid}"
ALIVE_KEY = "opamp:alive:{node}"
NODES_KEY = "opamp:nodes"

# KEYS: owner keys; ARGV[1]: ttl ms, ARGV[i+1]: the new owner of KEYS[i]. Returns previous owners
# ('' for none: a Lua nil would cut the array short).
_CLAIM = """
local previous = {}
for i, key in ipairs(KEYS) do
  previous[i] = redis.call('SET', key, ARGV[i + 1], 'PX', ARGV[1], 'GET') or ''
end
return previous
"""
# Delete KEYS[i] only if it still holds ARGV[i]: never drop a newer connection's record.
_RELEASE = """
local n = 0
for i, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[i] then
    redis.call('DEL', key)
    n = n + 1
  end
end
return n
"""
# Extend our records, re-create missing ones (expired during an outage, or Redis restarted empty);
# return the indexes of keys someone else holds now.
_REFRESH = """
local lost = {}
for i, key in ipairs(KEYS) do
  local current = redis.call('GET', key)
  if current == ARGV[i + 1] then
    redis.call('PEXPIRE', key, ARGV[1])
  elseif not current then
    redis.call('SET', key, ARGV[i + 1], 'PX', ARGV[1])
  else
    lost[#lost + 1] = i
  end
end
return lost
"""

# KEYS[1]: the node set; ARGV[1]: the alive key prefix. Returns node, load, node, load, ... of the live
# nodes, and forgets the nodes whose key expired.
_LIVE_NODES = """
local out = {}
for _, node in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local load = redis.call('GET', ARGV[1] .. node)
  if load then
    out[#out + 1] = node
    out[#out + 1] = load
  else
    redis.call('SREM', KEYS[1], node)
  end
end
return out
"""
_ALIVE_PREFIX = ALIVE_KEY.format(node="")


def owner_key(uid: bytes) -> str:
    return OWNER_KEY.format(uid=uid_str(uid))


class RedisBus:
    kind = "redis"

    def __init__(
        self,
        url: str,
        node_id: str,
        *,
        owner_ttl: float = 180.0,
        node_ttl: float = 6.0,
        timeout: float = 2.0,
        backoff: tuple[float, float] = (0.1, 2.0),
    ) -> None:
        self.node_id = node_id
        self.node_channel = NODE_CHANNEL.format(node=node_id)
        # One immediate retry, for a pooled connection that went stale; no backoff: an outage must
        # surface at once (the callers have a fallback), and the listener owns reconnecting.
        self._redis: Redis = Redis.from_url(
            url,
            socket_connect_timeout=timeout,
            socket_timeout=timeout,
            health_check_interval=10,
            retry=Retry(NoBackoff(), 1),
        )
        self._ttl_ms = int(owner_ttl * 1000)
        self._node_ttl_ms = int(node_ttl * 1000)
        self._backoff = backoff
        self._claim = self._redis.register_script(_CLAIM)
        self._release = self._redis.register_script(_RELEASE)
        self._refresh = self._redis.register_script(_REFRESH)
        self._live_nodes = self._redis.register_script(_LIVE_NODES)
        self._handler: Handler | None = None
        self._on_up: OnUp | None = None
        self._listener: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._up = False
        self._down_since: float | None = time.monotonic()
        self._last_error = "not connected yet"
        self.reconnects = 0

    @property
    def up(self) -> bool:
        return self._up

    @property
    def authoritative(self) -> bool:
        return self._up

    def status(self) -> dict[str, Any]:
        if self._up:
            return {"kind": self.kind, "state": "up"}
        return {"kind": self.kind, "state": "down", "error": self._last_error}

    async def start(self, handler: Handler, on_up: OnUp | None = None) -> None:
        self._handler, self._on_up = handler, on_up
        self._listener = asyncio.create_task(self._listen(), name="redis-bus-listener")

    async def stop(self) -> None:
        tasks = [t for t in (self._listener, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._listener, self._tasks = None, set()
        self._up = False
        with contextlib.suppress(RedisError, OSError):
            await self._redis.aclose()

    # -- publishing and owner records -------------------------------------------------------------

    async def broadcast(self, event: Event) -> int:
        return await self._publish(BROADCAST_CHANNEL, event)

    async def send(self, node: str, event: Event) -> int:
        return await self._publish(NODE_CHANNEL.format(node=node), event)

    async def claim(self, claims: Sequence[tuple[bytes, Owner]]) -> list[Owner | None]:
        if not claims:
            return []
        keys = [owner_key(uid) for uid, _ in claims]
        args: list[str | int] = [self._ttl_ms, *(owner.encode() for _, owner in claims)]
        previous = await self._call(self._claim(keys=keys, args=args))
        return [self._owner(value) for value in previous]

    async def release(self, releases: Sequence[tuple[bytes, Owner]]) -> None:
        if releases:
            keys = [owner_key(uid) for uid, _ in releases]
            await self._call(self._release(keys=keys, args=[owner.encode() for _, owner in releases]))

    async def refresh(self, claims: Sequence[tuple[bytes, Owner]]) -> list[bytes]:
        if not claims:
            return []
        keys = [owner_key(uid) for uid, _ in claims]
        args: list[str | int] = [self._ttl_ms, *(owner.encode() for _, owner in claims)]
        lost = await self._call(self._refresh(keys=keys, args=args))
        return [claims[int(i) - 1][0] for i in lost]

    async def owners(self, uids: Sequence[bytes]) -> dict[bytes, Owner]:
        if not uids:
            return {}
        values = await self._call(self._redis.mget([owner_key(uid) for uid in uids]))
        found = {}
        for uid, value in zip(uids, values, strict=True):
            owner = self._owner(value)
            if owner is not None:
                found[uid] = owner
        if not found:
            return found
        live = await self.live_nodes()
        return {uid: owner for uid, owner in found.items() if owner.node in live}

    async def beat(self, load: int) -> None:
        pipe = self._redis.pipeline(transaction=False)
        pipe.set(ALIVE_KEY.format(node=self.node_id), int(load), px=self._node_ttl_ms)
        pipe.sadd(NODES_KEY, self.node_id)
        await self._call(pipe.execute())

    async def live_nodes(self) -> dict[str, int]:
        flat = await self._call(self._live_nodes(keys=[NODES_KEY], args=[_ALIVE_PREFIX]))
        out: dict[str, int] = {}
        for i in range(0, len(flat) - 1, 2):
            node = flat[i].decode() if isinstance(flat[i], bytes) else str(flat[i])
            try:
                out[node] = int(flat[i + 1])
            except ValueError:
                out[node] = 0
        return out

    async def _publish(self, channel: str, event: Event) -> int:
        data = encode(Envelope(event=event, source=self.node_id, sent_at=time.time()))
        receivers: int = await self._call(self._redis.publish(channel, data))
        return receivers

    async def _call(self, pending: Awaitable[T]) -> T:
        if not self._up:
            # Do not even try: while the subscriber reconnects, waiting on timeouts helps nobody.
            if asyncio.iscoroutine(pending):
                pending.close()
            raise BusUnavailable(f"redis is down: {self._last_error}")
        try:
            return await pending
        except (RedisError, OSError) as exc:
            raise BusUnavailable(f"redis: {exc}") from exc

    @staticmethod
    def _owner(value: bytes | str | None) -> Owner | None:
        if not value:
            return None
        try:
            return Owner.decode(value)
        except BadEvent:
            logger.warning("ignoring a malformed owner record %r", value)
            return None

    # -- subscribing ------------------------------------------------------------------------------

    async def _listen(self) -> None:
        low, high = self._backoff
        delay = low
        while True:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(BROADCAST_CHANNEL, self.node_channel)
                await self._became_up()
                delay = low
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if message is not None and message.get("type") == "message":
                        self._dispatch(message["data"])
            except (RedisError, OSError) as exc:
                self._became_down(exc)
            finally:
                with contextlib.suppress(RedisError, OSError):
                    # Typed from redis 8.2 on, untyped before: a cast passes on both, an ignore on one.
                    await cast(Any, pubsub).aclose()
            # Equal jitter: nodes that lost Redis together do not come back in lockstep.
            await asyncio.sleep(delay / 2 + random.uniform(0, delay / 2))
            delay = min(delay * 2, high)

    async def _became_up(self) -> None:
        if self.reconnects:
            # Every pooled command connection died with the old server; do not let callers find out.
            await self._redis.connection_pool.disconnect()
        self._up = True
        if self._down_since is not None:
            outage = time.monotonic() - self._down_since
            if self.reconnects:
                logger.warning("redis bus connected again after %.1fs", outage)
            else:
                logger.info("redis bus connected; node channel %s", self.node_channel)
            self._down_since = None
        self.reconnects += 1
        if self._on_up is not None:
            self._run(self._on_up())

    def _became_down(self, exc: BaseException) -> None:
        self._last_error = str(exc) or type(exc).__name__
        if self._up:
            self._up = False
            self._down_since = time.monotonic()
            logger.warning(
                "redis bus lost (%s): serving on; pushes to other nodes wait for agents' next messages",
                self._last_error,
            )
        else:
            logger.debug("redis bus still down: %s", self._last_error)

    def _dispatch(self, data: bytes) -> None:
        try:
            envelope = decode(data)
        except BadEvent as exc:
            logger.warning("%s", exc)
            return
        if self._handler is not None:
            self._run(self._handler(envelope))

    def _run(self, coro: Any) -> None:
        # Handlers run on their own tasks: the listener never blocks, so Redis never has to buffer
        # for us (its pub/sub output-buffer limit would disconnect a slow subscriber).
        task: asyncio.Task[None] = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if isinstance(exc, BusUnavailable):
            logger.debug("bus handler stopped: %s", exc)
        elif exc is not None:
            logger.error("bus event handler failed", exc_info=exc)
