"""Server pings and the idle timeout: one sweep per node instead of timers per socket.

A socket is pinged only when the peer sent nothing for --ws-ping-interval seconds (anything it sends
proves it alive, and keeps balancers' idle timers open as a ping would), and is dropped with 1011 when
that ping's pong has not come within --ws-ping-timeout. A socket whose peer sent no message (pongs do
not count) for the idle timeout (--idle-timeout, at least 3 x --agent-heartbeat-interval) is handed
to its session, which closes it with 1000 unless it carries an agent without ReportsHeartbeat. One
timer per node sweeps the open sockets every quarter of the shortest of those settings, so a ping
goes out at most that much later, and a dead peer is dropped at most interval + timeout + two sweeps
after it last spoke. The sweep runs only while the node holds sockets.

A socket costs the sweep one dict entry; no timer, task or future per socket.
"""

from __future__ import annotations

import asyncio
import logging
import random
import struct

from gateway.transport import ws_frames
from gateway.transport.ws_protocol import WebSocketProtocol

logger = logging.getLogger("gateway.transport.keepalive")
# Its own generator: the module-level one is global state other code must not see move per ping.
_payloads = random.Random()

# Sweeps per ping interval (or timeout, or idle timeout, whichever is shortest).
SWEEPS_PER_INTERVAL = 4


class Keepalive:
    """The node's open WebSockets and the one timer that pings, drops and idles them out."""

    def __init__(self, interval: float, timeout: float, idle_timeout: float = 0.0) -> None:
        self.interval = interval
        self.timeout = timeout
        self.idle_timeout = idle_timeout
        periods = [p for p in (interval, timeout if interval > 0 else 0.0, idle_timeout) if p > 0]
        self._every = min(periods) / SWEEPS_PER_INTERVAL if periods else 0.0
        self._sockets: dict[WebSocketProtocol, None] = {}
        self._timer: asyncio.TimerHandle | None = None
        self.pings_sent = 0

    @property
    def sockets(self) -> int:
        return len(self._sockets)

    def add(self, socket: WebSocketProtocol) -> None:
        if self._every <= 0:
            return
        self._sockets[socket] = None
        if self._timer is None:
            self._timer = socket.loop.call_later(self._every, self.sweep, socket.loop)

    def discard(self, socket: WebSocketProtocol) -> None:
        self._sockets.pop(socket, None)

    def sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        """Ping the sockets silent for the interval, drop those whose pong is overdue, idle out
        those without a message for the idle timeout; re-arm."""
        now = loop.time()
        interval, timeout, idle = self.interval, self.timeout, self.idle_timeout
        for socket in list(self._sockets):
            if not socket.open:
                continue
            if idle > 0 and now - socket.last_message >= idle:
                socket.idle()
                continue
            if interval <= 0:
                continue
            if socket.ping_payload is not None:
                if now - socket.ping_sent_at >= timeout:
                    self._sockets.pop(socket, None)
                    socket.fail(ws_frames.CLOSE_INTERNAL_ERROR, "keepalive ping timeout")
            elif now - socket.last_received >= interval:
                socket.ping(struct.pack("!I", _payloads.getrandbits(32)), now)
                self.pings_sent += 1
        self._timer = loop.call_later(self._every, self.sweep, loop) if self._sockets else None
