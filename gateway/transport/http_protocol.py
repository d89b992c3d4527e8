"""uvicorn's HTTP protocol (httptools) with slow clients bounded, for both ports of a node.

Each connection tells the port's UnfinishedRequests (unfinished.py) when a request begins (it is
accepted, or the first byte of its next request arrives), when its head has arrived, and when the
whole request has (or the socket became a WebSocket, or went away). Over the per-address cap, a new
connection gets 429 and is closed before anything of it is parsed; a socket past its header
deadline gets 408 and is closed; one past its body deadline, or evicted to keep the port under its
budget, is dropped.

On the OpAMP port, the protocol answers POST /v1/opamp itself (`OpampPortProtocol`): it collects the
body, has the transport's handler decide the reply (transport/http.py), and writes the whole
response at once. uvicorn's ASGI cycle (a scope, a task, two writes per request) costs more than
handling a heartbeat, and a heartbeat whose record the node knows needs no task at all (eager.py).
Requests the protocol does not take (no Content-Length, one over the limit, Expect: 100-continue, a
query string, one that arrives while an earlier request on its connection is still being answered,
one whose body comes after its head in a read of its own) go through uvicorn to the same handler.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from functools import partial
from typing import Any, ClassVar, Protocol

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from gateway.transport import eager
from gateway.transport.http_wire import Reply, RequestHeaders, request_headers, response_bytes, text_reply
from gateway.transport.unfinished import UnfinishedRequests, address_key

logger = logging.getLogger("gateway.transport.http_protocol")

_OPAMP_URL = b"/v1/opamp"


def _closing(reply: Reply) -> bytes:
    """A complete response that closes the connection."""
    return response_bytes(reply, STATUS_LINE[reply.status], (), keep_alive=False)


_TOO_MANY = _closing(text_reply(429, "too many unfinished requests from this address", {"Retry-After": "1"}))
_TIMED_OUT = _closing(text_reply(408, "request headers not received in time"))


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


class OpampAnswers(Protocol):
    """What the OpAMP port's protocol asks of the transport (transport/http.py's OpampHttp)."""

    @property
    def limit(self) -> int: ...

    def answer_read(self, headers: RequestHeaders, body: bytes) -> Reply | Coroutine[Any, Any, Reply]: ...


class _Request:
    """The OpAMP request a connection is receiving or answering. While its answer is awaited it
    stands in for uvicorn's RequestResponseCycle (`self.cycle`), with the attributes uvicorn uses:
    a request pipelined behind it waits, and a shutdown clears `keep_alive`."""

    __slots__ = ("headers", "keep_alive", "chunks", "response_complete", "disconnected")

    def __init__(self, headers: RequestHeaders, keep_alive: bool) -> None:
        self.headers = headers
        self.keep_alive = keep_alive
        self.chunks: list[bytes] = []
        self.response_complete = False
        self.disconnected = False

    @property
    def message_event(self) -> _Request:
        return self

    def set(self) -> None:
        """uvicorn wakes a cycle's reader on disconnect; nothing here reads."""


_SERVER_ERROR = text_reply(500, "Internal Server Error")


