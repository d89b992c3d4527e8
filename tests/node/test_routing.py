"""Two nodes in one process sharing a store and an in-process bus hub: the routing logic without Redis
(tests/integration repeats the important cases with real processes and a real redis-server)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import httpx2
import pytest

from gateway.bus.base import AgentCommand, ConnectionTakenOver, Owner
from gateway.bus.local import LocalBus, LocalHub
from gateway.fleet.agent import AgentWrite
from gateway.proto import opamp_pb2 as pb
from tests.support.memory_store import MemoryStore
from tests.support.servers import Node, run_node
from tests.support.waiting import eventually, uid
from tests.support.ws import agent_socket, closed_with, exchange, heartbeat, recv, report

pytestmark = pytest.mark.anyio


@pytest.fixture
async def nodes(tmp_path: Path) -> AsyncIterator[tuple[Node, Node]]:
    hub, store = LocalHub(), MemoryStore()
    async with contextlib.AsyncExitStack() as stack:
        pair = []
        for name in ("node-a", "node-b"):
            bus = LocalBus(name, hub)
            pair.append(
                await stack.enter_async_context(run_node(tmp_path, store=store, bus=bus, node_id=name))
            )
        yield pair[0], pair[1]


async def test_restart_through_another_node_is_published_to_the_owner(nodes: tuple[Node, Node]) -> None:
    a, b = nodes
    async with agent_socket(a.opamp_url) as ws, httpx2.AsyncClient(base_url=b.admin_url) as admin_b:
        await exchange(ws, report(uid(1)))
        await a.services.presence.settle()
        agent = (await admin_b.get(f"/api/v1/agents/{uuid.UUID(int=1)}")).json()
        assert (agent["connected"], agent["transport"], agent["node"]) == (True, "websocket", "node-a")
        response = await admin_b.post(f"/api/v1/agents/{uuid.UUID(int=1)}/restart")
        assert response.status_code == 202
        assert response.json()["delivery"] == "pushed" and response.json()["node"] == "node-a"
        pushed = await recv(ws)
        assert pushed.instance_uid == uid(1) and pushed.command.type == pb.CommandType_Restart


async def test_same_uid_on_another_node_closes_the_older_connection(nodes: tuple[Node, Node]) -> None:
    a, b = nodes
    async with agent_socket(a.opamp_url) as old, agent_socket(b.opamp_url) as new:
        await exchange(old, report(uid(2)))
        await a.services.presence.settle()
        await exchange(new, report(uid(2), 1))
        code, reason = await closed_with(old)
        assert code == 4000 and "node-b" in reason
        await eventually(lambda: a.services.registry.get(uid(2)) is None)
        assert b.services.registry.get(uid(2)) is not None
        # A's late release must not drop B's owner record.
        await a.services.presence.settle()
        assert (await b.services.bus.owners([uid(2)]))[uid(2)].node == "node-b"
        assert (await exchange(new, heartbeat(uid(2), 2))).instance_uid == uid(2)


async def test_command_for_a_node_without_the_socket_becomes_pending(nodes: tuple[Node, Node]) -> None:
    a, b = nodes
    async with agent_socket(a.opamp_url) as ws:
        await exchange(ws, report(uid(3)))
    await eventually(lambda: a.services.registry.get(uid(3)) is None)
    await a.services.presence.settle()
    async with httpx2.AsyncClient(base_url=b.admin_url) as admin_b:
        response = await admin_b.post(f"/api/v1/agents/{uuid.UUID(int=3)}/restart")
        assert response.json()["delivery"] == "pending"
    # The agent comes back on B: the command arrives in the reply to its first (quiet) message.
    async with agent_socket(b.opamp_url) as ws:
        reply = await exchange(ws, heartbeat(uid(3), 1))
        assert reply.HasField("command") and not reply.flags


async def test_refresh_closes_a_connection_whose_claim_was_lost(nodes: tuple[Node, Node]) -> None:
    a, _ = nodes
    async with agent_socket(a.opamp_url) as ws:
        await exchange(ws, report(uid(4)))
        await a.services.presence.settle()
        # A takeover event that never arrived: the record names someone else now.
        bus = a.services.bus
        assert isinstance(bus, LocalBus)
        bus.hub.owners[uid(4)] = Owner("node-c", "newer")
        await a.services.presence.refresh()
        code, reason = await closed_with(ws)
        assert code == 4000 and "another node" in reason


async def test_takeover_for_another_epoch_is_ignored(nodes: tuple[Node, Node]) -> None:
    a, b = nodes
    async with agent_socket(a.opamp_url) as ws:
        await exchange(ws, report(uid(5)))
        await b.services.bus.send("node-a", ConnectionTakenOver(uid=uid(5), new_node="node-b", epoch="stale"))
        await asyncio.sleep(0.1)  # the event is handled on its own task; nothing may happen
        assert (await exchange(ws, heartbeat(uid(5), 1))).instance_uid == uid(5)
        assert a.services.registry.get(uid(5)) is not None


async def test_a_stored_command_survives_another_nodes_status_write(tmp_path: Path) -> None:
    # Two nodes on one SQLite file and no shared bus: node-b cannot reach node-a's socket.
    async with (
        run_node(tmp_path, node_id="node-a") as a,
        run_node(tmp_path, node_id="node-b") as b,
        agent_socket(a.opamp_url) as ws,
        httpx2.AsyncClient(base_url=b.admin_url) as admin_b,
    ):
        await exchange(ws, report(uid(6)))
        response = await admin_b.post(f"/api/v1/agents/{uuid.UUID(int=6)}/restart")
        assert response.json()["delivery"] == "pending"
        # node-a writes the record it has cached (a status change is a full write, not a touch).
        unhealthy = heartbeat(uid(6), 1)
        unhealthy.health.healthy = False
        await exchange(ws, unhealthy)
        await a.services.writer.stop()  # flushed
        stored = await b.services.store.get(uid(6))
        assert stored is not None and stored.pending_command == pb.CommandType_Restart


async def test_a_command_from_the_bus_is_pushed_only_while_the_record_still_holds_its_id(
    nodes: tuple[Node, Node],
) -> None:
    a, b = nodes
    async with agent_socket(a.opamp_url) as ws:
        await exchange(ws, report(uid(7)))
        await a.services.presence.settle()
        # Delivered elsewhere already (the record holds no command): node-a sends nothing.
        await b.services.bus.send(
            "node-a", AgentCommand(uid=uid(7), command=pb.CommandType_Restart, command_id="x")
        )
        await asyncio.sleep(0.2)
        assert not (await exchange(ws, heartbeat(uid(7), 1))).HasField("command")
        # Still pending under that id: node-a pushes it and clears it.
        state = await b.services.store.get(uid(7))
        assert state is not None
        pending = replace(state, pending_command=pb.CommandType_Restart, command_id="y")
        await b.services.writer.submit_durable(
            AgentWrite(state=pending, changed=frozenset({"pending_command"}))
        )
        await b.services.bus.send(
            "node-a", AgentCommand(uid=uid(7), command=pb.CommandType_Restart, command_id="y")
        )
        pushed = await recv(ws)
        assert pushed.command.type == pb.CommandType_Restart
        await eventually(lambda: a.services.writer.depth == 0)
        stored = await b.services.store.get(uid(7))
        assert stored is not None and (stored.pending_command, stored.command_id) == (None, "")
