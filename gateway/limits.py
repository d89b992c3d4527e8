"""Load shedding: the node's bounds on open WebSockets, messages in flight and enrollments per second.

Each bound refuses work before it is done, with an answer the agent knows to retry: HTTP 503 (or 429
for the enrollment rate) with Retry-After, a WebSocket upgrade refused with 503 + Retry-After, or a
ServerToAgent{Unavailable, retry_info} on an open WebSocket. Nothing already accepted is dropped: a
message past the in-flight bound is never read into the engine, and an agent already enrolled never
waits for an enrollment token.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from gateway.opamp import capabilities as caps, engine
from gateway.proto import opamp_pb2 as pb

if TYPE_CHECKING:
    from gateway.settings import Settings

# Shed reasons answered with 429 Too Many Requests (a rate), not 503 (capacity).
RATE_LIMITED = frozenset({"enrollment_rate"})
# Every reason the gateway sheds for (metric label values, created at zero so dashboards see them).
SHED_REASONS = (
    "max_connections",
    "max_unfinished_per_ip",
    "max_unfinished",
    "max_inflight",
    "enrollment_rate",
    "writer_queue_full",
    "store",
    "circuit_open",
    "shutting_down",
    "draining",
    # An agent's credential record changed on another node while its message was handled.
    "credential_changed",
)
# Spec: the minimum recommended retry interval is 30 s; jitter spreads the returning herd.
RETRY_AFTER_SECONDS = 30
RETRY_JITTER_SECONDS = 30


def retry_after() -> int:
    """Seconds an agent refused for load should wait: at least the spec's 30 s, jittered."""
    return RETRY_AFTER_SECONDS + random.randint(0, RETRY_JITTER_SECONDS)


class TokenBucket:
    """`rate` tokens per second, at most `burst` saved up; rate 0 means no limit."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._at = clock()

    def take(self) -> bool:
        if self.rate <= 0:
            return True
        now = self._clock()
        self._tokens = min(float(self.burst), self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


def enrolls(state: object | None, msg: pb.AgentToServer) -> bool:
    """Would this message enroll a new agent (an unknown, well-formed uid, or any temporary one with
    RequestInstanceUid, that is not saying goodbye)?"""
    well_formed = len(msg.instance_uid) == engine.UID_LENGTH or bool(msg.flags & caps.REQUEST_INSTANCE_UID)
    return state is None and well_formed and not msg.HasField("agent_disconnect")


class Limits:
    """Counters of what is open and in flight on this node; one per node, used from its event loop."""

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_connections = settings.max_connections
        self.max_inflight = settings.max_inflight
        self.enrollments = TokenBucket(settings.enrollment_rate, settings.enrollment_burst, clock)
        self.connections = 0
        self.inflight = 0

    def open_connection(self) -> bool:
        """Count a new WebSocket, or False if the node holds as many as it may."""
        if self.connections >= self.max_connections:
            return False
        self.connections += 1
        return True

    def close_connection(self) -> None:
        self.connections -= 1

    def begin_message(self) -> bool:
        """Count a message being handled, or False if as many are in flight as allowed."""
        if self.inflight >= self.max_inflight:
            return False
        self.inflight += 1
        return True

    def track_message(self) -> None:
        """Count a WebSocket message, never refusing it. A socket has at most one message in flight
        (the next frame is not read until the reply is sent), so sockets are bounded by
        --max-connections already; shedding would lose what the agent reported (a config push makes
        thousands of agents report at once) and gain nothing."""
        self.inflight += 1

    def end_message(self) -> None:
        self.inflight -= 1

    def admit_enrollment(self) -> bool:
        return self.enrollments.take()
