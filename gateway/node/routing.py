"""Getting server-initiated messages to agents, wherever their socket is, and saying where that is.

A command for an agent is first stored in the agent's record as pending, with an id; then it goes over
this node's socket, or to the live node that owns the agent's socket (bus, per-node channel). The
node that delivers it clears it from the record. Whatever is still pending is delivered by the engine
in the reply to the agent's next message (a reconnect anywhere), or by the owner's command sweep. A
node told of a command over the bus first checks the record still holds that id, so an agent that
moved and got it elsewhere never gets it twice.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

from gateway.bus.base import (
    AgentCommand,
    Bus,
    BusUnavailable,
    ConfigsChanged,
    ConnectionTakenOver,
    CredentialChanged,
    Envelope,
    Owner,
)
from gateway.fleet.agent import AgentState, AgentWrite, uid_str
from gateway.fleet.render import ConnectionInfo
from gateway.metrics import Metrics
from gateway.node.config_cache import ConfigCache
from gateway.node.push import push_command
from gateway.node.registry import Holder, Registry
from gateway.store.base import Store, StoreError
from gateway.store.writer import Writer

logger = logging.getLogger("gateway.node.routing")

DeliveryKind = Literal["pushed", "pending"]
# How long the admin API waits for the owning node to deliver a command it was told of over the bus
# before answering "pending" (it is delivered later all the same: it waits in the record).
_CONFIRM_WITHIN = 1.0


@dataclass(frozen=True, slots=True)
class Delivery:
    kind: DeliveryKind
    # The node that delivered it, or that was told to (None: no live node holds the agent's socket).
    node: str | None
    command_id: str


class Router:
    def __init__(
        self,
        node_id: str,
        registry: Registry,
        bus: Bus,
        store: Store,
        writer: Writer,
        config_cache: ConfigCache,
        metrics: Metrics,
        *,
        offline_after: float,
        on_pushed: Callable[[bytes, int], None] | None = None,
        on_credential: Callable[[Envelope], Awaitable[None]] | None = None,
    ) -> None:
        self._node_id = node_id
        self._registry = registry
        self._bus = bus
        self._store = store
        self._writer = writer
        self._config_cache = config_cache
        self._metrics = metrics
        self._offline_after = offline_after
        # Told of every command this node pushes (the command sweep, so it does not push it again).
        self._on_pushed = on_pushed
        # Told of every CredentialChanged (gateway/node/credentials.py).
        self._on_credential = on_credential

    async def deliver_command(self, uid: bytes, command: int) -> Delivery:
        """Store `command` as pending on the agent's record, then get it to the agent's socket if one
        is reachable: this node's (pushed at once), or the live node that owns it (told over the bus;
        "pushed" once that node cleared it from the record within a second, else still "pending").
        A command that reaches no socket waits in the record for the agent's next message or the
        owner's command sweep, whichever node that is on.

        Raises StoreError (and writer errors) if the command cannot be stored.
        """
        command_id = uuid.uuid4().hex
        if not await self._store_pending(uid, command, command_id):
            return Delivery("pending", None, command_id)
        conn = self._registry.get(uid)
        if conn is not None and await self._push(conn, uid, command):
            return Delivery("pushed", self._node_id, command_id)
        owner = await self._publish(uid, command, command_id)
        if owner is not None and await self._cleared(uid, command_id):
            return Delivery("pushed", owner, command_id)
        self._metrics.pushes.labels(kind="command", delivery="pending").inc()
        return Delivery("pending", owner, command_id)

    async def rebind(self, uid: bytes, key_id: str) -> AgentState | None:
        """Bind the agent to another agent key (`key_id`; "" binds it to none), committed before this
        returns, then close its socket (this node's, or the live owner's over the bus) so that it
        authenticates again: its next message is checked against the stored binding. None if there
        is no such agent. Raises StoreError (and writer errors) if the record cannot be written."""
        state = await self._writer.get(uid)
        if state is None:
            return None
        bound = state.updated(key_id=key_id)
        await self._writer.submit_durable(AgentWrite(state=bound, changed=frozenset({"key_id"})))
        current = state.instance_uid
        where = f"node {self._node_id}: its agent key changed"
        conn = self._registry.get(current)
        if conn is not None:
            await conn.taken_over(current, where)
            return bound
        try:
            owner = (await self._bus.owners([current])).get(current)
            if owner is not None and owner.node != self._bus.node_id:
                event = ConnectionTakenOver(uid=current, new_node=self._node_id, epoch=owner.epoch)
                await self._bus.send(owner.node, event)
                self._metrics.bus_events.labels(direction="sent", event="ConnectionTakenOver").inc()
        except BusUnavailable as exc:
            # The record is moved all the same; the socket keeps its cached copy until it reconnects.
            logger.warning(
                "bus unavailable, the agent's socket elsewhere stays open until it reconnects: %s",
                exc,
                extra={"instance_uid": uid_str(current)},
            )
        return bound

    async def _deliver_from_bus(self, event: AgentCommand) -> None:
        """Another node stored a command for an agent whose socket it believes this node holds: push it
        if the record still holds it (an agent that moved and got it elsewhere must not get it twice)."""
        uid = event.uid
        conn = self._registry.get(uid)
        if conn is None:
            # The record keeps it: the agent's next connection or message delivers it.
            return
        if event.command_id and not await self._still_pending(uid, event.command_id):
            logger.info(
                "a command from the bus was delivered elsewhere; not sending it again",
                extra={"instance_uid": uid_str(uid)},
            )
            return
        await self._push(conn, uid, event.command)

    async def _push(self, conn: Holder, uid: bytes, command: int) -> bool:
        if not await push_command(conn, uid, command, self._config_cache.fleet):
            return False
        self._metrics.pushes.labels(kind="command", delivery="pushed").inc()
        if self._on_pushed is not None:
            self._on_pushed(uid, command)
        return True

    async def _still_pending(self, uid: bytes, command_id: str) -> bool:
        try:
            stored = await self._store.get(uid)
        except StoreError as exc:
            # The sweep or the agent's next message delivers it once the store answers.
            logger.warning(
                "cannot check a command from the bus: %s", exc, extra={"instance_uid": uid_str(uid)}
            )
            return False
        return stored is not None and stored.command_id == command_id

    async def _cleared(self, uid: bytes, command_id: str) -> bool:
        """Whether the owner delivered the command (cleared it from the record) within _CONFIRM_WITHIN."""
        deadline = time.monotonic() + _CONFIRM_WITHIN
        delay = 0.01
        while time.monotonic() < deadline:
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.2)
            try:
                stored = await self._store.get(uid)
            except StoreError:
                return False
            if stored is None or stored.command_id != command_id:
                return True
        return False

    async def _publish(self, uid: bytes, command: int, command_id: str) -> str | None:
        """Tell the live node that owns the agent's socket; that node, or None if no live node does."""
        bus = self._bus
        try:
            owner = (await bus.owners([uid])).get(uid)
            if owner is None or owner.node == bus.node_id:
                return None
            receivers = await bus.send(
                owner.node, AgentCommand(uid=uid, command=command, command_id=command_id)
            )
        except BusUnavailable as exc:
            logger.warning(
                "bus unavailable, the command waits in the record: %s",
                exc,
                extra={"instance_uid": uid_str(uid)},
            )
            return None
        self._metrics.bus_events.labels(direction="sent", event="AgentCommand").inc()
        self._metrics.pushes.labels(kind="command", delivery="published").inc()
        if receivers == 0:
            logger.warning(
                "node %s owns the agent but is not listening; the command waits in the record",
                owner.node,
                extra={"instance_uid": uid_str(uid)},
            )
            return None
        return owner.node

    async def _store_pending(self, uid: bytes, command: int, command_id: str) -> bool:
        state = await self._writer.get(uid)
        if state is None:
            return False
        pending = state.updated(pending_command=command, command_id=command_id)
        await self._writer.submit_durable(AgentWrite(state=pending, changed=frozenset({"pending_command"})))
        return True

    async def on_event(self, envelope: Envelope) -> None:
        """Handle one bus event addressed to this node (or to every node)."""
        event = envelope.event
        self._metrics.bus_events.labels(direction="received", event=type(event).__name__).inc()
        self._metrics.bus_lag.observe(max(0.0, time.time() - envelope.sent_at))
        if isinstance(event, AgentCommand):
            await self._deliver_from_bus(event)
        elif isinstance(event, ConnectionTakenOver):
            conn = self._registry.get(event.uid)
            # Only the connection that was replaced: a newer one on this node must stay.
            if conn is not None and conn.epoch == event.epoch:
                self._metrics.takeovers.labels(scope="remote").inc()
                await conn.taken_over(event.uid, f"node {event.new_node}")
        elif isinstance(event, CredentialChanged):
            if self._on_credential is not None:
                await self._on_credential(envelope)
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
