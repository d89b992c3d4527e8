"""A lean WebSocket client for loopback: one `AgentSocket` per simulated agent, as an asyncio Protocol.

The load generator shares one core with nothing else, and must stay well below it while the server's
core is saturated, so it skips what a general client does per message (tasks, queues, futures,
header objects): the handshake is written by hand, frames are parsed straight from
`data_received`, and a reply goes to a callback that may send the next message at once. What a
client must do is done: frames are masked (RFC 6455 5.3), pings get pongs with the same payload (the
server drops sockets that miss them), and close frames are answered.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import os
import random
from collections.abc import Callable
from typing import cast

from websockets.speedups import apply_mask

logger = logging.getLogger("bench.ws_client")

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
HANDSHAKE_TIMEOUT = 10.0
CLOSE_TIMEOUT = 2.0
# Closed by us (1000) or never closed (None) is normal; anything else ends a run's validity.
CLOSE_NORMAL = 1000

OnMessage = Callable[["AgentSocket", bytes], None]


class WsError(Exception):
    """The handshake failed, the server broke the protocol, or the socket is gone."""


def frame(payload: bytes, opcode: int = OP_BINARY) -> bytes:
    """One final, masked client frame."""
    size = len(payload)
    if size < 126:
        head = bytes((0x80 | opcode, 0x80 | size))
    elif size < 1 << 16:
        head = bytes((0x80 | opcode, 0x80 | 126)) + size.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0x80 | 127)) + size.to_bytes(8, "big")
    mask = random.getrandbits(32).to_bytes(4, "big")
    return head + mask + apply_mask(payload, mask)


def _accept_key(key: bytes) -> bytes:
    return base64.b64encode(hashlib.sha1(key + _GUID).digest())


class AgentSocket(asyncio.Protocol):
    """One client WebSocket. Complete binary messages go to `on_message`; `request` is the
    untimed way to send one message and await its reply."""

    def __init__(self, host: str, port: int, path: str) -> None:
        self.transport: asyncio.Transport | None = None
        self.on_message: OnMessage | None = None
        self.close_code: int | None = None
        self.close_reason = ""
        self.pings = 0
        self.text_messages = 0
        # Set by whoever drives the socket; the socket itself only carries it around.
        self.expected = b""
        self.sent_at = 0.0
        self._key = base64.b64encode(os.urandom(16))
        self._request = (
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {self._key.decode()}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
        self._buffer = b""
        self._fragments: list[bytes] = []
        self._open = False
        loop = asyncio.get_running_loop()
        self._handshake: asyncio.Future[None] = loop.create_future()
        self._closed: asyncio.Future[None] = loop.create_future()
        self._reply: asyncio.Future[bytes] | None = None

    # -- asyncio.Protocol ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(self._request)

    def data_received(self, data: bytes) -> None:
        if not self._open:
            self._buffer += data
            if b"\r\n\r\n" not in self._buffer:
                return
            response, _, rest = self._buffer.partition(b"\r\n\r\n")
            self._buffer = b""
            if not self._opened(response):
                return
            if not rest:
                return
            data = rest
        if not self._buffer and len(data) > 1 and data[0] == 0x82 and len(data) == 2 + data[1] < 2 + 126:
            # The usual case: exactly one small, final, unmasked binary frame.
            self._deliver(data[2:])
            return
        buffer = self._buffer + data if self._buffer else data
        offset, end = 0, len(buffer)
        while end - offset >= 2:
            first, second = buffer[offset], buffer[offset + 1]
            size, head = second & 0x7F, 2
            if second & 0x80:
                self._fail("the server masked a frame (RFC 6455 5.1 forbids it)")
                return
            if size == 126:
                if end - offset < 4:
                    break
                size, head = int.from_bytes(buffer[offset + 2 : offset + 4], "big"), 4
            elif size == 127:
                if end - offset < 10:
                    break
                size, head = int.from_bytes(buffer[offset + 2 : offset + 10], "big"), 10
            if end - offset < head + size:
                break
            payload = buffer[offset + head : offset + head + size]
            offset += head + size
            self._on_frame(first & 0x80, first & 0x0F, payload)
        self._buffer = buffer[offset:] if offset < end else b""

    def connection_lost(self, exc: Exception | None) -> None:
        self._open = False
        if self.close_code is None:
            self.close_code = 1006  # closed without a close frame
            self.close_reason = str(exc) if exc else "connection closed without a close frame"
        if not self._handshake.done():
            self._handshake.set_exception(
                WsError(f"connection lost during the handshake: {self.close_reason}")
            )
        if self._reply is not None and not self._reply.done():
            self._reply.set_exception(WsError(f"socket closed ({self.close_code} {self.close_reason})"))
        if not self._closed.done():
            self._closed.set_result(None)

    # -- frames -------------------------------------------------------------------------------------

    def _opened(self, head: bytes) -> bool:
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if status_line.split(" ", 2)[1:2] != ["101"]:
            self._handshake.set_exception(WsError(f"handshake refused: {status_line!r}"))
            self._abort()
            return False
        if headers.get("sec-websocket-accept", "").encode() != _accept_key(self._key):
            self._handshake.set_exception(WsError("handshake answered with a wrong Sec-WebSocket-Accept"))
            self._abort()
            return False
        self._open = True
        self._handshake.set_result(None)
        return True

    def _on_frame(self, fin: int, opcode: int, payload: bytes) -> None:
        if opcode == OP_BINARY and fin:
            self._deliver(payload)
        elif opcode in (OP_BINARY, OP_TEXT, OP_CONT):
            self._fragments.append(payload)
            if opcode == OP_TEXT:
                self.text_messages += 1
            if fin:
                message, self._fragments = b"".join(self._fragments), []
                self._deliver(message)
        elif opcode == OP_PING:
            self.pings += 1
            self._write(frame(payload, OP_PONG))
        elif opcode == OP_CLOSE:
            self._on_close(payload)
        elif opcode != OP_PONG:
            self._fail(f"unknown opcode {opcode}")

    def _deliver(self, message: bytes) -> None:
        reply = self._reply
        if reply is not None:
            self._reply = None
            if not reply.done():
                reply.set_result(message)
            return
        if self.on_message is not None:
            self.on_message(self, message)

    def _on_close(self, payload: bytes) -> None:
        first_close = self.close_code is None
        if len(payload) >= 2:
            self.close_code = int.from_bytes(payload[:2], "big")
            self.close_reason = payload[2:].decode(errors="replace")
        elif first_close:
            self.close_code, self.close_reason = 1005, "no status code"
        if first_close:
            self._write(frame(payload[:2], OP_CLOSE))  # echo, as RFC 6455 5.5.1 asks
        self._abort()

    def _fail(self, why: str) -> None:
        logger.warning("closing a socket: %s", why)
        self.close_code, self.close_reason = 1002, why
        self._abort()

    def _abort(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    # -- use ----------------------------------------------------------------------------------------

    @property
    def open(self) -> bool:
        return self._open and self.close_code is None

    def send(self, message: bytes) -> None:
        """Queue one binary message (a whole OpAMP message, header included)."""
        self._write(frame(message))

    async def request(self, message: bytes, timeout: float) -> bytes:
        """Send one message and wait for the next binary message (the reply)."""
        if not self.open:
            raise WsError(f"socket closed ({self.close_code} {self.close_reason})")
        self._reply = asyncio.get_running_loop().create_future()
        reply = self._reply
        self.send(message)
        try:
            return await asyncio.wait_for(reply, timeout)
        except TimeoutError:
            raise WsError(f"no reply within {timeout:.0f} s") from None

    async def close(self, code: int = CLOSE_NORMAL) -> None:
        """Closing handshake: send a close frame, wait for the server's (bounded), drop the TCP side."""
        if self.open:
            self.close_code, self.close_reason = code, "closed by the client"
            self._write(frame(code.to_bytes(2, "big"), OP_CLOSE))
            try:
                await asyncio.wait_for(asyncio.shield(self._closed), CLOSE_TIMEOUT)
            except TimeoutError:
                pass
        self._abort()
        await self._closed


async def connect(host: str, port: int, path: str, timeout: float = HANDSHAKE_TIMEOUT) -> AgentSocket:
    loop = asyncio.get_running_loop()
    try:
        _, sock = await asyncio.wait_for(
            loop.create_connection(lambda: AgentSocket(host, port, path), host, port), timeout
        )
    except (OSError, TimeoutError) as exc:
        raise WsError(f"cannot connect to {host}:{port}: {exc or 'timed out'}") from None
    try:
        await asyncio.wait_for(asyncio.shield(sock._handshake), timeout)
    except TimeoutError:
        sock._abort()
        raise WsError(f"no handshake answer from {host}:{port} within {timeout:.0f} s") from None
    return sock
