"""The restart command over the WebSocket and HTTP transports (admin API to agent)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import httpx2
import pytest

from gateway.opamp import capabilities as caps
from gateway.proto import opamp_pb2 as pb
from tests.support.memory_store import MemoryStore
from tests.support.opamp_http import poll as http_poll
from tests.support.servers import Node, run_node
from tests.support.waiting import eventually, uid
from tests.support.ws import agent_socket, exchange, heartbeat, recv, report

pytestmark = pytest.mark.anyio


@pytest.fixture
async def store() -> MemoryStore:
    return MemoryStore()


@pytest.fixture
async def node(tmp_path: Path, store: MemoryStore) -> AsyncIterator[Node]:
    async with run_node(tmp_path, store=store) as running:
        yield running


@pytest.fixture
async def admin(node: Node) -> AsyncIterator[httpx2.AsyncClient]:
    async with httpx2.AsyncClient(base_url=node.admin_url) as c:
        yield c


async def test_restart_is_pushed_alone_to_a_websocket_agent(node: Node, admin: httpx2.AsyncClient) -> None:
    async with agent_socket(node.opamp_url) as ws:
        await exchange(ws, report(uid(20)))
        response = await admin.post(f"/api/v1/agents/{uuid.UUID(int=20)}/restart")
        assert response.status_code == 202
        body = response.json()
        assert len(body.pop("command_id")) == 32
        assert body == {
            "instance_uid": str(uuid.UUID(int=20)),
            "command": "restart",
            "delivery": "pushed",
            "node": "test-node",
        }
        pushed = await recv(ws)
        assert pushed.command.type == pb.CommandType_Restart
        assert {f.name for f, _ in pushed.ListFields()} <= {"instance_uid", "capabilities", "command"}
        assert pushed.HasField("command") and pushed.instance_uid == uid(20)
        # Nothing was left pending: the next reply carries no command.
        assert not (await exchange(ws, heartbeat(uid(20), 1))).HasField("command")


async def test_restart_refusals(node: Node, admin: httpx2.AsyncClient) -> None:
    async with agent_socket(node.opamp_url) as ws:
        await exchange(ws, report(uid(21), capabilities=caps.REPORTS_STATUS))
        response = await admin.post(f"/api/v1/agents/{uuid.UUID(int=21)}/restart")
        assert response.status_code == 409
        assert "AcceptsRestartCommand" in response.json()["error"]["message"]
    missing = await admin.post(f"/api/v1/agents/{uuid.UUID(int=99)}/restart")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    assert (await admin.post("/api/v1/agents/not-a-uid/restart")).status_code == 404


async def test_restart_for_an_http_agent_waits_for_its_next_poll(
    node: Node, admin: httpx2.AsyncClient
) -> None:
    async with httpx2.AsyncClient(base_url=node.opamp_url) as http:

        async def poll(msg: pb.AgentToServer) -> pb.ServerToAgent:
            return await http_poll(http, "/v1/opamp", msg)

        await poll(report(uid(30)))
        response = await admin.post(f"/api/v1/agents/{uuid.UUID(int=30)}/restart")
        assert response.status_code == 202
        assert response.json()["delivery"] == "pending" and response.json()["node"] is None
        assert (await admin.get(f"/api/v1/agents/{uuid.UUID(int=30)}")).json()["pending_command"] == "restart"
        # A poll whose reply has something else to say (a sequence gap: ReportFullState) keeps it waiting.
        busy = await poll(heartbeat(uid(30), 5))
        assert busy.flags & caps.REPORT_FULL_STATE and not busy.HasField("command")
        # The next quiet reply carries it, alone; delivered once.
        quiet = await poll(report(uid(30), 6))
        assert quiet.HasField("command") and quiet.command.type == pb.CommandType_Restart
        assert {f.name for f, _ in quiet.ListFields()} <= {"instance_uid", "capabilities", "command"}
        assert not (await poll(heartbeat(uid(30), 7))).HasField("command")
        agent = (await admin.get(f"/api/v1/agents/{uuid.UUID(int=30)}")).json()
        assert "pending_command" not in agent
        assert (agent["connected"], agent["transport"], agent["node"]) == (True, "http", "test-node")


async def test_command_stored_elsewhere_reaches_a_cached_socket_on_the_sweep(
    node: Node, store: MemoryStore
) -> None:
    services = node.services
    async with agent_socket(node.opamp_url) as ws, agent_socket(node.opamp_url) as other:
        await exchange(ws, report(uid(90)))
        await exchange(other, report(uid(89)))
        await eventually(lambda: services.writer.depth == 0 and uid(90) in store.records)
        # Another node, unable to reach this one, stored a restart in the record.
        store.records[uid(90)] = replace(store.records[uid(90)], pending_command=pb.CommandType_Restart)
        reads = store.reads
        # A heartbeat reads nothing: the socket's cached record answers it.
        assert not (await exchange(ws, heartbeat(uid(90), 1))).HasField("command")
        assert store.reads == reads
        # The node's periodic sweep asks the store once for pending commands, reads no record, and
        # pushes the command.
        assert await services.command_sweep.run() == 1
        assert store.reads == reads and store.pending_queries == 1
        pushed = await recv(ws)
        assert pushed.HasField("command") and pushed.command.type == pb.CommandType_Restart
        await eventually(
            lambda: services.writer.depth == 0 and store.records[uid(90)].pending_command is None
        )
        assert await services.command_sweep.run() == 0
        assert not (await exchange(ws, heartbeat(uid(90), 2))).HasField("command")


async def test_a_pushed_command_satisfies_a_stored_one(
    node: Node, store: MemoryStore, admin: httpx2.AsyncClient
) -> None:
    services = node.services
    async with agent_socket(node.opamp_url) as ws:
        await exchange(ws, report(uid(91)))
        await eventually(lambda: services.writer.depth == 0 and uid(91) in store.records)
        store.records[uid(91)] = replace(store.records[uid(91)], pending_command=pb.CommandType_Restart)
        assert (await admin.post(f"/api/v1/agents/{uuid.UUID(int=91)}/restart")).json()[
            "delivery"
        ] == "pushed"
        await recv(ws)
        await eventually(
            lambda: services.writer.depth == 0 and store.records[uid(91)].pending_command is None
        )
