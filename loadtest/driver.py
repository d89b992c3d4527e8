"""The connected WebSocket agents of a Locust process, run from gevent's hub without a greenlet each.

A Locust user per agent that waits on its own socket costs two greenlet switches through the hub per
message, each copying the slice of a deep stack (`User.run`, the task, the session, the wait), plus
an io watcher and a timer per wait: most of the ~430 µs a heartbeat cost (docs/loadtest.md). Here a
user only connects (the handshake, on gevent's socket) and hands its session to the `Driver`, then
parks until the session ends. The driver owns the connected sockets, as non-blocking standard
sockets, each with one io watcher kept for the connection's life whose callback reads and answers
right in the hub's loop: no greenlet is switched to for a message. Heartbeats and retry waits come
from one heap of deadlines, looked at by one repeating timer every `TICK`, so that one wake-up
sends every heartbeat due in it. What to send and how to answer is the session's (`WsSession.tick`
and `received`, the same code the per-agent wait runs); every round trip is reported from here, to
the session's reporter (Locust's request event), at once.

A session that fails (closed, refused, unanswered, broken framing) is reported by `WsSession.fail`
and handed back: the parked user wakes with the back-off to wait before it reconnects.
"""

from __future__ import annotations

import heapq
import itertools
import math
import socket
import time
from typing import Any

from gevent.event import AsyncResult
from gevent.hub import get_hub
from gevent.monkey import get_original

from loadtest.session import FAILURES, WsSession

# Seconds between two looks at the heap of deadlines: a heartbeat goes out at most this late, and
# the heartbeats (and so the replies) of a worker come in batches, fewer wake-ups of the hub.
TICK = 0.05
_RECV_BYTES = 65536
# The standard library's, even when gevent has patched the module (the driver never blocks on it).
_SOCKET: Any = get_original("socket", "socket")
_READ = 1


class _Driven:
    """A session the driver runs: its socket's descriptor, its deadline in the heap, and the result
    its parked user waits on."""

    __slots__ = ("due", "ended", "result", "session", "sock", "watcher")

    def __init__(self, session: WsSession, sock: socket.socket, watcher: Any) -> None:
        self.session = session
        self.sock = sock
        self.watcher = watcher
        self.due = math.inf
        self.ended = False
        self.result: AsyncResult = AsyncResult()


class Driver:
    """Every connected session of this process, on the hub of the thread that runs them."""

    def __init__(self) -> None:
        self._driven: set[_Driven] = set()
        # (deadline, tie-breaker, driven); entries whose deadline moved or whose session ended stay
        # until they come up, and are skipped then.
        self._heap: list[tuple[float, int, _Driven]] = []
        self._order = itertools.count()
        self._timer: Any = None

    def __len__(self) -> int:
        return len(self._driven)

    def drive(self, session: WsSession) -> float:
        """Run `session` (connected, first message sent) until it fails; the back-off to wait then.
        Called by the session's own greenlet, which parks here meanwhile."""
        driven = self._adopt(session)
        try:
            backoff: float = driven.result.get()
            return backoff
        finally:
            # Killed while parked (Locust stopping the user): the user closes the socket itself.
            self._forget(driven)

    def _adopt(self, session: WsSession) -> _Driven:
        """Take over the session's socket as a non-blocking standard socket on the same descriptor."""
        connection = session.connection
        assert connection is not None
        raw = _SOCKET(fileno=connection.detach())
        raw.setblocking(False)
        session.replace_socket(raw)
        loop = get_hub().loop
        driven = _Driven(session, raw, loop.io(raw.fileno(), _READ))
        self._driven.add(driven)
        self._schedule(driven, session.due(time.monotonic()))
        backlog = session.take_backlog()
        if backlog:
            self._run(driven, session.received, backlog)
        if not driven.ended:
            driven.watcher.start(self._read, driven)
        if self._timer is None:
            self._timer = loop.timer(TICK, TICK)
            self._timer.start(self._on_tick)
        return driven

    def _schedule(self, driven: _Driven, due: float) -> None:
        if due != driven.due:
            driven.due = due
            heapq.heappush(self._heap, (due, next(self._order), driven))

    def _forget(self, driven: _Driven) -> None:
        if driven.ended:
            return
        driven.ended = True
        # Before the socket is closed: the kernel may hand its descriptor to the next socket.
        driven.watcher.close()
        self._driven.discard(driven)
        if not self._driven and self._timer is not None:
            self._timer.close()
            self._timer = None
            self._heap.clear()

    def _run(self, driven: _Driven, action: Any, arg: Any) -> None:
        """`action(arg)` on the session; a failure ends it and wakes its user."""
        try:
            action(arg)
        except FAILURES as exc:
            self._end(driven, exc)
            return
        self._schedule(driven, driven.session.due(time.monotonic()))

    def _end(self, driven: _Driven, exc: Exception) -> None:
        """Fail the session (its waiting messages are reported), close it and wake its user."""
        self._forget(driven)
        session = driven.session
        session.fail(exc)
        driven.result.set(session.backoff)

    def _on_tick(self) -> None:
        """Send what has fallen due: heartbeats, full reports after a retry wait, reply timeouts."""
        heap = self._heap
        now = time.monotonic()
        while heap and heap[0][0] <= now:
            due, _, driven = heapq.heappop(heap)
            if not driven.ended and due == driven.due:
                driven.due = math.inf
                self._run(driven, driven.session.tick, now)

    def _read(self, driven: _Driven) -> None:
        try:
            data = driven.sock.recv(_RECV_BYTES)
        except BlockingIOError:
            return
        except OSError as exc:
            self._end(driven, exc)
            return
        self._run(driven, driven.session.received, data)


# The driver of this process (Locust's users share it).
DRIVER = Driver()
