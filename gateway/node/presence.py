"""Keeps the bus's owner records in step with this node's registry.

Claims and releases are queued and sent in batches by one task, so an agent's reply never waits for
Redis and a reconnect storm costs a few pipelined round trips, not one per agent. While the bus is
down they are dropped: every (re)connect of the bus and every third of the owner TTL, the whole
registry is re-asserted with `refresh`, which also finds connections another node took over while an
event was lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Literal

from gateway.bus.base import Bus, BusUnavailable, ConnectionTakenOver, Owner
from gateway.fleet.agent import uid_str
from gateway.node.registry import Holder, Registry

logger = logging.getLogger("gateway.node.presence")

BATCH = 500
_STOP_TIMEOUT = 2.0
Op = tuple[Literal["claim", "release"], bytes, Owner]


class Presence:
    def __init__(
        self, node_id: str, registry: Registry, bus: Bus, owner_ttl: float, *, node_ttl: float
    ) -> None:
        self.node_id = node_id
        self._registry = registry
        self._bus = bus
        self._refresh_every = owner_ttl / 3
        self._beat_every = node_ttl / 3
        self._queue: asyncio.Queue[Op] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._refreshing = asyncio.Lock()
        # uid -> claims queued or being sent. A refresh must not judge those: Redis still holds the
        # previous owner, often this node's own older connection to the same agent.
        self._unsent: dict[bytes, int] = {}
        self.takeovers_sent = 0

    def owner(self, conn: Holder) -> Owner:
        return Owner(node=self.node_id, epoch=conn.epoch)

    def claim(self, uid: bytes, conn: Holder) -> None:
        self._unsent[uid] = self._unsent.get(uid, 0) + 1
        self._queue.put_nowait(("claim", uid, self.owner(conn)))

    def release(self, uid: bytes, conn: Holder) -> None:
        self._queue.put_nowait(("release", uid, self.owner(conn)))

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._work(), name="presence-worker"),
            asyncio.create_task(self._refresh_periodically(), name="presence-refresh"),
            asyncio.create_task(self._beat_periodically(), name="presence-beat"),
        ]

    async def stop(self) -> None:
        if self._bus.up:
            # Send the releases of sockets that just closed, so other nodes stop routing here now
            # rather than when the records expire; bounded, shutdown must not hang on Redis.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._queue.join(), _STOP_TIMEOUT)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        # Release what is still held, so other nodes stop routing here before the TTL runs out.
        held = [(uid, self.owner(conn)) for uid, conn in self._registry.registrations()]
        with contextlib.suppress(BusUnavailable):
            for start in range(0, len(held), BATCH):
                await self._bus.release(held[start : start + BATCH])

    async def settle(self) -> None:
        """Wait until every queued claim and release has been sent (tests, drain)."""
        await self._queue.join()

    async def refresh(self) -> None:
        """Re-assert every registration; close the ones another node owns now."""
        async with self._refreshing:
            claims = [
                (uid, self.owner(conn))
                for uid, conn in self._registry.registrations()
                if uid not in self._unsent
            ]
            asserted = dict(claims)
            lost: list[bytes] = []
            for start in range(0, len(claims), BATCH):
                lost.extend(await self._bus.refresh(claims[start : start + BATCH]))
            for uid in lost:
                conn = self._registry.get(uid)
                # The agent may have reconnected here while the refresh ran: only the connection
                # the refresh spoke for can have been taken over.
                if conn is not None and self.owner(conn) == asserted[uid]:
                    logger.info("another node holds this agent now", extra={"instance_uid": uid_str(uid)})
                    await conn.taken_over(uid, "another node")

    async def beat(self) -> None:
        """Keep this node's liveness record alive, with how many WebSocket agents it holds."""
        await self._bus.beat(self._registry.websocket_agents)

    async def _beat_periodically(self) -> None:
        while True:
            try:
                await self.beat()
            except BusUnavailable as exc:
                logger.debug("liveness beat skipped: %s", exc)
            await asyncio.sleep(self._beat_every)

    async def _refresh_periodically(self) -> None:
        while True:
            await asyncio.sleep(self._refresh_every)
            try:
                await self.refresh()
            except BusUnavailable as exc:
                logger.debug("owner refresh skipped: %s", exc)

    async def _work(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                await self._apply(batch)
            except BusUnavailable as exc:
                # The next refresh after the bus is back re-claims whatever is still connected.
                logger.debug("dropped %d owner updates: %s", len(batch), exc)
            finally:
                for op, uid, _owner in batch:
                    if op == "claim":
                        left = self._unsent.pop(uid, 1) - 1
                        if left:
                            self._unsent[uid] = left
                    self._queue.task_done()

    async def _apply(self, batch: list[Op]) -> None:
        # Consecutive runs of one kind go together; the order between a claim and a release of the
        # same uid is kept.
        run: list[tuple[bytes, Owner]] = []
        kind = batch[0][0]
        for op, uid, owner in batch:
            if op != kind:
                await self._flush(kind, run)
                run, kind = [], op
            run.append((uid, owner))
        await self._flush(kind, run)

    async def _flush(self, kind: str, run: list[tuple[bytes, Owner]]) -> None:
        if kind == "release":
            await self._bus.release(run)
            return
        previous = await self._bus.claim(run)
        for (uid, owner), before in zip(run, previous, strict=True):
            if before is None or before == owner or before.node == self.node_id:
                # Same node: the registry already closed the older connection.
                continue
            event = ConnectionTakenOver(uid=uid, new_node=self.node_id, epoch=before.epoch)
            receivers = await self._bus.send(before.node, event)
            self.takeovers_sent += 1
            if receivers == 0:
                # Its liveness has expired or is about to: the old socket died with the node.
                logger.warning(
                    "agent reconnected here from node %s, which is gone (nobody received the takeover "
                    "notice)",
                    before.node,
                    extra={"instance_uid": uid_str(uid)},
                )
                continue
            logger.info(
                "agent reconnected here; told node %s to close its connection (%d receivers)",
                before.node,
                receivers,
                extra={"instance_uid": uid_str(uid)},
            )
