"""Server pings: one sweep per node instead of uvicorn's two timers per socket.

uvicorn's WebSocket protocol pings every socket every --ws-ping-interval seconds whether or not the
peer just spoke, with a timer per socket for the next ping and another for the pong's deadline. With
agents heartbeating every 30 s and pings every 20 s that is more pings than heartbeats, each costing
as much as a heartbeat's transport work (docs/performance.md, "Per-agent cost").

Here a socket is pinged only when the peer sent nothing for --ws-ping-interval seconds (anything it
sends proves it alive, and keeps balancers' idle timers open as a ping would), and is dropped with
1011 when that ping's pong has not come within --ws-ping-timeout, as uvicorn does. One timer per
node sweeps the open sockets every quarter of the shorter of the two settings, so a ping goes out
at most that much later, and a dead peer is dropped at most interval + timeout + two sweeps after it
last spoke. The sweep runs only while the node holds sockets.

This subclasses uvicorn's websockets sans-I/O protocol (`ws="auto"` with the locked versions) and
uses its keepalive state (`pending_ping_payload`, `ping_sent_at`, `handle_pong`,
`keepalive_timeout`); tests/transport/test_keepalive.py checks that it still behaves.
"""

from __future__ import annotations

import asyncio
import logging
import random
import struct
from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

logger = logging.getLogger("gateway.transport.keepalive")
# Its own generator: the module-level one is global state other code must not see move per ping.
_payloads = random.Random()

# Sweeps per ping interval (or timeout, whichever is shorter).
SWEEPS_PER_INTERVAL = 4


class Keepalive:
    """The node's open WebSockets and the one timer that pings and drops them."""

    def __init__(self, interval: float, timeout: float) -> None:
        self.interval = interval
        self.timeout = timeout
        self._every = min(interval, timeout) / SWEEPS_PER_INTERVAL
        self._sockets: dict[_Protocol, None] = {}
        self._timer: asyncio.TimerHandle | None = None
        self.pings_sent = 0

    def protocol(self) -> type[asyncio.Protocol]:
        """The uvicorn WebSocket protocol class (Config's `ws`) whose sockets this keepalive serves."""
        keepalive = self

        class Protocol(_Protocol):
            _keepalive = keepalive

        return Protocol

    @property
    def sockets(self) -> int:
        return len(self._sockets)

    def _add(self, proto: _Protocol) -> None:
        if self.interval <= 0:
            return
        self._sockets[proto] = None
        if self._timer is None:
            self._timer = proto.loop.call_later(self._every, self.sweep, proto.loop)

    def _discard(self, proto: _Protocol) -> None:
        self._sockets.pop(proto, None)

    def sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        """Ping the sockets silent for the interval, drop those whose pong is overdue; re-arm."""
        now = loop.time()
        interval, timeout = self.interval, self.timeout
        for proto in list(self._sockets):
            if proto.pending_ping_payload is not None:
                if now - proto.ping_sent_at >= timeout:
                    self._sockets.pop(proto, None)
                    proto.keepalive_timeout()
            elif now - proto.last_received >= interval:
                proto.ping(now)
                self.pings_sent += 1
        self._timer = loop.call_later(self._every, self.sweep, loop) if self._sockets else None


class _Protocol(WebSocketsSansIOProtocol):
    _keepalive: Keepalive

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.last_received = self.loop.time()

    def data_received(self, data: bytes) -> None:
        self.last_received = self.loop.time()
        super().data_received(data)

    def start_keepalive(self) -> None:
        # Called once the handshake is accepted: the node's sweep takes the socket from here.
        self.last_received = self.loop.time()
        self._keepalive._add(self)

    def stop_keepalive(self) -> None:
        self._keepalive._discard(self)
        super().stop_keepalive()

    def ping(self, now: float) -> None:
        """Send a ping whose pong `handle_pong` recognises by its payload (uvicorn's own scheme)."""
        if self.close_sent or self.transport.is_closing():
            self._keepalive._discard(self)
            return
        self.pending_ping_payload = struct.pack("!I", _payloads.getrandbits(32))
        self.ping_sent_at = now
        self.conn.send_ping(self.pending_ping_payload)
        self.transport.write(b"".join(self.conn.data_to_send()))
