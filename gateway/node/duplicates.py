"""Duplicate instance_uids: a genuine reconnect or a clone, and how often a uid may change hands.

When a uid arrives on a new WebSocket while another open socket on this node serves it, either the
agent reconnected (its old socket is dead or silent: the newcomer takes the uid over) or two agents
share the uid (cloned VMs, a copied supervisor storage directory: both sockets are alive). The spec
says: "When a duplicate `instance_uid` is detected, Server SHOULD generate a new `instance_uid`, and
send it as `new_instance_uid`." The old socket is asked: anything heard from it within
`RECENT_SECONDS` counts as alive, otherwise it is pinged and must answer within `PROBE_SECONDS`.
A clone gets a fresh uid (the first agent keeps its record); a reconnect takes the uid over. Over
HTTP, `http_clone` tells a clone from its sequence numbers and description.

Takeovers are damped: a uid changes hands at most `MAX_TAKEOVERS` times per `WINDOW_SECONDS`;
beyond that a newcomer is refused with a retry hint, and its socket is held for that long before it
is closed, so a client that ignores the hint (opamp-go) cannot loop.
"""

from __future__ import annotations

from collections import deque
from typing import Literal

from gateway.fleet.agent import AgentState
from gateway.opamp import capabilities as caps
from gateway.proto import opamp_pb2 as pb

# Something received from the old socket this recently: it is alive, no probe needed.
RECENT_SECONDS = 1.0
# A ping to the old socket not answered within this: it is dead or silent.
PROBE_SECONDS = 2.0
MAX_TAKEOVERS = 3
WINDOW_SECONDS = 60.0
# Uids whose takeovers are remembered; beyond this the expired ones are pruned.
_PRUNE_AT = 10_000

Verdict = Literal["clone", "reconnect", "refused"]


def as_clone(msg: pb.AgentToServer) -> pb.AgentToServer:
    """`msg` as the engine must see it from a clone: asking for a uid of its own (opamp-go adopts
    agent_identification.new_instance_uid even when it did not ask)."""
    clone = pb.AgentToServer()
    clone.CopyFrom(msg)
    clone.flags |= caps.REQUEST_INSTANCE_UID
    return clone


def http_clone(state: AgentState | None, msg: pb.AgentToServer) -> bool:
    """Whether an HTTP message comes from a second agent polling with a uid another agent holds.

    Over HTTP there is no socket to probe: a clone shows as a sequence_num that goes back (the two
    agents' numbers interleave) together with an agent_description that differs from the stored one.
    Kept conservative: a restart resets sequence_num to 0 with the same description, and an agent
    that restarts with a new description (an upgrade) starts from 0 too; neither is a duplicate.
    """
    if state is None or state.description is None or state.instance_uid != msg.instance_uid:
        return False
    if not msg.HasField("agent_description") or not 0 < msg.sequence_num <= state.sequence_num:
        return False
    return msg.agent_description.SerializeToString(deterministic=True) != state.description


def verdict(alive: bool, damper: Takeovers, uid: bytes, now: float) -> Verdict:
    """What to do with a newcomer for `uid` whose current holder is `alive` (or not)."""
    if alive:
        return "clone"
    return "reconnect" if damper.allow(uid, now) else "refused"


class Takeovers:
    """When each uid changed hands lately (monotonic seconds), to damp takeovers."""

    def __init__(self, limit: int = MAX_TAKEOVERS, window: float = WINDOW_SECONDS) -> None:
        self._limit = limit
        self._window = window
        self._times: dict[bytes, deque[float]] = {}

    def allow(self, uid: bytes, now: float) -> bool:
        """True (and counted) if `uid` may change hands at `now`."""
        if len(self._times) >= _PRUNE_AT:
            self._prune(now)
        times = self._times.setdefault(uid, deque())
        while times and now - times[0] >= self._window:
            times.popleft()
        if len(times) >= self._limit:
            return False
        times.append(now)
        return True

    def retry_after(self, uid: bytes, now: float) -> float:
        """Seconds until `uid` may change hands again (0: now)."""
        times = self._times.get(uid)
        if not times or len(times) < self._limit:
            return 0.0
        return max(0.0, times[0] + self._window - now)

    def _prune(self, now: float) -> None:
        expired = [uid for uid, times in self._times.items() if not times or now - times[-1] >= self._window]
        for uid in expired:
            del self._times[uid]

    def __len__(self) -> int:
        return len(self._times)
