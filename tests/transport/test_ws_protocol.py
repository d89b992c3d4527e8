"""The OpAMP port's own WebSocket protocol (gateway/transport/ws_protocol.py) on real sockets, driven
byte by byte: control frames, fragments, the closing handshake, refusals, and flow control against a
peer that never reads."""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.proto import opamp_pb2 as pb
from gateway.transport import ws_frames as f
from tests.support.memory_store import MemoryStore
from tests.support.servers import Node, run_node
from tests.support.waiting import uid
from tests.support.ws import report
from tests.transport.test_ws_frames import client_frame

pytestmark = pytest.mark.anyio

UPGRADE = (
    "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: {version}\r\n\r\n"
)


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    async with run_node(tmp_path, store=MemoryStore(), send_timeout=1.0) as running:
        yield running


def _port(node: Node) -> int:
    return int(node.opamp_url.rsplit(":", 1)[1])


async def _upgrade(
    node: Node, path: str = "/v1/opamp", version: int = 13
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", _port(node))
    writer.write(UPGRADE.format(path=path, version=version).encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    return reader, writer, head


async def _frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    first, second = await asyncio.wait_for(reader.readexactly(2), 5)
    assert not second & 0x80, "server frames are never masked"
    n = second & 0x7F
    if n == 126:
        (n,) = struct.unpack("!H", await reader.readexactly(2))
    elif n == 127:
        (n,) = struct.unpack("!Q", await reader.readexactly(8))
    return first & 0x0F, await asyncio.wait_for(reader.readexactly(n), 5)


def _opamp(msg: pb.AgentToServer) -> bytes:
    return b"\x00" + msg.SerializeToString()


async def test_pings_are_answered_with_their_payload(node: Node) -> None:
    reader, writer, head = await _upgrade(node)
    assert head.startswith(b"HTTP/1.1 101") and b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" in head
    writer.write(client_frame(f.OP_PING, b"are you there"))
    assert await _frame(reader) == (f.OP_PONG, b"are you there")
    writer.close()


async def test_a_fragmented_message_with_a_ping_inside_is_one_message(node: Node) -> None:
    reader, writer, _ = await _upgrade(node)
    data = _opamp(report(uid(7)))
    writer.write(client_frame(f.OP_BINARY, data[:5], fin=False))
    writer.write(client_frame(f.OP_PING, b"p"))
    writer.write(client_frame(f.OP_CONTINUATION, data[5:]))
    assert await _frame(reader) == (f.OP_PONG, b"p")
    opcode, payload = await _frame(reader)
    assert opcode == f.OP_BINARY
    assert pb.ServerToAgent.FromString(payload[1:]).instance_uid == uid(7)
    writer.close()


async def test_a_client_close_is_echoed_and_the_server_closes_tcp(node: Node) -> None:
    reader, writer, _ = await _upgrade(node)
    writer.write(client_frame(f.OP_CLOSE, struct.pack("!H", 1000) + b"bye"))
    assert await _frame(reader) == (f.OP_CLOSE, struct.pack("!H", 1000))
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()


async def test_an_unmasked_frame_fails_the_connection_with_1002(node: Node) -> None:
    reader, writer, _ = await _upgrade(node)
    writer.write(client_frame(f.OP_BINARY, _opamp(report(uid(1))), mask=b""))
    opcode, payload = await _frame(reader)
    assert opcode == f.OP_CLOSE and f.parse_close(payload)[0] == 1002
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()


async def test_messages_after_our_close_are_ignored(node: Node) -> None:
    reader, writer, _ = await _upgrade(node)
    writer.write(client_frame(f.OP_TEXT, b"text"))
    opcode, payload = await _frame(reader)
    assert opcode == f.OP_CLOSE and f.parse_close(payload)[0] == 1003
    # Still closing: data is read and dropped, the close answer completes the handshake.
    writer.write(client_frame(f.OP_BINARY, _opamp(report(uid(2)))))
    writer.write(client_frame(f.OP_CLOSE, struct.pack("!H", 1003)))
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()


@pytest.mark.parametrize(
    ("path", "version", "status"),
    [("/elsewhere", 13, b"404"), ("/v1/opamp", 8, b"426")],
)
async def test_upgrades_that_cannot_be_served_are_refused(
    node: Node, path: str, version: int, status: bytes
) -> None:
    reader, writer, head = await _upgrade(node, path, version)
    assert head.split(b" ")[1] == status
    if version == 8:
        assert b"Sec-WebSocket-Version: 13" in head
    writer.close()


async def test_a_peer_that_never_reads_is_held_back_then_dropped(node: Node) -> None:
    """A ping flood from a peer that reads no pong: the server stops reading once its output backs
    up (so it holds at most a bounded buffer), and drops the peer after --send-timeout (1 s)."""
    _, writer, _ = await _upgrade(node)
    sock: socket.socket = writer.get_extra_info("socket")
    raw = socket.socket(fileno=os.dup(sock.fileno()))
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    raw.setblocking(False)
    chunk = client_frame(f.OP_PING, b"x" * 125, mask=b"abcd") * 1000
    flood = 256 * 1024 * 1024
    sent, dropped = 0, False
    deadline = time.monotonic() + 20
    while sent < flood and time.monotonic() < deadline:
        try:
            sent += raw.send(chunk)
        except BlockingIOError:
            await asyncio.sleep(0.05)
        except ConnectionError:
            dropped = True
            break
    # Had the server kept reading, it would have taken all 256 MB (and held as many pongs).
    assert sent < flood / 4
    assert dropped
    raw.close()
    writer.close()


async def test_a_node_stopping_closes_its_sockets_with_1012(tmp_path: Path) -> None:
    async with run_node(tmp_path, store=MemoryStore()) as node:
        reader, writer, _ = await _upgrade(node)
        writer.write(client_frame(f.OP_BINARY, _opamp(report(uid(3)))))
        assert (await _frame(reader))[0] == f.OP_BINARY
    opcode, payload = await _frame(reader)
    assert opcode == f.OP_CLOSE and f.parse_close(payload)[0] == f.CLOSE_SERVICE_RESTART
    writer.close()
