"""Finding commands another node stored for the WebSocket agents this node holds.

A node that cannot reach the one holding an agent's socket (no bus, or nobody listening) keeps the
command in the agent's record. Every RELOAD_AFTER_SECONDS, a node with WebSocket agents asks the store
once for every agent that has a command waiting (`Store.pending_commands`: SQLite reads a partial index
that holds only those rows, Elasticsearch answers one `_search` with an `exists` filter), keeps those
on its own sockets and pushes their commands. Cost: one query per node per minute whatever the number
of agents, and its answer is almost always empty; no agent record is read or decoded. HTTP agents are
left to their next poll, which reads their record anyway.

Elasticsearch answers from its last refresh. A command this node pushed (and cleared, durably) is
listed again by the next sweep if the index has not refreshed since (`refresh_interval` of a minute or
more, or off): such a command is confirmed with a realtime read of that one record before it is pushed
again, so one request never restarts an agent twice.
"""

from __future__ import annotations

import logging

from gateway.fleet.agent import uid_str
from gateway.metrics import Metrics
from gateway.node.config_cache import ConfigCache
from gateway.node.push import push_command
from gateway.node.registry import Registry
from gateway.periodic import Periodic
from gateway.store.base import MAX_PENDING_COMMANDS, Store, StoreError

logger = logging.getLogger("gateway.node.command_sweep")

RELOAD_AFTER_SECONDS = 60.0
# Pending commands one sweep reads at most; past it, those of the agents seen longest ago wait.
SWEEP_LIMIT = MAX_PENDING_COMMANDS


class CommandSweep:
    def __init__(
        self,
        store: Store,
        registry: Registry,
        config_cache: ConfigCache,
        metrics: Metrics,
        interval: float = RELOAD_AFTER_SECONDS,
    ) -> None:
        self._store = store
        self._registry = registry
        self._config_cache = config_cache
        self._metrics = metrics
        self._timer = Periodic("command-sweep", interval, self._on_timer)
        # uid -> command this node pushed, for as long as the store still lists it (see above).
        self._delivered: dict[bytes, int] = {}

    def pushed_elsewhere(self, uid: bytes, command: int) -> None:
        """This node pushed `command` outside the sweep (the router): the next listing may still show
        it (Elasticsearch), so it is confirmed with a realtime read before being pushed again."""
        self._delivered[uid] = command

    async def start(self) -> None:
        self._timer.start()

    async def stop(self) -> None:
        await self._timer.stop()

    async def _on_timer(self) -> None:
        await self.run()

    async def run(self) -> int:
        """Push every command stored for an agent on this node's sockets; how many were pushed."""
        if not self._registry.websocket_agents:
            self._delivered = {}
            return 0
        try:
            pending = await self._store.pending_commands(SWEEP_LIMIT)
        except StoreError as exc:
            logger.debug("command sweep: pending commands could not be listed: %s", exc)
            return 0
        if len(pending) >= SWEEP_LIMIT:
            logger.warning(
                "command sweep: %d agents have a command waiting, the most one sweep reads; those seen "
                "longest ago wait for a later sweep (or their next connection)",
                len(pending),
            )
        delivered: dict[bytes, int] = {}
        pushed = 0
        for uid, command in pending.items():
            conn = self._registry.get(uid)
            if conn is None:
                continue
            if self._delivered.get(uid) == command and not await self._still_pending(uid, command):
                delivered[uid] = command
                continue
            if await push_command(conn, uid, command, self._config_cache.fleet):
                delivered[uid] = command
                pushed += 1
                self._metrics.pushes.labels(kind="command", delivery="pushed").inc()
                logger.info("pushed a command stored by another node", extra={"instance_uid": uid_str(uid)})
        self._delivered = delivered
        return pushed

    async def _still_pending(self, uid: bytes, command: int) -> bool:
        """Whether the record still holds a command this node already pushed: requested again, or a
        listing that predates the push's write."""
        try:
            stored = await self._store.get(uid)
        except StoreError as exc:
            logger.debug("command sweep: %s", exc, extra={"instance_uid": uid_str(uid)})
            return False
        return stored is not None and stored.pending_command == command
