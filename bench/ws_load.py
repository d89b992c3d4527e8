"""The WebSocket load: agents on open sockets, their untimed traffic (enroll, samples) and the timed
closed loop, with every reply checked.

Closed loop: each socket carries one agent and has one heartbeat in flight; the reply's arrival sends
that agent's next heartbeat (sequence_num + 1) from inside `data_received`, so sequence numbers reach
the server in order, as from a real agent. Every reply is compared byte for byte with the reply a
correct heartbeat gets (per agent for the gateway, fixed for the baseline); only a reply that differs
is decoded, to name what is wrong with it. When the phase's time is up no new heartbeat is sent, and
the phase waits for the replies still in flight, so the count of messages sent is exact.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from google.protobuf.message import DecodeError

from bench.agents import ReplyError, check_message
from bench.ws_client import CLOSE_NORMAL, AgentSocket, WsError, connect
from gateway.opamp import framing
from gateway.proto import opamp_pb2 as pb
from harness.agent import SimAgent, reply_problem

logger = logging.getLogger("bench.ws_load")

T = TypeVar("T")
# Raises ReplyError if a reply to an untimed message (a full report) is not what it should be.
Check = Callable[[bytes, SimAgent], None]

REPLY_TIMEOUT = 10.0
DRAIN_TIMEOUT = 10.0
# Reply checks that count as errors (anything but "ok").
CHECK_ERRORS = (
    "error_response",
    "full_state",
    "wrong_uid",
    "bad_header",
    "bad_body",
    "unexpected",
    "closed",
    "text",
    "unanswered",
)


@dataclass
class WsAgent:
    """A simulated agent and the socket it is connected on."""

    agent: SimAgent
    sock: AgentSocket


def heartbeat_message(agent: SimAgent) -> bytes:
    """The next heartbeat of `agent`, framed (moves its sequence number on)."""
    return framing.encode(agent.heartbeat().SerializeToString())


def heartbeat_parts(agent: SimAgent) -> tuple[bytes, bytes]:
    """What comes before and after the sequence number in the agent's framed heartbeat: the closed
    loop encodes heartbeats by hand, 4 times faster than protobuf, to keep the generator's core free
    (the bytes are protobuf's: fields in number order, as tests/bench/test_ws_load.py checks)."""
    before = framing.HEADER + b"\x0a" + framing.encode_varint(len(agent.uid)) + agent.uid + b"\x10"
    after = b"\x20" + framing.encode_varint(agent.capabilities) if agent.capabilities else b""
    return before, after


def expected_reply(template: pb.ServerToAgent, uid: bytes | None) -> bytes:
    """The framed heartbeat reply for uid (None: the template as it is, the baseline's fixed reply)."""
    if uid is not None:
        reply = pb.ServerToAgent()
        reply.CopyFrom(template)
        reply.instance_uid = uid
        template = reply
    return framing.encode(template.SerializeToString())


def classify(message: bytes, uid: bytes | None) -> tuple[str, str]:
    """What is wrong with a reply that is not the expected one: a CHECK_ERRORS name and a detail."""
    if message[:1] != framing.HEADER:
        return "bad_header", f"starts with {message[:10].hex()}"
    try:
        reply = pb.ServerToAgent.FromString(message[1:])
    except DecodeError:
        return "bad_body", f"not a ServerToAgent: {message[:60].hex()}"
    problem = reply_problem(reply, uid)
    if problem is not None:
        return problem
    return "unexpected", f"not the plain heartbeat reply: {message[:60].hex()}"


def check_framed(message: bytes, agent: SimAgent) -> pb.ServerToAgent:
    """A framed reply decoded and checked in full (header 0, then a correct ServerToAgent)."""
    try:
        body = framing.decode(message)
    except framing.FramingError as exc:
        raise ReplyError(f"reply is not an OpAMP WebSocket message: {exc}") from None
    return check_message(body, agent)


async def _bounded(items: Sequence[T], concurrency: int, work: Callable[[T], Awaitable[None]]) -> None:
    """`work` for every item, at most `concurrency` at a time."""
    queue = list(reversed(items))

    async def worker() -> None:
        while queue:
            await work(queue.pop())

    await asyncio.gather(*(worker() for _ in range(max(1, min(concurrency, len(items))))))


def fixed_check(expected: bytes) -> Check:
    """The check for a target that always answers `expected` (the baseline)."""

    def check(reply: bytes, agent: SimAgent) -> None:
        if reply != expected:
            why, detail = classify(reply, None)
            raise ReplyError(f"agent {agent.index}: {why}: {detail}")

    return check


def gateway_check(reply: bytes, agent: SimAgent) -> None:
    check_framed(reply, agent)


async def connect_fleet(
    host: str, port: int, path: str, agents: Sequence[SimAgent], concurrency: int, check: Check
) -> list[WsAgent]:
    """Open one socket per agent and send its first full report (sequence_num 0) on it, `concurrency`
    handshakes at a time; every reply must pass `check`. On failure the opened sockets are closed."""
    opened: list[WsAgent] = []

    async def one(agent: SimAgent) -> None:
        sock = await connect(host, port, path)
        opened.append(WsAgent(agent, sock))
        check(
            await sock.request(framing.encode(agent.full_report().SerializeToString()), REPLY_TIMEOUT), agent
        )

    try:
        await _bounded(agents, concurrency, one)
    except (WsError, ReplyError):
        await close_fleet(opened)
        raise
    return opened


async def close_fleet(fleet: Sequence[WsAgent], concurrency: int = 500) -> None:
    async def one(item: WsAgent) -> None:
        await item.sock.close()

    await _bounded(fleet, concurrency, one)


async def sample_heartbeats(fleet: Sequence[WsAgent]) -> list[bytes]:
    """One heartbeat from each agent, every reply decoded and checked in full; returns the replies."""
    replies = []
    for item in fleet:
        reply = await item.sock.request(heartbeat_message(item.agent), REPLY_TIMEOUT)
        decoded = check_framed(reply, item.agent)
        if decoded.HasField("agent_identification") or decoded.HasField("remote_config"):
            raise ReplyError(f"a heartbeat got more than a plain reply: {decoded}")
        replies.append(reply)
    return replies


@dataclass
class WsPhaseResult:
    """One timed phase: `replies` counted in the window, `sent` in all (the window plus the drain)."""

    replies: int
    sent: int
    seconds: float
    # Round-trip time from write to complete reply, by percentile ("50", "90", "99", "99.9", "max").
    latency_ms: dict[str, float]
    checks: dict[str, int]
    # A message and what the check made of it, for the first few failures.
    examples: list[str] = field(default_factory=list)
    # CPU seconds over the phase's wall time (`wall`, the window plus the drain), filled in by the caller.
    server_cpu: float = 0.0
    core_busy: float = 0.0
    generator_cpu: float = 0.0
    wall: float = 0.0

    @property
    def rps(self) -> float:
        return self.replies / self.seconds if self.seconds > 0 else 0.0

    @property
    def errors(self) -> int:
        return sum(self.checks.get(name, 0) for name in CHECK_ERRORS)

    @property
    def server_load(self) -> float:
        """Share of one core the server used: near 100% when it is the bottleneck."""
        return self.server_cpu / self.wall if self.wall > 0 else 0.0

    @property
    def core_load(self) -> float:
        """How busy the server's core was in all (server, kernel, any other process)."""
        return self.core_busy / self.wall if self.wall > 0 else 0.0

    @property
    def generator_load(self) -> float:
        """Share of its core the load generator (this process) used: must stay well below 100%."""
        return self.generator_cpu / self.wall if self.wall > 0 else 0.0

    def percentile_ms(self, p: str) -> float:
        return self.latency_ms.get(p, 0.0)


def _percentiles(seconds: list[float]) -> dict[str, float]:
    if not seconds:
        return {}
    ordered = sorted(seconds)
    last = len(ordered) - 1
    out = {
        p: 1000.0 * ordered[min(last, int(float(p) / 100 * len(ordered)))] for p in ("50", "90", "99", "99.9")
    }
    out["max"] = 1000.0 * ordered[last]
    return out


class _Loop:
    """The state of one running closed loop, shared by its sockets' callbacks."""

    def __init__(self, track_uid: bool) -> None:
        self.track_uid = track_uid
        self.running = True
        self.replies = 0
        self.sent = 0
        self.outstanding = 0
        self.latencies: list[float] = []
        self.checks: Counter[str] = Counter()
        self.examples: list[str] = []
        self.agents: dict[AgentSocket, SimAgent] = {}
        self.parts: dict[AgentSocket, tuple[bytes, bytes]] = {}
        self.drained = asyncio.Event()

    def on_reply(self, sock: AgentSocket, message: bytes) -> None:
        now = time.perf_counter()
        if message == sock.expected:
            self.checks["ok"] += 1
        else:
            agent = self.agents[sock]
            why, detail = classify(message, agent.uid if self.track_uid else None)
            self.checks[why] += 1
            if len(self.examples) < 5:
                self.examples.append(f"agent {agent.index} seq {agent.seq}: {why}: {detail}")
        if self.running:
            self.replies += 1
            self.latencies.append(now - sock.sent_at)
            self.send(sock)
        else:
            self.outstanding -= 1
            if not self.outstanding:
                self.drained.set()

    def add(self, item: WsAgent) -> None:
        self.agents[item.sock] = item.agent
        self.parts[item.sock] = heartbeat_parts(item.agent)
        item.sock.on_message = self.on_reply

    def send(self, sock: AgentSocket) -> None:
        agent = self.agents[sock]
        agent.seq += 1
        before, after = self.parts[sock]
        self.sent += 1
        sock.sent_at = time.perf_counter()
        sock.send(before + framing.encode_varint(agent.seq) + after)

    def stop(self) -> None:
        self.running = False
        # Every open socket has exactly one heartbeat in flight; a closed one will never answer.
        self.outstanding = sum(1 for sock in self.agents if sock.open)
        if not self.outstanding:
            self.drained.set()


async def closed_loop(fleet: Sequence[WsAgent], seconds: float, track_uid: bool) -> WsPhaseResult:
    """Heartbeats on every socket for `seconds`; every reply checked against `sock.expected`."""
    state = _Loop(track_uid)
    open_fleet = [item for item in fleet if item.sock.open]
    for item in open_fleet:
        state.add(item)
    started = time.perf_counter()
    for item in open_fleet:
        state.send(item.sock)
    await asyncio.sleep(seconds)
    state.stop()
    elapsed = time.perf_counter() - started
    try:
        await asyncio.wait_for(state.drained.wait(), DRAIN_TIMEOUT)
    except TimeoutError:
        # One socket without a reply: its heartbeat was lost (or the socket is), which is an error.
        state.checks["unanswered"] += state.outstanding
    for item in fleet:
        item.sock.on_message = None
        if item.sock.close_code not in (None, CLOSE_NORMAL):
            state.checks["closed"] += 1
            if len(state.examples) < 5:
                state.examples.append(
                    f"agent {item.agent.index}: socket closed by the server: "
                    f"{item.sock.close_code} {item.sock.close_reason}"
                )
        if item.sock.text_messages:
            state.checks["text"] += item.sock.text_messages
    return WsPhaseResult(
        replies=state.replies,
        sent=state.sent,
        seconds=elapsed,
        latency_ms=_percentiles(state.latencies),
        checks=dict(state.checks),
        examples=state.examples,
    )