class OpampPortProtocol(SlowClientProtocol):
    """The OpAMP port's connection: POST /v1/opamp answered here, the rest by uvicorn."""

    opamp: ClassVar[OpampAnswers]

    _request: _Request | None = None

    def _takes(self, headers: RequestHeaders) -> bool:
        parser = self.parser
        length = headers.content_length
        return (
            self.url == _OPAMP_URL
            and parser.get_method() == b"POST"
            and length is not None
            and length.isdigit()
            and int(length) <= self.opamp.limit
            and not self.expect_100_continue
            and not parser.should_upgrade()
            # Behind a request still being answered: uvicorn queues this one after it.
            and (self.cycle is None or self.cycle.response_complete)
            and not self.pipeline
            and self.limit_concurrency is None
        )

    def on_message_begin(self) -> None:
        # uvicorn's own begin, without the ASGI scope (a dict and a copy of the app state per
        # request): a request this protocol answers never needs it; `_to_uvicorn` builds it for one
        # that uvicorn takes.
        self.unfinished.begin(self, self._address)
        self.url = b""
        self.expect_100_continue = False
        self.headers = []

    def _to_uvicorn(self) -> None:
        """Hand the request whose head has arrived to uvicorn: its scope, as its own
        on_message_begin makes it, with what the parser already gave."""
        url, headers, expect = self.url, self.headers, self.expect_100_continue
        HttpToolsProtocol.on_message_begin(self)
        self.url, self.expect_100_continue = url, expect
        self.headers.extend(headers)
        super().on_headers_complete()

    def on_headers_complete(self) -> None:
        headers = request_headers(self.headers)
        if not self._takes(headers):
            self._to_uvicorn()
            return
        # The head's deadline ends when the whole request has arrived, in this same read
        # (on_message_complete), or when uvicorn takes the request over (data_received).
        version = self.parser.get_http_version()
        self._request = _Request(headers, version != "1.0" and self.parser.should_keep_alive())

    def on_body(self, body: bytes) -> None:
        request = self._request
        if request is None:
            super().on_body(body)
        else:
            # No more than the Content-Length checked above: the parser frames the body by it.
            request.chunks.append(body)

    def on_message_complete(self) -> None:
        request = self._request
        if request is None:
            super().on_message_complete()
            return
        self._request = None
        self.unfinished.done(self)
        chunks = request.chunks
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self._answer(request, body)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        request = self._request
        if request is not None:
            # Its body did not come with its head: uvicorn takes the request over with what has
            # arrived, and the handler reads the rest with a deadline, answering a bad key first.
            self._request = None
            if not self.transport.is_closing():
                self._to_uvicorn()
                for chunk in request.chunks:
                    super().on_body(chunk)

    def _answer(self, request: _Request, body: bytes) -> None:
        try:
            answer = self.opamp.answer_read(request.headers, body)
            if isinstance(answer, Reply):
                self._reply(request, answer)
                return
            task = eager.run(answer, partial(self._reply, request))
        except Exception:
            logger.exception("failed to answer an OpAMP request")
            request.keep_alive = False
            self._reply(request, _SERVER_ERROR)
            return
        if task is None:
            return
        # Waiting for the store: pipelined requests queue behind this one (uvicorn's pipeline).
        self.cycle = request  # type: ignore[assignment]
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        task.add_done_callback(partial(self._answer_done, request))

    def _answer_done(self, request: _Request, task: asyncio.Task[None]) -> None:
        if request.response_complete:
            return
        if not task.cancelled() and (exc := task.exception()) is not None:
            logger.error("failed to answer an OpAMP request", exc_info=exc)
            request.keep_alive = False
            self._reply(request, _SERVER_ERROR)
        else:
            request.response_complete = True
            self.transport.close()

    def _reply(self, request: _Request, reply: Reply) -> None:
        request.response_complete = True
        transport = self.transport
        if request.disconnected or transport.is_closing():
            return
        status = STATUS_LINE[reply.status]
        transport.write(response_bytes(reply, status, self.server_state.default_headers, request.keep_alive))
        if request.keep_alive:
            # Counts the request, resumes reading, starts a pipelined request or the keep-alive timer.
            self.on_response_complete()
        else:
            transport.close()


def http_protocol_class(
    unfinished: UnfinishedRequests, opamp: OpampAnswers | None = None
) -> type[SlowClientProtocol]:
    """The `http` protocol class for one port's uvicorn Config; `opamp` (the OpAMP port's) answers
    POST /v1/opamp in the protocol."""
    if opamp is None:

        class PortProtocol(SlowClientProtocol):
            pass

        PortProtocol.unfinished = unfinished
        return PortProtocol

    class OpampProtocol(OpampPortProtocol):
        pass

    OpampProtocol.unfinished = unfinished
    OpampProtocol.opamp = opamp
    return OpampProtocol
