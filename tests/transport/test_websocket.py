"""The WebSocket transport against a real uvicorn socket, with the `websockets` client library."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx2
import pytest
from websockets.exceptions import InvalidStatus

from gateway.node import duplicates
from gateway.opamp import capabilities as caps
from gateway.proto import anyvalue_pb2 as av, opamp_pb2 as pb
from tests.support.memory_store import MemoryStore
from tests.support.servers import Node, run_node
from tests.support.waiting import eventually, uid
from tests.support.ws import (
    agent_socket,
    closed_with,
    exchange,
    heartbeat,
    recv,
    report,
)
from tests.support.ws_raw import RawAgent

pytestmark = pytest.mark.anyio

LIMIT = 4096


@pytest.fixture
async def store() -> MemoryStore:
    return MemoryStore()


@pytest.fixture
async def node(tmp_path: Path, store: MemoryStore) -> AsyncIterator[Node]:
    async with run_node(tmp_path, store=store, max_message_bytes=LIMIT) as running:
        yield running


@pytest.fixture
async def admin(node: Node) -> AsyncIterator[httpx2.AsyncClient]:
    async with httpx2.AsyncClient(base_url=node.admin_url) as c:
        yield c


async def test_enroll_over_websocket(node: Node, admin: httpx2.AsyncClient) -> None:
    async with agent_socket(node.opamp_url) as ws:
        reply = await exchange(ws, report(uid(1)))
        assert reply.instance_uid == uid(1)
        assert reply.capabilities & pb.ServerCapabilities_AcceptsStatus
        assert not reply.HasField("error_response")
        agent = (await admin.get(f"/api/v1/agents/{uuid.UUID(int=1)}")).json()
        assert agent["status"] == "online"
        assert (agent["connected"], agent["transport"], agent["node"]) == (True, "websocket", "test-node")


async def test_heartbeats_need_no_store_read(
    node: Node, store: MemoryStore, admin: httpx2.AsyncClient
) -> None:
    async with agent_socket(node.opamp_url) as ws:
        await exchange(ws, report(uid(2)))
        reads = store.reads
        for seq in range(1, 6):
            reply = await exchange(ws, heartbeat(uid(2), seq))
            assert reply.instance_uid == uid(2) and reply.flags == 0
        assert store.reads == reads
        # The cached record stayed current: no sequence gap was seen, and the writer has seq 5.
        agent = (await admin.get(f"/api/v1/agents/{uuid.UUID(int=2)}")).json()
        assert agent["sequence_num"] == 5


async def test_first_message_loads_a_known_agent(node: Node, store: MemoryStore) -> None:
    async with agent_socket(node.opamp_url) as ws:
        await exchange(ws, report(uid(3)))
    async with agent_socket(node.opamp_url) as ws:
        reads = store.reads
        # A compressed first message after a reconnect, in sequence: no full state asked for.
        reply = await exchange(ws, heartbeat(uid(3), 1))
        assert store.reads > reads
        assert not reply.flags & caps.REPORT_FULL_STATE


async def test_empty_payload_is_answered_with_bad_request(node: Node) -> None:
    async with agent_socket(node.opamp_url) as ws:
        await ws.send(b"\x00")
        reply = await recv(ws)
        assert reply.error_response.type == pb.ServerErrorResponseType_BadRequest
        assert "16 bytes" in reply.error_response.error_message
        # The socket stays usable.
        assert (await exchange(ws, report(uid(4)))).instance_uid == uid(4)


async def test_reply_over_the_limit_is_replaced_by_the_same_error_as_over_http(tmp_path: Path) -> None:
    async with run_node(tmp_path, max_message_bytes=32) as small, agent_socket(small.opamp_url) as ws:
        msg = pb.AgentToServer(instance_uid=uid(7), flags=caps.REQUEST_INSTANCE_UID)
        assert len(msg.SerializeToString()) <= 32
        reply = await exchange(ws, msg)
    assert reply.error_response.type == pb.ServerErrorResponseType_Unknown
    assert "size limit" in reply.error_response.error_message
    assert not reply.HasField("agent_identification")


@pytest.mark.parametrize(
    ("frame", "code", "reason"),
    [
        ("a text frame", 1003, "binary"),
        # Over the limit by the header byte alone: the limit counts the header.
        (b"\x00" + b"\x00" * LIMIT, 1009, "exceeds"),
        # Far over: the frame reader refuses it from the frame's header, before buffering.
        (b"\x00" + b"\x00" * (LIMIT * 4), 1009, f"exceeds the {LIMIT}-byte limit"),
    ],
)
async def test_bad_frames_close_with_the_right_code(
    node: Node, frame: str | bytes, code: int, reason: str
) -> None:
    async with agent_socket(node.opamp_url) as ws:
        await ws.send(frame)
        got_code, got_reason = await closed_with(ws)
        assert got_code == code
        assert reason in got_reason


async def test_a_message_of_exactly_the_limit_is_accepted(node: Node) -> None:
    async with agent_socket(node.opamp_url) as ws:
        msg = report(uid(8))
        msg.agent_description.non_identifying_attributes.add(key="pad", value=av.AnyValue(string_value=""))
        pad = msg.agent_description.non_identifying_attributes[-1].value
        pad.string_value = "x" * (LIMIT - 1 - len(msg.SerializeToString()))
        # Length prefixes grew with the padding: take off what they added.
        pad.string_value = pad.string_value[
            : len(pad.string_value) - (len(msg.SerializeToString()) - (LIMIT - 1))
        ]
        framed = b"\x00" + msg.SerializeToString()
        assert len(framed) == LIMIT
        await ws.send(framed)
        assert (await recv(ws)).instance_uid == uid(8)


@pytest.mark.parametrize(
    "frame",
    [b"\x00\xff\xff\xff", b"\x01\x0a\x00", b"\x81\x01", b"\x80" * 10 + b"\x00"],
    ids=["bad protobuf", "header 1", "header 129", "11-byte header"],
)
async def test_undecodable_messages_get_bad_request_and_keep_the_socket(node: Node, frame: bytes) -> None:
    async with agent_socket(node.opamp_url) as ws:
        await ws.send(frame)
        reply = await recv(ws)
        assert reply.error_response.type == pb.ServerErrorResponseType_BadRequest
        assert reply.instance_uid == b""
        assert (await exchange(ws, report(uid(9)))).instance_uid == uid(9)


async def test_header_less_messages_are_accepted(node: Node) -> None:
    async with agent_socket(node.opamp_url) as ws:
        await ws.send(report(uid(6)).SerializeToString())
        reply = await recv(ws)
        assert reply.instance_uid == uid(6) and not reply.HasField("error_response")
        await ws.send(heartbeat(uid(6), 1).SerializeToString())
        assert (await recv(ws)).flags == 0
        assert node.services.registry.get(uid(6)) is not None


async def test_a_connection_settings_request_gets_bad_request_on_an_open_socket(node: Node) -> None:
    async with agent_socket(node.opamp_url) as ws:
        await exchange(ws, report(uid(5)))
        msg = heartbeat(uid(5), 1)
        msg.connection_settings_request.opamp.certificate_request.csr = b"-----BEGIN CERTIFICATE REQUEST-----"
        reply = await exchange(ws, msg)
        assert reply.error_response.type == pb.ServerErrorResponseType_BadRequest
        assert reply.instance_uid == uid(5)
        assert (await exchange(ws, heartbeat(uid(5), 2))).flags == 0


async def test_a_short_temporary_uid_gets_a_new_uid(node: Node) -> None:
    async with agent_socket(node.opamp_url) as ws:
        msg = report(b"")
        msg.flags = caps.REQUEST_INSTANCE_UID
        reply = await exchange(ws, msg)
        new_uid = reply.agent_identification.new_instance_uid
        assert not reply.HasField("error_response") and len(new_uid) == 16
        assert (await exchange(ws, heartbeat(new_uid, 1))).flags == 0
        assert node.services.registry.get(new_uid) is not None


async def test_an_empty_message_is_an_empty_agent_to_server(node: Node) -> None:
    async with agent_socket(node.opamp_url) as ws:
        await ws.send(b"")
        reply = await recv(ws)
        assert reply.error_response.type == pb.ServerErrorResponseType_BadRequest
        assert "16 bytes" in reply.error_response.error_message


async def test_close_forgets_the_agent(node: Node, admin: httpx2.AsyncClient) -> None:
    registry = node.services.registry
    async with agent_socket(node.opamp_url) as ws:
        await exchange(ws, report(uid(5)))
        assert registry.get(uid(5)) is not None
    await eventually(lambda: registry.get(uid(5)) is None and registry.socket_count == 0)
    agent = (await admin.get(f"/api/v1/agents/{uuid.UUID(int=5)}")).json()
    assert (agent["connected"], agent["transport"]) == (False, "websocket")
    # No goodbye was sent: the agent is not "disconnected", only its socket is gone.
    assert agent["status"] == "online"


async def test_agent_disconnect_forgets_the_association(node: Node) -> None:
    async with agent_socket(node.opamp_url) as ws:
        await exchange(ws, report(uid(6)))
        goodbye = heartbeat(uid(6), 1)
        goodbye.agent_disconnect.SetInParent()
        await exchange(ws, goodbye)
        assert node.services.registry.get(uid(6)) is None


async def test_new_instance_uid_moves_the_registration(node: Node) -> None:
    registry = node.services.registry
    async with agent_socket(node.opamp_url) as ws:
        temporary = uid(7)
        first = report(temporary)
        first.flags = caps.REQUEST_INSTANCE_UID
        reply = await exchange(ws, first)
        new = reply.agent_identification.new_instance_uid
        assert len(new) == 16 and new != temporary and reply.instance_uid == temporary
        assert registry.get(new) is not None and registry.get(temporary) is None
        # Still under the temporary uid: told again, and the record is found without a store read.
        again = await exchange(ws, heartbeat(temporary, 1))
        assert again.agent_identification.new_instance_uid == new
        # Adopted.
        reply = await exchange(ws, heartbeat(new, 2))
        assert reply.instance_uid == new and not reply.HasField("agent_identification")
        assert not reply.flags & caps.REPORT_FULL_STATE


async def test_several_agents_on_one_socket(node: Node, admin: httpx2.AsyncClient) -> None:
    registry = node.services.registry
    async with agent_socket(node.opamp_url) as ws:
        for n in (10, 11, 12):
            assert (await exchange(ws, report(uid(n)))).instance_uid == uid(n)
        conn = registry.get(uid(10))
        assert conn is not None and registry.get(uid(11)) is conn and registry.get(uid(12)) is conn
        assert registry.socket_count == 1 and registry.websocket_agents == 3
        # Interleaved heartbeats are routed per uid: every one in sequence, none asks for full state.
        for seq in (1, 2):
            for n in (12, 10, 11):
                reply = await exchange(ws, heartbeat(uid(n), seq))
                assert reply.instance_uid == uid(n) and reply.flags == 0
        # A push for one agent carries that agent's uid.
        response = await admin.post(f"/api/v1/agents/{uuid.UUID(int=11)}/restart")
        assert response.status_code == 202 and response.json()["delivery"] == "pushed"
        pushed = await recv(ws)
        assert pushed.instance_uid == uid(11) and pushed.HasField("command")
        # One agent leaves; the others stay registered.
        goodbye = heartbeat(uid(10), 3)
        goodbye.agent_disconnect.SetInParent()
        await exchange(ws, goodbye)
        assert registry.get(uid(10)) is None and registry.get(uid(11)) is conn


async def test_same_uid_again_from_a_silent_socket_closes_it(
    node: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A genuine reconnect: the older socket answers no probe (a live one would make this a clone,
    # tests/transport/test_websocket_duplicates.py).
    monkeypatch.setattr(duplicates, "RECENT_SECONDS", 0.0)
    monkeypatch.setattr(duplicates, "PROBE_SECONDS", 0.2)
    old = await RawAgent.open(node.opamp_url)
    try:
        await old.exchange(report(uid(40)))
        async with agent_socket(node.opamp_url) as new:
            await exchange(new, report(uid(40), 1))
            assert await old.closed_with() == 4000
            assert (await exchange(new, heartbeat(uid(40), 2))).instance_uid == uid(40)
            assert node.services.registry.get(uid(40)) is not None
    finally:
        old.close()


async def test_takeover_of_one_agent_keeps_a_multiplexed_socket(
    node: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(duplicates, "RECENT_SECONDS", 0.0)
    monkeypatch.setattr(duplicates, "PROBE_SECONDS", 0.2)
    proxy = await RawAgent.open(node.opamp_url)
    try:
        await proxy.exchange(report(uid(41)))
        await proxy.exchange(report(uid(42)))
        async with agent_socket(node.opamp_url) as single:
            await exchange(single, report(uid(41), 1))
            await eventually(
                lambda: node.services.registry.get(uid(41)) is not node.services.registry.get(uid(42))
            )
            # The proxy's other agent is still served on the same socket.
            assert (await proxy.exchange(heartbeat(uid(42), 1))).instance_uid == uid(42)
    finally:
        proxy.close()


async def test_get_without_upgrade_is_not_allowed(node: Node) -> None:
    async with httpx2.AsyncClient(base_url=node.opamp_url) as http:
        assert (await http.get("/v1/opamp")).status_code == 405


async def test_server_pings_idle_sockets_and_drops_silent_peers(tmp_path: Path) -> None:
    async with run_node(tmp_path, store=MemoryStore(), ws_ping_interval=0.2, ws_ping_timeout=0.3) as running:
        # A raw client that never answers pings.
        port = int(running.opamp_url.rsplit(":", 1)[1])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            b"GET /v1/opamp HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 101")
        started = time.monotonic()
        ping = await asyncio.wait_for(reader.readexactly(2), 5)
        assert ping[0] == 0x89  # FIN + ping
        assert 0.1 < time.monotonic() - started < 1.0
        await reader.readexactly(ping[1] & 0x7F)
        close = await asyncio.wait_for(reader.readexactly(4), 5)
        assert close[0] == 0x88 and int.from_bytes(close[2:4], "big") == 1011
        writer.close()


async def test_refused_upgrade_while_draining(node: Node, admin: httpx2.AsyncClient) -> None:
    response = await admin.post("/api/v1/drain")
    assert response.status_code == 202 and response.json()["status"] == "draining"
    with pytest.raises(InvalidStatus) as caught:
        async with agent_socket(node.opamp_url):
            pass
    assert caught.value.response.status_code == 503
    assert 1 <= int(caught.value.response.headers["Retry-After"]) <= 10
    async with httpx2.AsyncClient(base_url=node.opamp_url) as http:
        assert (await http.get("/readyz")).status_code == 503
        # HTTP agents are still answered while the node drains.
        response = await http.post(
            "/v1/opamp",
            content=report(uid(60)).SerializeToString(),
            headers={"Content-Type": "application/x-protobuf"},
        )
        assert response.status_code == 200


async def test_readyz_shows_the_bus(node: Node) -> None:
    async with httpx2.AsyncClient(base_url=node.admin_url) as http:
        body = (await http.get("/readyz")).json()
        assert body["bus"] == {"kind": "local", "state": "up"}


async def test_connection_metrics(node: Node, admin: httpx2.AsyncClient) -> None:
    async with agent_socket(node.opamp_url) as ws:
        await exchange(ws, report(uid(70)))
        await exchange(ws, report(uid(71)))
        text = (await admin.get("/metrics")).text
        assert 'opamp_gateway_connected_agents{transport="websocket"} 2.0' in text
        assert "opamp_gateway_websocket_connections 1.0" in text
        assert "opamp_gateway_bus_up 1.0" in text
        assert 'opamp_gateway_messages_total{result="ok",transport="websocket"} 2.0' in text


async def test_connection_fields_survive_a_flush_to_sqlite(tmp_path: Path) -> None:
    async with run_node(tmp_path) as sqlite_node, httpx2.AsyncClient(base_url=sqlite_node.admin_url) as admin:
        async with agent_socket(sqlite_node.opamp_url) as ws:
            await exchange(ws, report(uid(80)))
        services = sqlite_node.services
        await eventually(lambda: services.registry.socket_count == 0)
        # Flush everything: what the admin API shows next comes from the SQLite file.
        await services.writer.stop()
        agent = (await admin.get(f"/api/v1/agents/{uuid.UUID(int=80)}")).json()
        seen = (agent["connected"], agent["transport"], agent["node"])
        assert seen == (False, "websocket", "test-node")


async def test_http_agents_gauge(node: Node, admin: httpx2.AsyncClient) -> None:
    async with httpx2.AsyncClient(base_url=node.opamp_url) as http:
        headers = {"Content-Type": "application/x-protobuf"}
        await http.post("/v1/opamp", content=report(uid(92)).SerializeToString(), headers=headers)
        assert 'opamp_gateway_connected_agents{transport="http"} 1.0' in (await admin.get("/metrics")).text
        goodbye = heartbeat(uid(92), 1)
        goodbye.agent_disconnect.SetInParent()
        await http.post("/v1/opamp", content=goodbye.SerializeToString(), headers=headers)
        assert 'opamp_gateway_connected_agents{transport="http"} 0.0' in (await admin.get("/metrics")).text
