"""uvicorn's HTTP protocol (httptools) with slow clients bounded, for both ports of a node.

Each connection tells the port's UnfinishedRequests (unfinished.py) when a request begins (it is
accepted, or the first byte of its next request arrives), when its head has arrived, and when the
whole request has (or the socket became a WebSocket, or went away). Over the per-address cap, a new
connection gets 429 and is closed before anything of it is parsed; a socket past its header
deadline gets 408 and is closed; one past its body deadline, or evicted to keep the port under its
budget, is dropped.
"""

from __future__ import annotations

import asyncio
from typing import ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway.transport.unfinished import UnfinishedRequests, address_key


def _response(status: bytes, text: bytes, *extra: bytes) -> bytes:
    """A complete plain-text response that closes the connection."""
    head = [b"HTTP/1.1 " + status, b"content-type: text/plain; charset=utf-8"]
    head += [b"content-length: %d" % len(text), *extra, b"connection: close"]
    return b"\r\n".join(head) + b"\r\n\r\n" + text


_TOO_MANY = _response(
    b"429 Too Many Requests", b"too many unfinished requests from this address\n", b"retry-after: 1"
)
_TIMED_OUT = _response(b"408 Request Timeout", b"request headers not received in time\n")


class SlowClientProtocol(HttpToolsProtocol):
    """One HTTP connection. Subclassed per port by `http_protocol_class`, which sets `unfinished`,
    because uvicorn instantiates the class itself."""

    unfinished: ClassVar[UnfinishedRequests]

    _address = ""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._address = address_key(transport.get_extra_info("peername"))
        if not self.unfinished.begin(self, self._address):
            self._refuse()

    def data_received(self, data: bytes) -> None:
        # Bytes on a connection whose last request has fully arrived start its next request.
        if self not in self.unfinished and not self.unfinished.begin(self, self._address):
            self._refuse()
            return
        super().data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.unfinished.done(self)
        super().connection_lost(exc)

    # -- httptools parser callbacks ----------------------------------------------------------------

    def on_message_begin(self) -> None:
        # A pipelined request, after the previous one fully arrived in the same read: that freed
        # this connection's place under its address's cap, so this takes it back and never fails.
        self.unfinished.begin(self, self._address)
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self.unfinished.head_done(self)
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self.unfinished.done(self)
        super().on_message_complete()

    def handle_websocket_upgrade(self) -> None:
        # The WebSocket protocol takes the socket over with its whole handshake already received.
        self.unfinished.done(self)
        super().handle_websocket_upgrade()

    # -- what UnfinishedRequests calls -------------------------------------------------------------

    def drop_unfinished(self, why: str) -> None:
        transport = self.transport
        if transport.is_closing():
            return
        if why == "header" and self._answered():
            # Nothing else is being answered on this connection: say why before closing it.
            transport.write(_TIMED_OUT)
            transport.close()
        else:
            transport.abort()

    def _answered(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def _refuse(self) -> None:
        transport = self.transport
        if transport.is_closing():
            return
        if self._answered():
            transport.write(_TOO_MANY)
            transport.close()
        else:
            transport.abort()


def http_protocol_class(unfinished: UnfinishedRequests) -> type[SlowClientProtocol]:
    """The `http` protocol class for one port's uvicorn Config."""

    class PortProtocol(SlowClientProtocol):
        pass

    PortProtocol.unfinished = unfinished
    return PortProtocol
