"""The in-process bus: the default for a single node.

Events go through the same JSON encoding as on Redis, and are delivered on their own task, so code
written against this adapter behaves the same on the Redis one. Several nodes in one process (tests)
can share a `LocalHub`; by default each bus has a hub of its own.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

from gateway.bus.base import Envelope, Event, Handler, OnUp, Owner, decode, encode

logger = logging.getLogger("gateway.bus.local")


class LocalHub:
    """What Redis would hold: the subscribed nodes and the owner records."""

    def __init__(self) -> None:
        self.nodes: dict[str, LocalBus] = {}
        self.owners: dict[bytes, Owner] = {}
        # node -> the load of its last beat; a node is live while its bus is started.
        self.loads: dict[str, int] = {}


class LocalBus:
    kind = "local"

    def __init__(self, node_id: str, hub: LocalHub | None = None) -> None:
        self.node_id = node_id
        # With a hub of its own, the node is the whole fleet: no other node shares its agents.
        self.alone = hub is None
        self.hub = hub or LocalHub()
        self._handler: Handler | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def up(self) -> bool:
        return True

    @property
    def authoritative(self) -> bool:
        # Only about the nodes sharing this hub; nodes in other processes are invisible.
        return False

    async def start(self, handler: Handler, on_up: OnUp | None = None) -> None:
        self._handler = handler
        self.hub.nodes[self.node_id] = self
        if on_up is not None:
            await on_up()

    async def stop(self) -> None:
        if self.hub.nodes.get(self.node_id) is self:
            del self.hub.nodes[self.node_id]
        tasks, self._tasks = self._tasks, set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def broadcast(self, event: Event) -> int:
        data = self._encode(event)
        receivers = list(self.hub.nodes.values())
        for bus in receivers:
            bus._deliver(data)
        return len(receivers)

    async def send(self, node: str, event: Event) -> int:
        bus = self.hub.nodes.get(node)
        if bus is None:
            return 0
        bus._deliver(self._encode(event))
        return 1

    async def claim(self, claims: Sequence[tuple[bytes, Owner]]) -> list[Owner | None]:
        previous: list[Owner | None] = []
        for uid, owner in claims:
            previous.append(self.hub.owners.get(uid))
            self.hub.owners[uid] = owner
        return previous

    async def release(self, releases: Sequence[tuple[bytes, Owner]]) -> None:
        for uid, owner in releases:
            if self.hub.owners.get(uid) == owner:
                del self.hub.owners[uid]

    async def refresh(self, claims: Sequence[tuple[bytes, Owner]]) -> list[bytes]:
        lost = []
        for uid, owner in claims:
            current = self.hub.owners.setdefault(uid, owner)
            if current != owner:
                lost.append(uid)
        return lost

    async def owners(self, uids: Sequence[bytes]) -> dict[bytes, Owner]:
        owners, live = self.hub.owners, self.hub.nodes
        return {uid: owners[uid] for uid in uids if uid in owners and owners[uid].node in live}

    async def beat(self, load: int) -> None:
        self.hub.loads[self.node_id] = load

    async def live_nodes(self) -> dict[str, int]:
        return {node: self.hub.loads.get(node, 0) for node in self.hub.nodes}

    def status(self) -> dict[str, Any]:
        return {"kind": self.kind, "state": "up"}

    def _encode(self, event: Event) -> bytes:
        return encode(Envelope(event=event, source=self.node_id, sent_at=time.time()))

    def _deliver(self, data: bytes) -> None:
        handler = self._handler
        if handler is None:
            return
        task = asyncio.create_task(handler(decode(data)))
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("bus event handler failed", exc_info=task.exception())
