"""Getting server-initiated messages to agents, wherever their socket is, and saying where that is.

A command for an agent goes, in order of preference: over this node's socket; to the node that owns
the agent's socket (bus, per-node channel); into the agent's record as a pending command, which the
engine delivers in the reply to the agent's next message, on whichever node that arrives.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from typing import Literal

from gateway.bus.base import (
    AgentCommand,
    Bus,
    BusUnavailable,
    ConfigsChanged,
    ConnectionTakenOver,
    Envelope,
    Owner,
)
from gateway.fleet.agent import AgentState, AgentWrite, uid_str
from gateway.fleet.render import ConnectionInfo
from gateway.metrics import Metrics
from gateway.node.config_cache import ConfigCache
from gateway.node.push import push_command
from gateway.node.registry import Registry
from gateway.store.base import StoreError
from gateway.store.writer import Writer

logger = logging.getLogger("gateway.node.routing")

DeliveryKind = Literal["pushed", "published", "pending"]


@dataclass(frozen=True, slots=True)
class Delivery:
    kind: DeliveryKind
    # The node that holds (or was told to deliver to) the agent's socket; None when pending.
    node: str | None


class Router:
    def __init__(
        self,
        node_id: str,
        registry: Registry,
        bus: Bus,
        writer: Writer,
        config_cache: ConfigCache,
        metrics: Metrics,
        *,
        offline_after: float,
    ) -> None:
        self._node_id = node_id
        self._registry = registry
        self._bus = bus
        self._writer = writer
        self._config_cache = config_cache
        self._metrics = metrics
        self._offline_after = offline_after

    async def deliver_command(self, uid: bytes, command: int, *, from_bus: bool = False) -> Delivery:
        """Send `command` to the agent now if its socket is reachable, else keep it pending in its record.

        Raises StoreError (and writer errors) if the command has to be stored and cannot be.
        """
        conn = self._registry.get(uid)
        if conn is not None and await push_command(conn, uid, command, self._config_cache.fleet):
            self._metrics.pushes.labels(kind="command", delivery="pushed").inc()
            return Delivery("pushed", self._node_id)
        if not from_bus:
            # A node that got the command from the bus and has no socket must not bounce it back.
            delivered = await self._publish(uid, command)
            if delivered is not None:
                self._metrics.pushes.labels(kind="command", delivery="published").inc()
                return delivered
        await self._store_pending(uid, command)
        self._metrics.pushes.labels(kind="command", delivery="pending").inc()
        return Delivery("pending", None)

    async def _publish(self, uid: bytes, command: int) -> Delivery | None:
        bus = self._bus
        try:
            owner = (await bus.owners([uid])).get(uid)
            if owner is None or owner.node == bus.node_id:
                return None
            receivers = await bus.send(owner.node, AgentCommand(uid=uid, command=command))
        except BusUnavailable as exc:
            logger.warning(
                "bus unavailable, keeping the command pending: %s", exc, extra={"instance_uid": uid_str(uid)}
            )
            return None
        self._metrics.bus_events.labels(direction="sent", event="AgentCommand").inc()
        if receivers == 0:
            logger.info(
                "node %s is not listening; keeping the command pending",
                owner.node,
                extra={"instance_uid": uid_str(uid)},
            )
            return None
        return Delivery("published", owner.node)

    async def _store_pending(self, uid: bytes, command: int) -> None:
        state = await self._writer.get(uid)
        if state is None:
            return
        pending = replace(state, pending_command=command)
        await self._writer.submit_durable(AgentWrite(state=pending, changed=frozenset({"pending_command"})))

    async def on_event(self, envelope: Envelope) -> None:
        """Handle one bus event addressed to this node (or to every node)."""
        event = envelope.event
        self._metrics.bus_events.labels(direction="received", event=type(event).__name__).inc()
        self._metrics.bus_lag.observe(max(0.0, time.time() - envelope.sent_at))
        if isinstance(event, AgentCommand):
            await self.deliver_command(event.uid, event.command, from_bus=True)
        elif isinstance(event, ConnectionTakenOver):
            conn = self._registry.get(event.uid)
            # Only the connection that was replaced: a newer one on this node must stay.
            if conn is not None and conn.epoch == event.epoch:
                self._metrics.takeovers.labels(scope="remote").inc()
                await conn.taken_over(event.uid, f"node {event.new_node}")
        elif isinstance(event, ConfigsChanged):
            logger.debug("configs changed (%s) on node %s", event.reason, envelope.source)
            try:
                await self._config_cache.refresh(f"event from {envelope.source}")
            except StoreError as exc:
                # The timer tries again; agents re-check their desired config on every message anyway.
                logger.warning("config refresh after an event failed: %s", exc)

    async def connection_info(self, states: list[AgentState], now: float) -> dict[bytes, ConnectionInfo]:
        """Where each agent is connected at `now`, for the admin API."""
        me = self._node_id
        registry, bus = self._registry, self._bus
        offline_after = self._offline_after
        # Every agent not on this node: the record's transport may predate this feature, or the store
        # may not keep it yet; one MGET per page is cheap.
        remote = [s.instance_uid for s in states if registry.get(s.instance_uid) is None]
        owners: dict[bytes, Owner] = {}
        known = False
        if remote:
            try:
                owners = await bus.owners(remote)
                known = bus.authoritative
            except BusUnavailable:
                pass
        out: dict[bytes, ConnectionInfo] = {}
        for state in states:
            uid = state.instance_uid
            fresh = not state.disconnected and now - state.last_seen <= offline_after
            transport = state.transport or None
            if registry.get(uid) is not None:
                out[uid] = ConnectionInfo(connected=True, transport="websocket", node=me)
            elif uid in owners:
                out[uid] = ConnectionInfo(connected=True, transport="websocket", node=owners[uid].node)
            elif state.transport == "websocket" and (known or state.node == me):
                # Nobody holds its socket, and we would know: it closed.
                out[uid] = ConnectionInfo(connected=False, transport="websocket", node=state.node or None)
            else:
                # HTTP agents are "connected" while they poll; so are sockets we cannot see (bus down).
                out[uid] = ConnectionInfo(connected=fresh, transport=transport, node=state.node or None)
        return out
