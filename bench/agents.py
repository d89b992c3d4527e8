"""The untimed agent traffic of a run, over plain keep-alive connections: enrollment, resync after a
phase, and the reply checks that make sure the timed phases measured real heartbeats."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from bench.client import PROTOBUF, Connection, HttpError
from gateway.proto import opamp_pb2 as pb
from harness.agent import SimAgent, reply_problem

logger = logging.getLogger("bench.agents")

REPORT_FULL_STATE = pb.ServerToAgentFlags_ReportFullState


class ReplyError(Exception):
    """The gateway's reply was not what a correct heartbeat or enrollment gets."""


@dataclass(frozen=True)
class EnrollResult:
    agents: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.agents / self.seconds if self.seconds > 0 else 0.0


def check_reply(status: int, content_type: str, body: bytes, agent: SimAgent) -> pb.ServerToAgent:
    """A valid ServerToAgent for this agent: HTTP 200, protobuf, no error, no ReportFullState."""
    if status != 200:
        raise ReplyError(f"HTTP {status}: {body[:200]!r}")
    if content_type.split(";")[0].strip() != PROTOBUF:
        raise ReplyError(f"Content-Type {content_type!r}, expected {PROTOBUF}")
    return check_message(body, agent)


def check_message(body: bytes, agent: SimAgent) -> pb.ServerToAgent:
    """A ServerToAgent for this agent, with no error and no ReportFullState (any transport)."""
    try:
        reply = pb.ServerToAgent.FromString(body)
    except DecodeError as exc:
        raise ReplyError(f"reply is not a ServerToAgent: {exc}") from None
    problem = reply_problem(reply, agent.uid)
    if problem is not None:
        raise ReplyError(f"agent {agent.index} at seq {agent.seq}: {problem[0]}: {problem[1]}")
    return reply


async def _send(conn: Connection, path: str, msg: pb.AgentToServer) -> tuple[int, str, bytes]:
    reply = await conn.post(path, msg.SerializeToString())
    return reply.status, reply.headers.get("content-type", ""), reply.body


async def _each(
    host: str,
    port: int,
    agents: Sequence[SimAgent],
    connections: int,
    work: Callable[[Connection, SimAgent], Awaitable[None]],
) -> None:
    """Run `work` for every agent over `connections` keep-alive connections."""
    queue = list(reversed(agents))

    async def worker() -> None:
        async with Connection(host, port) as conn:
            while queue:
                await work(conn, queue.pop())

    await asyncio.gather(*(worker() for _ in range(max(1, min(connections, len(agents))))))


def enroll(host: str, port: int, path: str, agents: Sequence[SimAgent], connections: int) -> EnrollResult:
    """Every agent sends its first full report (sequence_num 0); each must come back enrolled."""

    async def one(conn: Connection, agent: SimAgent) -> None:
        check_reply(*await _send(conn, path, agent.full_report()), agent)

    started = time.perf_counter()
    asyncio.run(_each(host, port, agents, connections, one))
    return EnrollResult(len(agents), time.perf_counter() - started)


def _asks_full_state(status: int, body: bytes) -> bool:
    try:
        return status == 200 and bool(pb.ServerToAgent.FromString(body).flags & REPORT_FULL_STATE)
    except DecodeError:
        return False


def resync(host: str, port: int, path: str, agents: Sequence[SimAgent], connections: int) -> int:
    """Agents whose last heartbeat got no reply when wrk stopped: the gateway may not have seen it.
    Each sends its next heartbeat; where that shows a gap it sends a full report, as a real agent
    does. Returns how many needed the full report."""
    repaired = 0

    async def one(conn: Connection, agent: SimAgent) -> None:
        nonlocal repaired
        status, content_type, body = await _send(conn, path, agent.heartbeat())
        try:
            check_reply(status, content_type, body, agent)
            return
        except ReplyError:
            if not _asks_full_state(status, body):
                raise
        repaired += 1
        check_reply(*await _send(conn, path, agent.full_report()), agent)

    asyncio.run(_each(host, port, agents, connections, one))
    return repaired


def sample_heartbeats(host: str, port: int, path: str, agents: Sequence[SimAgent]) -> list[bytes]:
    """One correct heartbeat from each agent, every reply checked in full; returns the reply bodies."""
    bodies: list[bytes] = []

    async def one(conn: Connection, agent: SimAgent) -> None:
        status, content_type, body = await _send(conn, path, agent.heartbeat())
        reply = check_reply(status, content_type, body, agent)
        if reply.HasField("agent_identification") or reply.HasField("remote_config"):
            raise ReplyError(f"a heartbeat got more than a plain reply: {reply}")
        bodies.append(body)

    try:
        asyncio.run(_each(host, port, agents, 1, one))
    except HttpError as exc:
        raise ReplyError(str(exc)) from None
    return bodies
