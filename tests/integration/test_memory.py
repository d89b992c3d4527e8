"""Memory no single agent can grow (issue 20, finding 4): a real gateway process, its RSS measured
while one agent sends a new huge agent_description with every message."""

from __future__ import annotations

import base64
import contextlib
import os
import socket
import struct
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import httpx2

from gateway.proto import anyvalue_pb2 as av, opamp_pb2 as pb
from tests.support.process import GatewayFactory

PROTOBUF = {"Content-Type": "application/x-protobuf"}
UID = bytes(range(16))
_MIB = 1024 * 1024


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS line")


def _description(filler: bytes) -> pb.AgentDescription:
    desc = pb.AgentDescription()
    desc.identifying_attributes.add(key="service.name", value=av.AnyValue(string_value="otelcol"))
    desc.non_identifying_attributes.add(key="filler", value=av.AnyValue(bytes_value=filler))
    return desc


def _post(client: httpx2.Client, url: str, msg: pb.AgentToServer) -> pb.ServerToAgent:
    response = client.post(url, content=msg.SerializeToString(), headers=PROTOBUF)
    assert response.status_code == 200, response.text
    return pb.ServerToAgent.FromString(response.content)


def test_new_huge_descriptions_do_not_grow_the_node(gateway_factory: GatewayFactory) -> None:
    gw = gateway_factory()
    gw.admin.put_config(
        "base",
        {"selector": {"match": {"service.name": "otelcol"}}, "files": {"c.yaml": {"body": "a: 1\n"}}},
    )
    with httpx2.Client(headers=gw.agent_headers, timeout=30) as client:
        first = _post(
            client,
            gw.opamp_url,
            pb.AgentToServer(instance_uid=UID, sequence_num=0, agent_description=_description(b"ok")),
        )
        assert not first.HasField("error_response")
        before = _rss_bytes(gw.pid)
        sent = 0
        for seq in range(1, 31):
            # A new 4 MiB description each time: on main every one was kept in the desired-config
            # cache (bounded by count only), 120 MiB in all.
            filler = seq.to_bytes(4, "big") * _MIB
            reply = _post(
                client,
                gw.opamp_url,
                pb.AgentToServer(instance_uid=UID, sequence_num=seq, agent_description=_description(filler)),
            )
            sent += len(filler)
            assert reply.error_response.type == pb.ServerErrorResponseType_BadRequest
            assert "agent_description" in reply.error_response.error_message
        growth = _rss_bytes(gw.pid) - before
    assert growth < sent // 4, f"RSS grew {growth} bytes for {sent} bytes of descriptions"
    record = gw.admin.agent(str(uuid.UUID(bytes=UID)))
    assert record is not None
    # The agent keeps its old record.
    assert "filler" in str(record["description"]) and "otelcol" in str(record["description"])


def _ws_open(opamp_url: str, headers: dict[str, str]) -> socket.socket:
    """A WebSocket to the OpAMP port, handshake done by hand (the test sends raw frames)."""
    url = urlsplit(opamp_url)
    sock = socket.create_connection((url.hostname or "127.0.0.1", url.port or 80), timeout=10)
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    sock.sendall(
        (
            f"GET {url.path} HTTP/1.1\r\nHost: {url.netloc}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
            f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}\r\n{extra}\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        assert chunk, head
        head += chunk
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


def _close_code(sock: socket.socket) -> int | None:
    """The code of the close frame the server sends first (None if it only dropped the socket)."""
    data = b""
    while len(data) < 4:
        try:
            chunk = sock.recv(4096)
        except ConnectionResetError:
            return None
        if not chunk:
            return None
        data += chunk
    assert data[0] == 0x88, data[:8]
    return int.from_bytes(data[2:4], "big")


def test_partial_messages_are_bounded_per_node(gateway_factory: GatewayFactory) -> None:
    """Issue 20, finding 6: sockets each announcing a big message and sending most of it held
    --max-connections x --max-message-bytes; now all of them together hold --max-inflight-bytes."""
    gw = gateway_factory(max_message_bytes=8 * _MIB, max_inflight_bytes=12 * _MIB)
    before = _rss_bytes(gw.pid)
    sockets = [_ws_open(gw.opamp_url, gw.agent_headers) for _ in range(10)]
    announced = struct.pack("!BBQ", 0x82, 0x80 | 127, 8 * _MIB - 1) + b"\0\0\0\0"
    part = b"\0" * (7 * _MIB)
    try:
        sockets[0].sendall(announced + part)
        codes = []
        for sock in sockets[1:]:
            # Each further partial message would take the node over 12 MiB: closed instead.
            with contextlib.suppress(OSError):
                sock.sendall(announced + part)
            codes.append(_close_code(sock))
        growth = _rss_bytes(gw.pid) - before
        assert codes == [1008] * 9
        # Without the bound the node held 70 MiB of partial messages (more with the copies made
        # while reading them); the bound leaves their buffers and a reading copy.
        assert growth < 40 * _MIB, f"RSS grew {growth} bytes for 70 MiB of partial messages"
        # The socket within the bound is served: its message completes and gets a reply.
        first = sockets[0]
        first.sendall(b"\0" * (_MIB - 1))
        first.settimeout(10)
        assert first.recv(2)[:1] == b"\x82"
    finally:
        for sock in sockets:
            sock.close()
