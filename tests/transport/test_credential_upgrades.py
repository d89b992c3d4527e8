"""A WebSocket upgrade with an agent's own credential whose record the node has no copy of waits for
one store read (gateway/transport/ws_protocol.py's deciding state), on a raw socket: what the client
sent meanwhile is kept, a client that leaves meanwhile leaves nothing behind, a store that cannot
answer is a 503 with Retry-After, a failure in deciding drops the connection."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx2
import pytest

from gateway.fleet.credentials import AgentCredential
from gateway.opamp import capabilities as caps
from gateway.proto import opamp_pb2 as pb
from gateway.store.base import StoreUnavailable
from tests.support.memory_store import MemoryStore
from tests.support.servers import Node, run_node
from tests.support.waiting import eventually, uid
from tests.support.ws import heartbeat, report
from tests.transport.test_ws_frames import client_frame

pytestmark = pytest.mark.anyio

KEY = "shared-enrollment-key-0123456789"
AGENT = uid(21)
WANTS = caps.REPORTS_STATUS | caps.ACCEPTS_OPAMP_CONNECTION_SETTINGS | caps.REPORTS_HEARTBEAT
UPGRADE = (
    "GET /v1/opamp HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    "Authorization: Bearer {token}\r\n\r\n"
)


class GatedStore(MemoryStore):
    """Credential reads wait at a gate while it is closed, or fail while `failing`."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.gate.set()
        self.waiting = 0
        self.failing = False

    async def get_credentials(self, uids: Sequence[bytes]) -> dict[bytes, AgentCredential]:
        self.waiting += 1
        try:
            await self.gate.wait()
        finally:
            self.waiting -= 1
        if self.failing:
            raise StoreUnavailable("the store is down")
        return await super().get_credentials(uids)


@dataclass
class Setup:
    node: Node
    store: GatedStore
    token: str


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[Setup]:
    keys = tmp_path / "agent-keys"
    keys.write_text(f"{KEY}\n")
    store = GatedStore()
    async with run_node(
        tmp_path,
        store=store,
        agent_keys_file=str(keys),
        agent_credentials="per-agent",
        public_opamp_url="wss://opamp.example.com/v1/opamp",
    ) as node:
        async with httpx2.AsyncClient(base_url=node.opamp_url) as client:
            response = await client.post(
                "/v1/opamp",
                content=report(AGENT, 0, WANTS).SerializeToString(),
                headers={"Content-Type": "application/x-protobuf", "Authorization": f"Bearer {KEY}"},
            )
        [header] = pb.ServerToAgent.FromString(response.content).connection_settings.opamp.headers.headers
        await node.services.writer.flush()
        # A node that never saw the agent: its record must be read on the upgrade.
        node.services.credentials.clear()
        yield Setup(node, store, header.value.removeprefix("Bearer "))


async def _open(setup: Setup) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    port = int(setup.node.opamp_url.rsplit(":", 1)[1])
    return await asyncio.open_connection("127.0.0.1", port)


async def test_what_arrives_while_the_record_is_read_is_kept(setup: Setup) -> None:
    setup.store.gate.clear()
    reader, writer = await _open(setup)
    writer.write(UPGRADE.format(token=setup.token).encode())
    await eventually(lambda: setup.store.waiting == 1, what="the upgrade to wait for the record")
    # An eager client sends before the 101: the socket reads it once the upgrade is decided.
    for seq in (1, 2):
        writer.write(client_frame(0x2, b"\x00" + heartbeat(AGENT, seq, WANTS).SerializeToString()))
    await asyncio.sleep(0.05)
    setup.store.gate.set()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 101")
    for seq in (1, 2):
        first, second = await asyncio.wait_for(reader.readexactly(2), 5)
        assert first & 0x0F == 0x2
        body = await asyncio.wait_for(reader.readexactly(second & 0x7F), 5)
        reply = pb.ServerToAgent.FromString(body[1:])
        assert reply.instance_uid == AGENT and not reply.HasField("error_response"), seq
    writer.close()


async def test_a_client_that_leaves_meanwhile_leaves_nothing_behind(setup: Setup) -> None:
    setup.store.gate.clear()
    reader, writer = await _open(setup)
    writer.write(UPGRADE.format(token=setup.token).encode())
    await eventually(lambda: setup.store.waiting == 1, what="the upgrade to wait for the record")
    writer.close()
    await asyncio.sleep(0.1)
    setup.store.gate.set()
    registry = setup.node.services.registry

    async def released() -> bool:
        return registry.socket_count == 0 and setup.node.services.limits.connections == 0

    await eventually(released, what="no socket to be left attached")


async def test_a_store_that_cannot_answer_is_a_503(setup: Setup) -> None:
    setup.store.failing = True
    reader, writer = await _open(setup)
    writer.write(UPGRADE.format(token=setup.token).encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 503") and b"retry-after:" in head.lower()
    writer.close()
    async with httpx2.AsyncClient(base_url=setup.node.opamp_url) as client:
        response = await client.post(
            "/v1/opamp",
            content=heartbeat(AGENT, 1, WANTS).SerializeToString(),
            headers={"Content-Type": "application/x-protobuf", "Authorization": f"Bearer {setup.token}"},
        )
        assert response.status_code == 503 and "Retry-After" in response.headers


async def test_a_failure_while_deciding_drops_the_connection(
    setup: Setup, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken(token: str) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(setup.node.services.credentials, "identify", broken)
    reader, writer = await _open(setup)
    writer.write(UPGRADE.format(token=setup.token).encode())
    assert await asyncio.wait_for(reader.read(), 5) == b""
    assert "deciding on a WebSocket upgrade failed" in caplog.text
    writer.close()
