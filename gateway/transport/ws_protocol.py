"""The OpAMP port's WebSocket: an asyncio protocol that moves frames between a socket and a session.

uvicorn parses each HTTP request on the OpAMP port; an upgrade to WebSocket is handed here (uvicorn's
`ws` protocol class), and from then on no ASGI app, Starlette `WebSocket`, queue or task stands
between the socket and the agent's handler: `data_received` parses frames (gateway/transport/
ws_frames.py) and calls the session with each whole message, and a reply is one `transport.write`.
Per connected agent that is a few objects and no task, timer or future while it is idle, which is
what holding 100,000 agents on one small machine needs (docs/performance.md, "Per-agent cost").

What the socket does by itself (RFC 6455): the opening handshake (ws_handshake.py), pongs to the
peer's pings, the closing handshake (a close is answered, ours waits --close-timeout for the peer's
answer before dropping the connection), failing the connection on a protocol error, and flow control:
while the peer does not read (the transport's buffer is over its high-water mark) the socket stops
reading from it, so a peer that sends pings and never reads the pongs holds at most that buffer, and a
peer that reads nothing for --send-timeout is dropped without a close frame (it would not read that
either). Pings from the server, and the idle timeout, come from the node's sweep
(gateway/transport/keepalive.py), which reads `last_received` and `last_message`.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable
from typing import Any, ClassVar, Protocol, cast

from gateway.transport import ws_frames as frames
from gateway.transport.ws_handshake import (
    MAX_HEAD_BYTES,
    Refusal,
    Request,
    accept_key,
    parse_request,
    refusal_response,
    switching_protocols,
)

logger = logging.getLogger("gateway.transport.ws_protocol")

# _AUTHENTICATING: the endpoint is still deciding on the upgrade (an agent credential's record is
# being read); the socket reads nothing meanwhile.
_CONNECTING, _OPEN, _CLOSING, _CLOSED, _AUTHENTICATING = range(5)
# Upgrades being decided: referenced until they are.
_deciding: set[asyncio.Task[None]] = set()
# How long our close frame waits for the peer's before the connection is dropped (websockets' and
# so uvicorn's default was 10 s; an agent answers at once or not at all).
CLOSE_TIMEOUT = 5.0
# Bytes written but not yet taken by a peer beyond which it is dropped at once: what a peer that
# stops reading can make this node hold, past the transport's high-water mark.
_EXTRA_WRITE_BUFFER = 1024 * 1024


class Session(Protocol):
    """What a socket calls as things happen on it (gateway/transport/websocket.py's Connection)."""

    def on_message(self, data: bytes) -> None:
        """A whole binary message."""

    def on_text(self) -> None:
        """A text message (its content is not read)."""

    def on_idle(self) -> None:
        """No message for the idle timeout."""

    def on_stalled(self) -> None:
        """The peer read nothing for the send timeout; the socket is being dropped."""

    def on_closed(self) -> None:
        """The connection is gone (called once)."""


class Endpoint(Protocol):
    """Decides whether an upgrade is accepted, and makes the session that serves the socket."""

    path: str

    def open(self, request: Request, socket: WebSocketProtocol) -> Session | Awaitable[Session]:
        """A session for an accepted upgrade, or an awaitable of one when the decision must wait for
        something (the socket reads nothing meanwhile); raises Refusal to answer with an HTTP error
        instead."""


class Sockets(Protocol):
    """The node's sweep over its open sockets (keepalive.py)."""

    def add(self, socket: WebSocketProtocol) -> None: ...

    def discard(self, socket: WebSocketProtocol) -> None: ...


class WebSocketProtocol(asyncio.Protocol):
    """One WebSocket on the OpAMP port. Subclassed per node by `protocol_class`, which fills in the
    class attributes, because uvicorn instantiates the class itself."""

    endpoint: ClassVar[Endpoint]
    sockets: ClassVar[Sockets]
    limit: ClassVar[int]
    send_timeout: ClassVar[float]
    close_timeout: ClassVar[float]
    inflight_limit: ClassVar[int] = 1 << 62
    # The bytes of unfinished messages all sockets of this class hold (one mutable cell per node).
    inflight: ClassVar[list[int]] = [0]

    # A node holds one per agent socket: no instance dict.
    __slots__ = (
        *("loop", "transport", "_server_state", "_state", "_reader", "session", "_head"),
        *("last_received", "last_message", "ping_payload", "ping_sent_at", "_timer", "_writing_paused"),
        *("_held", "_closed_waiter", "_counted"),
    )

    def __init__(
        self, config: object, server_state: Any, app_state: object = None, _loop: object = None
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        # uvicorn's: its shutdown asks every protocol in `connections` to shut down, then waits.
        self._server_state = server_state
        self._state = _CONNECTING
        self._reader = frames.FrameReader(self.limit)
        self.session: Session | None = None
        self._head = b""
        self.last_received = self.loop.time()
        self.last_message = self.last_received
        # The payload of the server's ping that has not been answered yet, and when it was sent.
        self.ping_payload: bytes | None = None
        self.ping_sent_at = 0.0
        # The close-handshake or send-timeout deadline; at most one is armed at a time.
        self._timer: asyncio.TimerHandle | None = None
        self._writing_paused = False
        # The session handles a message in a task: read nothing more until it is done.
        self._held = False
        self._closed_waiter: asyncio.Future[None] | None = None
        # Bytes of unfinished messages this socket counts in its node's `inflight` total.
        self._counted = 0

    # -- asyncio.Protocol --------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but offer its methods.
        self.transport = cast(asyncio.Transport, transport)
        self._server_state.connections.add(self)

    def data_received(self, data: bytes) -> None:
        self.last_received = self.loop.time()
        if self._state == _OPEN or self._state == _CLOSING:
            try:
                events = self._reader.feed(data)
            except frames.FrameError as exc:
                self.fail(exc.code, exc.reason)
                return
            if self._count_inflight():
                return
            for opcode, payload in events:
                self._event(opcode, payload)
        elif self._state == _CONNECTING:
            self._handshake(data)
        elif self._state == _AUTHENTICATING:
            # Read before reading paused: kept for when the upgrade is accepted.
            self._head += data

    def pause_writing(self) -> None:
        # The peer does not read: read nothing more from it until it does, and drop it if it
        # stays that way for the send timeout.
        self._writing_paused = True
        if self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()
        if self._timer is None:
            self._timer = self.loop.call_later(self.send_timeout, self._stalled)

    def resume_writing(self) -> None:
        self._writing_paused = False
        if self._state == _OPEN:
            self._cancel_timer()
            self._resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self._state = _CLOSED
        self.inflight[0] -= self._counted
        self._counted = 0
        self._cancel_timer()
        self._server_state.connections.discard(self)
        self.sockets.discard(self)
        session, self.session = self.session, None
        if self._closed_waiter is not None and not self._closed_waiter.done():
            self._closed_waiter.set_result(None)
        if session is not None:
            session.on_closed()

    # -- uvicorn -----------------------------------------------------------------------------------

    def shutdown(self) -> None:
        """uvicorn stopping the server (after the node's drain has closed what it could)."""
        if self._state in (_CONNECTING, _AUTHENTICATING):
            self._drop()
        else:
            self.close(frames.CLOSE_SERVICE_RESTART, "gateway node shutting down")

    # -- what the session uses ---------------------------------------------------------------------

    @property
    def open(self) -> bool:
        return self._state == _OPEN

    def send(self, message: bytes) -> bool:
        """Send one binary message; False once the socket is closing or closed."""
        if self._state != _OPEN or self.transport is None:
            return False
        self.transport.write(frames.frame(frames.OP_BINARY, message))
        if self._writing_paused and self.transport.get_write_buffer_size() > self.limit + _EXTRA_WRITE_BUFFER:
            # Waiting for the send timeout would hold all of it.
            self._stalled()
            return False
        return True

    def hold_reading(self, held: bool) -> None:
        """Stop (True) or restart (False) reading from the peer."""
        self._held = held
        if held:
            if self.transport is not None and not self.transport.is_closing():
                self.transport.pause_reading()
        else:
            self._resume_reading()

    async def wait_closed(self) -> None:
        """Until the connection is gone."""
        if self._state == _CLOSED:
            return
        if self._closed_waiter is None:
            self._closed_waiter = self.loop.create_future()
        await asyncio.shield(self._closed_waiter)

    def ping(self, payload: bytes, now: float) -> None:
        if self._state != _OPEN or self.transport is None:
            return
        self.ping_payload = payload
        self.ping_sent_at = now
        self.transport.write(frames.frame(frames.OP_PING, payload))

    def close(self, code: int, reason: str) -> None:
        """Start the closing handshake; the connection is dropped if the peer does not answer
        within the close timeout."""
        if self._state != _OPEN or self.transport is None:
            return
        self._state = _CLOSING
        self.transport.write(frames.close_frame(code, reason))
        self._cancel_timer()
        self._timer = self.loop.call_later(self.close_timeout, self._drop)
        # The peer's close frame must be read, whatever was holding reading back.
        self._held = self._writing_paused = False
        self._resume_reading()

    def fail(self, code: int, reason: str) -> None:
        """The peer broke the protocol: say why and close the TCP connection (RFC 6455 7.1.7)."""
        logger.debug("failing a WebSocket (%d): %s", code, reason)
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if self._state == _OPEN:
            transport.write(frames.close_frame(code, reason))
        self._state = _CLOSING
        transport.close()

    def abort(self) -> None:
        """Drop the connection without a closing handshake."""
        self._drop()

    # -- internals ---------------------------------------------------------------------------------

    def _handshake(self, data: bytes) -> None:
        head = self._head + data
        end = head.find(b"\r\n\r\n")
        if end < 0:
            if len(head) > MAX_HEAD_BYTES:
                self._refuse(Refusal(431, "request head too large"))
            else:
                self._head = head
            return
        self._head = b""
        rest = head[end + 4 :]
        try:
            request = parse_request(head[: end + 4])
            if request.path != self.endpoint.path:
                raise Refusal(404, "not found")
            accept = accept_key(request)
            opened = self.endpoint.open(request, self)
        except Refusal as refusal:
            self._refuse(refusal)
            return
        if inspect.isawaitable(opened):
            assert self.transport is not None
            self._state = _AUTHENTICATING
            self._head = rest
            self.transport.pause_reading()
            task = self.loop.create_task(self._decided(opened, accept))
            _deciding.add(task)
            task.add_done_callback(_deciding.discard)
            return
        self._accept(opened, accept, rest)

    async def _decided(self, opened: Awaitable[Session], accept: bytes) -> None:
        try:
            session = await opened
        except Refusal as refusal:
            if self._state == _AUTHENTICATING:
                self._refuse(refusal)
            return
        except Exception:
            logger.exception("deciding on a WebSocket upgrade failed")
            if self._state == _AUTHENTICATING:
                self._drop()
            return
        if self._state != _AUTHENTICATING or self.transport is None or self.transport.is_closing():
            # The client went away meanwhile.
            session.on_closed()
            return
        rest, self._head = self._head, b""
        self._state = _CONNECTING
        self.transport.resume_reading()
        self._accept(session, accept, rest)

    def _accept(self, session: Session, accept: bytes, rest: bytes) -> None:
        assert self.transport is not None
        self.session = session
        self._state = _OPEN
        self.transport.write(switching_protocols(accept))
        self.last_received = self.last_message = self.loop.time()
        self.sockets.add(self)
        if rest:
            self.data_received(rest)

    def _refuse(self, refusal: Refusal) -> None:
        assert self.transport is not None
        self._state = _CLOSED
        self.transport.write(refusal_response(refusal))
        self.transport.close()

    def _event(self, opcode: int, payload: bytes) -> None:
        if opcode == frames.OP_BINARY or opcode == frames.OP_TEXT:
            # After our close frame, data is read and ignored (RFC 6455 5.5.1).
            if self._state == _OPEN and self.session is not None:
                self.last_message = self.last_received
                if opcode == frames.OP_BINARY:
                    self.session.on_message(payload)
                else:
                    self.session.on_text()
        elif opcode == frames.OP_PING:
            if self._state == _OPEN and self.transport is not None:
                self.transport.write(frames.frame(frames.OP_PONG, payload))
        elif opcode == frames.OP_PONG:
            if payload == self.ping_payload:
                self.ping_payload = None
        else:
            self._peer_closed(payload)

    def _count_inflight(self) -> bool:
        """Count this socket's unfinished message bytes in the node's total; True if that took the
        total over --max-inflight-bytes (the socket is then failed with 1008: the ceiling is the
        setting, not --max-connections x --max-message-bytes)."""
        held = self._reader.buffered
        grown = held - self._counted
        if not grown:
            return False
        self.inflight[0] += grown
        self._counted = held
        if grown < 0 or self.inflight[0] <= self.inflight_limit:
            return False
        self.fail(frames.CLOSE_POLICY, "unfinished messages on this node are over its in-flight byte limit")
        return True

    def _peer_closed(self, payload: bytes) -> None:
        transport = self.transport
        if transport is None:
            return
        if self._state == _OPEN:
            code, _ = frames.parse_close(payload)
            # Echo the peer's code (RFC 6455 5.5.1); a close without one is answered with none.
            echo = b"" if code == frames.CLOSE_NO_STATUS else payload[:2]
            transport.write(frames.frame(frames.OP_CLOSE, echo))
        self._state = _CLOSING
        # The server closes the TCP connection first (RFC 6455 7.1.1).
        transport.close()

    def _stalled(self) -> None:
        self._timer = None
        if self._state == _CLOSED:
            return
        if self.session is not None:
            self.session.on_stalled()
        self._drop()

    def _drop(self) -> None:
        self._timer = None
        if self.transport is not None:
            self.transport.abort()

    def _resume_reading(self) -> None:
        if self._held or self._writing_paused:
            return
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def idle(self) -> None:
        """Called by the sweep once no message came for the idle timeout."""
        if self.session is not None and self._state == _OPEN:
            self.session.on_idle()
            # A session that keeps the socket is asked again only after another whole timeout.
            self.last_message = self.loop.time()


def protocol_class(
    endpoint: Endpoint,
    sockets: Sockets,
    *,
    limit: int,
    send_timeout: float,
    close_timeout: float = CLOSE_TIMEOUT,
    inflight_limit: int | None = None,
) -> type[WebSocketProtocol]:
    """The `ws` protocol class for uvicorn's Config, serving `endpoint` on one node. `limit`: the
    largest message payload read, in bytes; `inflight_limit`: the most bytes of unfinished messages
    all of the node's sockets may hold together (None: no bound beyond `limit` per socket)."""

    class NodeWebSocket(WebSocketProtocol):
        __slots__ = ()

    NodeWebSocket.endpoint = endpoint
    NodeWebSocket.sockets = sockets
    NodeWebSocket.limit = limit
    NodeWebSocket.send_timeout = send_timeout
    NodeWebSocket.close_timeout = close_timeout
    NodeWebSocket.inflight_limit = (1 << 62) if inflight_limit is None else inflight_limit
    NodeWebSocket.inflight = [0]
    return NodeWebSocket
