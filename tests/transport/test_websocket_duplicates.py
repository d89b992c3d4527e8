"""Duplicate instance_uids over WebSocket, with raw-frame agents: a clone (the holder is alive)
gets a uid of its own, a genuine reconnect (the holder is dead or silent) takes the uid over, and
takeovers of one uid are damped (gateway/node/duplicates.py)."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx2
import pytest

from gateway.node import duplicates
from gateway.proto import opamp_pb2 as pb
from tests.support.memory_store import MemoryStore
from tests.support.servers import Node, run_node
from tests.support.waiting import eventually, uid
from tests.support.ws import heartbeat, report
from tests.support.ws_raw import RawAgent

pytestmark = pytest.mark.anyio


@pytest.fixture
async def node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Node]:
    # Every holder is probed (nothing counts as heard from "recently"), and a probe is short.
    monkeypatch.setattr(duplicates, "RECENT_SECONDS", 0.0)
    monkeypatch.setattr(duplicates, "PROBE_SECONDS", 0.3)
    async with run_node(tmp_path, store=MemoryStore()) as running:
        yield running


class _Agents:
    """Opens raw agents on the node and closes them all at the end of the test."""

    def __init__(self, node: Node) -> None:
        self._node = node
        self.opened: list[RawAgent] = []

    async def open(self) -> RawAgent:
        agent = await RawAgent.open(self._node.opamp_url)
        self.opened.append(agent)
        return agent


@pytest.fixture
def agents(node: Node) -> Iterator[_Agents]:
    opened = _Agents(node)
    yield opened
    for agent in opened.opened:
        agent.close()


async def _metric(node: Node, line: str) -> bool:
    async with httpx2.AsyncClient(base_url=node.admin_url) as admin:
        return line in (await admin.get("/metrics")).text


async def test_two_live_agents_with_one_uid_end_with_two_uids(node: Node, agents: _Agents) -> None:
    started = time.monotonic()
    first, second = await agents.open(), await agents.open()
    assert (await first.exchange(report(uid(1)))).instance_uid == uid(1)
    # While `second` waits for its reply, `first` answers the probe (it reads its socket).
    second.send(report(uid(1), 5, name="clone"))
    probe = await first.read_frame_after_ping()
    reply = await second.recv()
    new_uid = reply.agent_identification.new_instance_uid
    assert probe and len(new_uid) == 16 and new_uid != uid(1)
    assert not reply.HasField("error_response")
    # Both keep their sockets, each with its own uid; the first kept its record.
    assert (await first.exchange(heartbeat(uid(1), 1))).instance_uid == uid(1)
    assert (await second.exchange(heartbeat(new_uid, 6))).instance_uid == new_uid
    registry = node.services.registry
    assert registry.get(uid(1)) is not None and registry.get(new_uid) is not None
    assert registry.get(uid(1)) is not registry.get(new_uid)
    assert time.monotonic() - started < 5
    assert await _metric(node, 'opamp_gateway_duplicates_resolved_total{transport="websocket"} 1.0')
    assert await _metric(node, 'opamp_gateway_websocket_closes_total{code="4000"}') is False
    # The relation is kept on the clone's record, and shown in the admin API.
    async with httpx2.AsyncClient(base_url=node.admin_url) as admin:
        clone = (await admin.get(f"/api/v1/agents/{uuid.UUID(bytes=new_uid)}")).json()
        original = (await admin.get(f"/api/v1/agents/{uuid.UUID(bytes=uid(1))}")).json()
    assert clone["duplicate_of"] == str(uuid.UUID(bytes=uid(1))) and original["duplicate_of"] is None


async def test_a_clone_that_keeps_the_old_uid_is_still_served_under_its_new_one(
    node: Node, agents: _Agents
) -> None:
    first, second = await agents.open(), await agents.open()
    await first.exchange(report(uid(2)))
    second.send(report(uid(2), 1))
    assert await first.read_frame_after_ping()
    new_uid = (await second.recv()).agent_identification.new_instance_uid
    # It has not adopted the new uid yet: told again, and the first agent is untouched.
    again = await second.exchange(heartbeat(uid(2), 2))
    assert again.agent_identification.new_instance_uid == new_uid
    assert (await first.exchange(heartbeat(uid(2), 1))).instance_uid == uid(2)


async def test_an_honest_reconnect_from_a_silent_socket_keeps_its_uid(node: Node, agents: _Agents) -> None:
    old = await agents.open()
    await old.exchange(report(uid(3)))
    # `old` reads nothing more: it answers no ping, as a half-dead connection would.
    new = await agents.open()
    reply = await new.exchange(report(uid(3), 1))
    assert reply.instance_uid == uid(3) and not reply.HasField("agent_identification")
    assert await old.closed_with() == 4000
    assert (await new.exchange(heartbeat(uid(3), 2))).instance_uid == uid(3)


async def test_a_reconnect_after_the_tcp_connection_died_keeps_its_uid(node: Node, agents: _Agents) -> None:
    old = await agents.open()
    await old.exchange(report(uid(4)))
    old.drop()
    await eventually(lambda: node.services.registry.get(uid(4)) is None)
    new = await agents.open()
    reply = await new.exchange(report(uid(4), 1))
    assert reply.instance_uid == uid(4) and not reply.HasField("agent_identification")


async def test_a_reconnect_at_once_loop_is_damped(node: Node, agents: _Agents) -> None:
    """A client that goes silent and reconnects at once, again and again (each socket takes the uid
    over from the silent one before it), is refused after a few takeovers and held, not looped."""
    connections = 0
    refused: pb.ServerToAgent | None = None
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline and refused is None:
        agent = await agents.open()
        connections += 1
        reply = await agent.exchange(report(uid(5), connections))
        if reply.HasField("error_response"):
            refused = reply
    assert refused is not None and connections == duplicates.MAX_TAKEOVERS + 2
    assert refused.error_response.type == pb.ServerErrorResponseType_Unavailable
    assert refused.error_response.retry_info.retry_after_nanoseconds >= 1_000_000_000
    assert await _metric(node, 'opamp_gateway_shed_requests_total{reason="takeover_damped"} 1.0')


async def test_a_refused_newcomer_is_held_for_its_retry_hint_then_closed(node: Node, agents: _Agents) -> None:
    node.services.registry.takeovers = duplicates.Takeovers(limit=1, window=1.0)
    first = await agents.open()
    await first.exchange(report(uid(6)))
    second = await agents.open()
    await second.exchange(report(uid(6), 1))  # the one takeover allowed
    third = await agents.open()
    started = time.monotonic()
    refused = await third.exchange(report(uid(6), 2))
    hint = refused.error_response.retry_info.retry_after_nanoseconds / 1e9
    assert refused.error_response.type == pb.ServerErrorResponseType_Unavailable and hint >= 1.0
    assert await third.closed_with() == 1013
    assert time.monotonic() - started >= hint - 0.1
