"""This node's connection registry: which instance_uid is served by which open WebSocket.

One socket may carry several agents (a concentrating proxy), so the map is uid -> connection, and a
connection knows its own uids. HTTP agents hold no socket; the registry only remembers when each one
last polled this node, for the "connected agents" gauge.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Protocol

from gateway.fleet.agent import AgentState
from gateway.fleet.credentials import OwnCredential
from gateway.node.duplicates import Takeovers
from gateway.opamp.push import Push


class Holder(Protocol):
    """What a connection holding agents offers the node (like opamp-go's Connection: Send, Disconnect).
    The node decides what to push (gateway/opamp/push.py); the connection only sends it."""

    # This connection's id; owner records carry it so a node never closes a newer connection.
    epoch: str

    def state(self, uid: bytes) -> AgentState | None:
        """`uid`'s record as this connection holds it; None if it does not serve `uid` (any more)."""

    def alive(self, uid: bytes, now: float) -> AgentState | None:
        """The socket answers pings: `uid`'s record with last_seen moved to `now`, kept as this
        connection's record; None if it does not serve `uid` (any more)."""

    async def send(self, push: Push) -> bool:
        """Send a server-initiated message to the push's agent and keep its record (here and in the
        store); False if the socket is gone or no longer serves that agent."""

    async def answers(self, recent: float, within: float) -> bool:
        """Whether the peer is alive: heard from within `recent` seconds, or answering a probe
        within `within` seconds (gateway/node/duplicates.py)."""

    async def taken_over(self, uid: bytes, where: str) -> None:
        """`uid` connected again elsewhere: stop serving it here (closing the socket if it was the
        socket's only agent)."""

    async def drain(self, retry_after: float) -> None:
        """Tell every agent on the socket to come back after `retry_after` seconds, then close."""

    @property
    def own(self) -> OwnCredential | None:
        """The agent credential the socket authenticated with (None: a shared agent key, or none)."""

    @property
    def authenticated(self) -> bool:
        """Whether the socket authenticated at all (agent keys are on)."""

    async def refuse(self, uid: bytes, reason: str) -> None:
        """`uid` may no longer speak over this socket (its credentials changed): stop serving it
        (closing the socket with 1008 and `reason` if it was the socket's only agent)."""


class Registry:
    def __init__(self) -> None:
        self._by_uid: dict[bytes, Holder] = {}
        # Every open socket, including those that have not sent their first message yet, and when it
        # was opened (monotonic clock; --max-connection-age counts from it).
        self._sockets: dict[Holder, float] = {}
        self._http_seen: dict[bytes, float] = {}
        # How often each uid changed hands lately: takeovers are damped (gateway/node/duplicates.py).
        self.takeovers = Takeovers()

    def attach(self, conn: Holder) -> None:
        self._sockets[conn] = time.monotonic()

    def detach(self, conn: Holder) -> None:
        self._sockets.pop(conn, None)

    def register(self, uid: bytes, conn: Holder) -> Holder | None:
        """Route `uid` to `conn`; the other connection that served it until now, if any."""
        previous = self._by_uid.get(uid)
        self._by_uid[uid] = conn
        self._http_seen.pop(uid, None)
        return previous if previous is not conn else None

    def unregister(self, uid: bytes, conn: Holder) -> bool:
        """Forget `uid` if `conn` still serves it (a newer connection keeps its registration)."""
        if self._by_uid.get(uid) is conn:
            del self._by_uid[uid]
            return True
        return False

    def get(self, uid: bytes) -> Holder | None:
        return self._by_uid.get(uid)

    def registrations(self) -> list[tuple[bytes, Holder]]:
        return list(self._by_uid.items())

    def sockets(self) -> list[Holder]:
        return list(self._sockets)

    def opened(self) -> list[tuple[Holder, float]]:
        """Every open socket and when it was opened (time.monotonic())."""
        return list(self._sockets.items())

    def agents_per_socket(self) -> Counter[Holder]:
        """How many agents each socket serves (sockets that serve none yet are left out)."""
        return Counter(self._by_uid.values())

    @property
    def socket_count(self) -> int:
        return len(self._sockets)

    @property
    def websocket_agents(self) -> int:
        return len(self._by_uid)

    def saw_http(self, uid: bytes, now: float | None) -> None:
        """An HTTP message from `uid` at `now`; None: it said goodbye."""
        if now is None:
            self._http_seen.pop(uid, None)
        else:
            self._http_seen[uid] = now

    def http_agents(self, now: float, window: float) -> int:
        """HTTP agents that polled this node within `window` seconds (prunes the rest)."""
        stale = [uid for uid, seen in self._http_seen.items() if now - seen > window]
        for uid in stale:
            del self._http_seen[uid]
        return len(self._http_seen)
