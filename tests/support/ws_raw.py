"""A raw-frame OpAMP WebSocket agent on a plain TCP socket: it answers pings only when told to read,
so a test can silence it (stop reading) or drop it without a close frame, as a dead agent would."""

from __future__ import annotations

import asyncio
import os
import struct

from gateway.proto import opamp_pb2 as pb

_HANDSHAKE = (
    b"GET /v1/opamp HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)
OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x2, 0x8, 0x9, 0xA


class RawAgent:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes) -> None:
        self._reader = reader
        self._writer = writer
        # The upgrade's answer: its status and headers (lower-case names).
        self.status = int(head.split(b" ", 2)[1])
        lines = head.decode("latin-1").split("\r\n")[1:]
        self.headers = {
            k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines if line)
        }

    @classmethod
    async def open(cls, opamp_url: str) -> RawAgent:
        port = int(opamp_url.rsplit(":", 1)[1])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(_HANDSHAKE)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        return cls(reader, writer, head)

    def _frame(self, opcode: int, payload: bytes) -> None:
        mask = os.urandom(4)
        size = len(payload)
        head = bytes([0x80 | opcode])
        if size < 126:
            head += bytes([0x80 | size])
        else:
            head += bytes([0x80 | 126]) + struct.pack("!H", size)
        body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self._writer.write(head + mask + body)

    def send(self, msg: pb.AgentToServer) -> None:
        self._frame(OP_BINARY, b"\x00" + msg.SerializeToString())

    async def read_frame(self, timeout: float = 5.0) -> tuple[int, bytes]:
        """The server's next frame (opcode, payload); pings are answered on the way."""
        while True:
            first, second = await asyncio.wait_for(self._reader.readexactly(2), timeout)
            size = second & 0x7F
            if size == 126:
                size = struct.unpack("!H", await self._reader.readexactly(2))[0]
            elif size == 127:
                size = struct.unpack("!Q", await self._reader.readexactly(8))[0]
            payload = await self._reader.readexactly(size)
            if first & 0x0F == OP_PING:
                self._frame(OP_PONG, payload)
                continue
            return first & 0x0F, payload

    async def read_frame_after_ping(self, timeout: float = 5.0) -> bool:
        """Read until the server pings (answering it); True if it did within `timeout`."""
        first, second = await asyncio.wait_for(self._reader.readexactly(2), timeout)
        payload = await self._reader.readexactly(second & 0x7F)
        if first & 0x0F != OP_PING:
            return False
        self._frame(OP_PONG, payload)
        return True

    async def recv(self, timeout: float = 5.0) -> pb.ServerToAgent:
        opcode, payload = await self.read_frame(timeout)
        assert opcode == OP_BINARY, f"expected a binary message, got opcode {opcode}: {payload!r}"
        return pb.ServerToAgent.FromString(payload[1:])

    async def exchange(self, msg: pb.AgentToServer, timeout: float = 5.0) -> pb.ServerToAgent:
        self.send(msg)
        return await self.recv(timeout)

    async def closed_with(self, timeout: float = 5.0) -> int:
        """The code of the server's close frame (messages before it are skipped)."""
        while True:
            opcode, payload = await self.read_frame(timeout)
            if opcode == OP_CLOSE:
                return int.from_bytes(payload[:2], "big")

    def close(self) -> None:
        self._writer.close()

    def drop(self) -> None:
        """Close the TCP connection without a close frame."""
        self._writer.transport.abort()
