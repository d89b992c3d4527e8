"""Finding commands another node stored for the WebSocket agents this node holds.

A node that cannot reach the one holding an agent's socket (no bus, or nobody listening) keeps the
command in the agent's record. Every RELOAD_AFTER_SECONDS, this node re-reads the records of all the
agents on its sockets at once, and pushes any such command straight away. All the reads start in one
event-loop turn, so the store batches them (Elasticsearch: one `_mget` per thousand agents; SQLite:
one query per 500): a few requests a minute per node, where a read per agent per minute would cost
more Elasticsearch requests than all the heartbeats' writes together.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from gateway.fleet.agent import uid_str
from gateway.periodic import Periodic

if TYPE_CHECKING:
    from gateway.services import Services

logger = logging.getLogger("gateway.transport.command_sweep")

RELOAD_AFTER_SECONDS = 60.0


async def sweep(services: Services) -> int:
    """Push every command stored for an agent on this node's sockets; how many were pushed."""
    held = services.registry.registrations()
    if not held:
        return 0
    found = await asyncio.gather(*(services.store.get(uid) for uid, _ in held), return_exceptions=True)
    pushed = 0
    failures = 0
    for (uid, conn), stored in zip(held, found, strict=True):
        if isinstance(stored, BaseException):
            failures += 1
            continue
        if stored is None or stored.pending_command is None:
            continue
        if await conn.push_command(uid, stored.pending_command):
            pushed += 1
            services.metrics.pushes.labels(kind="command", delivery="pushed").inc()
            logger.info("pushed a command stored by another node", extra={"instance_uid": uid_str(uid)})
    if failures:
        logger.debug("command sweep: %d of %d records could not be read", failures, len(held))
    return pushed


class CommandSweep:
    def __init__(self, services: Services, interval: float = RELOAD_AFTER_SECONDS) -> None:
        self._services = services
        self._timer = Periodic("command-sweep", interval, self._on_timer)

    async def start(self) -> None:
        self._timer.start()

    async def stop(self) -> None:
        await self._timer.stop()

    async def _on_timer(self) -> None:
        await sweep(self._services)
