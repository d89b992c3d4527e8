"""One greenlet per Locust process that runs every connected WebSocket agent's session.

A Locust user per agent that waits on its own socket costs two greenlet switches through the hub per
message, each copying the slice of a deep stack (`User.run`, the task, the session, the wait), plus
an io watcher and a timer per wait: most of the ~430 µs a heartbeat cost (docs/loadtest.md). Here a
user only connects (the handshake, on gevent's socket) and hands its session to the `Driver`, then
parks until the session ends. The driver owns the connected sockets, as non-blocking standard
sockets registered with one epoll, and waits on all of them at once: one io watcher on the epoll's
file descriptor and one timer, on gevent's hub (`HubWait`). Heartbeats and retry waits come from one
heap of deadlines, rounded up to a `TICK` so that the heartbeats of many agents go out in one
wake-up. What to send and how to answer is the session's (`WsSession.tick` and `received`, the same
code the per-agent wait runs); every round trip is reported from here, to the session's reporter.

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

import gevent
from gevent.event import AsyncResult
from gevent.monkey import get_original

from loadtest.hubwait import HubWait
from loadtest.session import FAILURES, WsSession

# Deadlines are rounded up to this many seconds: one wake-up sends every heartbeat due in it.
TICK = 0.01
_RECV_BYTES = 65536
# The standard library's, even when gevent has patched the modules (the driver never blocks on them).
_EPOLL: Any = get_original("select", "epoll")
_SOCKET: Any = get_original("socket", "socket")
_EPOLLIN: int = get_original("select", "EPOLLIN")


class _Driven:
    """A session the driver runs: its socket's descriptor, its deadline in the heap, and the result
    its parked user waits on."""

    __slots__ = ("due", "ended", "fd", "result", "session", "sock")

    def __init__(self, session: WsSession, sock: socket.socket) -> None:
        self.session = session
        self.sock = sock
        self.fd = sock.fileno()
        self.due = math.inf
        self.ended = False
        self.result: AsyncResult = AsyncResult()


class Driver:
    """Every connected session of this process, on one greenlet."""

    def __init__(self) -> None:
        self._driven: dict[int, _Driven] = {}
        # (deadline, tie-breaker, driven); entries whose deadline moved or whose session ended stay
        # until they come up, and are skipped then.
        self._heap: list[tuple[float, int, _Driven]] = []
        self._order = itertools.count()
        self._epoll: Any = None
        self._wait = HubWait()
        self._greenlet: Any = None

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
        fd = connection.detach()
        raw = _SOCKET(fileno=fd)
        raw.setblocking(False)
        session.replace_socket(raw)
        driven = _Driven(session, raw)
        if self._epoll is None:
            self._epoll = _EPOLL()
        self._epoll.register(fd, _EPOLLIN)
        self._driven[fd] = driven
        self._schedule(driven, session.due(time.monotonic()))
        backlog = session.take_backlog()
        if backlog:
            self._run(driven, session.received, backlog)
        if self._greenlet is None:
            self._greenlet = gevent.spawn(self._loop)
        return driven

    def _schedule(self, driven: _Driven, due: float) -> None:
        due = math.ceil(due / TICK) * TICK
        if due != driven.due:
            driven.due = due
            heapq.heappush(self._heap, (due, next(self._order), driven))

    def _forget(self, driven: _Driven) -> None:
        if driven.ended:
            return
        driven.ended = True
        del self._driven[driven.fd]
        self._epoll.unregister(driven.fd)

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

    def _loop(self) -> None:
        """Until no session is left: send what is due, read what came, wait for either."""
        heap, driven_by_fd, epoll = self._heap, self._driven, self._epoll
        try:
            while driven_by_fd:
                now = time.monotonic()
                while heap and heap[0][0] <= now:
                    due, _, driven = heapq.heappop(heap)
                    if not driven.ended and due == driven.due:
                        driven.due = math.inf
                        self._run(driven, driven.session.tick, now)
                for fd, _ in epoll.poll(0):
                    ready = driven_by_fd.get(fd)
                    if ready is not None:
                        self._read(ready)
                if driven_by_fd:
                    deadline = heap[0][0] if heap else now + 1.0
                    self._wait(epoll, deadline - time.monotonic())
        finally:
            self._greenlet = None
            self._wait.release()

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
