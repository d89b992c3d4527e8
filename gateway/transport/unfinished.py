"""Requests that have not fully arrived yet, on one port: their deadlines, a cap per client address
and a budget for the port (slow clients, issue 20 finding 9).

A socket counts as unfinished from the moment it is accepted (or the first byte of its next request
on a kept-alive connection) until its request has fully arrived: the request line and headers must
arrive within `header_timeout`, and the rest of the request (its body) within `body_timeout` after
that. A socket past its deadline is dropped. One address may hold at most `per_address` unfinished
sockets (more are refused as they are accepted), and the port at most `total`: when a new socket
would go over, the oldest one still waiting for its head (if none, for its body) is dropped
instead. That keeps slow clients from holding the process's files, so a WebSocket agent or a
liveness probe that sends its request at once is served, unless `total` other sockets arrive while
it does (docs/security.md, "Memory and slow clients").

Deadlines are kept in insertion order: every socket waiting for its head got the same timeout, so
the first one waiting is the first one due, and one timer per port, armed while sockets are waiting,
drops the ones due (at most a quarter of the timeout late), as in read_deadlines.py.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Callable
from typing import Protocol

# Sweeps per timeout: how late past its deadline a socket may be dropped.
_SWEEPS = 4
# IPv6 clients are counted per /64: one host is usually given a whole /64 to pick addresses from.
_IPV6_PREFIX = 64


class Droppable(Protocol):
    """A socket the tracker can drop."""

    def drop_unfinished(self, why: str) -> None:
        """Close the connection at once; `why` is "header", "body" or "evicted"."""


def address_key(peer: object) -> str:
    """The address a socket counts under: the IPv4 address, or the IPv6 /64 (an IPv4-mapped IPv6
    address counts as its IPv4 address); "" for a peer with no IP address (a Unix socket)."""
    if not isinstance(peer, tuple) or not peer or not isinstance(peer[0], str):
        return ""
    try:
        address = ipaddress.ip_address(peer[0].split("%", 1)[0])
    except ValueError:
        return ""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, _IPV6_PREFIX), strict=False))
    return str(address)


class UnfinishedRequests:
    """The unfinished requests of one port, used from its event loop."""

    def __init__(
        self,
        *,
        header_timeout: float,
        body_timeout: float,
        per_address: int,
        total: int,
        count: Callable[[str], None] = lambda _what: None,
    ) -> None:
        self.header_timeout = header_timeout
        self.body_timeout = body_timeout
        self.per_address = per_address
        self.total = total
        # Told "refused" (over the per-address cap) and each drop's reason.
        self._count = count
        # Socket -> deadline, oldest first: waiting for the request head, and for the rest of it.
        self._heads: dict[Droppable, float] = {}
        self._bodies: dict[Droppable, float] = {}
        self._address: dict[Droppable, str] = {}
        self._per_address: dict[str, int] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def __len__(self) -> int:
        return len(self._address)

    @property
    def heads(self) -> int:
        """Sockets waiting for a request head."""
        return len(self._heads)

    @property
    def bodies(self) -> int:
        """Sockets whose request head arrived, waiting for the rest."""
        return len(self._bodies)

    def __contains__(self, socket: object) -> bool:
        return socket in self._address

    def from_address(self, key: str) -> int:
        return self._per_address.get(key, 0)

    def begin(self, socket: Droppable, key: str) -> bool:
        """`socket` is waiting for a request head (just accepted, or a new request on it began);
        False if its address already holds `per_address` unfinished sockets (refuse it then)."""
        if socket in self._address:
            # Still unfinished (a request that began before the last one fully arrived): its old
            # deadline stands.
            return True
        if self._per_address.get(key, 0) >= self.per_address:
            self._count("refused")
            return False
        while len(self._address) >= self.total:
            self._evict_oldest()
        self._per_address[key] = self._per_address.get(key, 0) + 1
        self._address[socket] = key
        self._heads[socket] = self._now() + self.header_timeout
        if self._timer is None:
            self._arm()
        return True

    def head_done(self, socket: Droppable) -> None:
        """The request line and headers of `socket`'s request have arrived; now its body may take
        `body_timeout`."""
        if self._heads.pop(socket, None) is None:
            return
        self._bodies[socket] = self._now() + self.body_timeout

    def done(self, socket: Droppable) -> None:
        """`socket`'s request has fully arrived, or the socket is gone (or no longer HTTP)."""
        key = self._address.pop(socket, None)
        if key is None:
            return
        self._heads.pop(socket, None)
        self._bodies.pop(socket, None)
        left = self._per_address[key] - 1
        if left:
            self._per_address[key] = left
        else:
            del self._per_address[key]

    def _now(self) -> float:
        # The port's loop, looked up once: asyncio.get_running_loop() costs a getpid() each time.
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        return loop.time()

    def _drop(self, socket: Droppable, why: str) -> None:
        self.done(socket)
        self._count(why)
        socket.drop_unfinished(why)

    def _evict_oldest(self) -> None:
        # Heads before bodies: a socket whose headers arrived is further along than any still
        # sending them.
        waiting = self._heads or self._bodies
        self._drop(next(iter(waiting)), "evicted")

    def _arm(self) -> None:
        if self._timer is None:
            loop = asyncio.get_running_loop()
            period = min(self.header_timeout, self.body_timeout) / _SWEEPS
            self._timer = loop.call_at(loop.time() + period, self._sweep)

    def _sweep(self) -> None:
        self._timer = None
        now = asyncio.get_running_loop().time()
        for waiting, why in ((self._heads, "header"), (self._bodies, "body")):
            due = []
            for socket, deadline in waiting.items():
                if deadline > now:
                    break
                due.append(socket)
            for socket in due:
                self._drop(socket, why)
        if self._address:
            self._arm()
