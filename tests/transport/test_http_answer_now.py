"""`OpampHttp.answer_read` decides a message at once when nothing must be read or committed first
(nearly every heartbeat), and hands everything else to the coroutine path, which behaves as before:
which path a request takes, and that both give the same answers, counts and stored records."""

from __future__ import annotations

from collections.abc import AsyncIterator, Coroutine
from pathlib import Path
from typing import Any

import pytest

from gateway.opamp import capabilities as caps
from gateway.proto import opamp_pb2 as pb
from gateway.transport.http import OpampHttp
from gateway.transport.http_wire import Reply, RequestHeaders
from tests.support.servers import Node, agent_keys_file, run_node
from tests.support.waiting import uid
from tests.support.ws import CAPS, heartbeat, report

pytestmark = pytest.mark.anyio

KEY_A = "agent-key-aaaaaaaaaaaa"
KEY_B = "agent-key-bbbbbbbbbbbb"
AGENT = uid(1)


def _headers(key: str | None = KEY_A, content_type: str = "application/x-protobuf") -> RequestHeaders:
    return RequestHeaders(content_type=content_type, authorization=None if key is None else f"Bearer {key}")


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    keys = agent_keys_file(tmp_path, {"team-a": KEY_A, "team-b": KEY_B})
    async with run_node(tmp_path, agent_keys_file=keys) as running:
        yield running


@pytest.fixture
def http(node: Node) -> OpampHttp:
    s = node.services
    return OpampHttp(s, s.auth.agents, s.metrics.auth_failed("opamp"))


async def _answer(answer: Reply | Coroutine[Any, Any, Reply]) -> tuple[Reply, bool]:
    """The reply, and whether it was given at once."""
    if isinstance(answer, Reply):
        return answer, True
    return await answer, False


def _sample(node: Node, name: str, **labels: str) -> float:
    return node.services.metrics.registry.get_sample_value(name, labels) or 0.0


async def _enrolled(http: OpampHttp, uid: bytes = AGENT, key: str = KEY_A) -> None:
    """The agent enrolled and polled once: its record is the heartbeat the node holds (alone)."""
    reply, now = await _answer(http.answer_read(_headers(key), report(uid).SerializeToString()))
    # An agent the node has never seen is read from the store first: never at once.
    assert (reply.status, now) == (200, False)
    # Committed (enrollment is durable), so the next poll reads the store's copy: not at once either.
    reply, now = await _answer(http.answer_read(_headers(key), heartbeat(uid, 1).SerializeToString()))
    assert (reply.status, now) == (200, False)


async def test_a_heartbeat_of_an_agent_the_node_holds_is_answered_at_once(
    node: Node, http: OpampHttp
) -> None:
    await _enrolled(http)
    before = _sample(node, "opamp_gateway_messages_total", transport="http", result="200")
    for seq in range(2, 5):
        reply, now = await _answer(http.answer_read(_headers(), heartbeat(AGENT, seq).SerializeToString()))
        assert (reply.status, now) == (200, True)
        answer = pb.ServerToAgent.FromString(reply.body)
        assert answer.instance_uid == AGENT and answer.flags == 0
    assert _sample(node, "opamp_gateway_messages_total", transport="http", result="200") == before + 3
    assert _sample(node, "opamp_gateway_agent_events_total", event="heartbeat") == 4
    assert node.services.writer.peek(AGENT).sequence_num == 4  # type: ignore[union-attr]
    assert node.services.limits.inflight == 0


async def test_a_sequence_gap_is_decided_at_once_and_asks_for_full_state(node: Node, http: OpampHttp) -> None:
    await _enrolled(http)
    reply, now = await _answer(http.answer_read(_headers(), heartbeat(AGENT, 7).SerializeToString()))
    assert now and pb.ServerToAgent.FromString(reply.body).flags & caps.REPORT_FULL_STATE


async def test_a_report_that_must_be_committed_is_committed_before_its_reply(
    node: Node, http: OpampHttp
) -> None:
    await _enrolled(http)
    msg = heartbeat(AGENT, 2)
    msg.remote_config_status.status = pb.RemoteConfigStatuses_APPLIED
    msg.remote_config_status.last_remote_config_hash = b"h" * 32
    answer = http.answer_read(_headers(), msg.SerializeToString())
    # Decided at once, then the commit is awaited (design principle 4).
    assert not isinstance(answer, Reply)
    reply, _ = await _answer(answer)
    assert reply.status == 200
    stored = await node.services.store.get(AGENT)
    assert stored is not None and stored.remote_config_status is not None
    assert _sample(node, "opamp_gateway_remote_config_reports_total", status="APPLIED") == 1
    assert node.services.limits.inflight == 0


@pytest.mark.parametrize(
    ("headers", "body", "status"),
    [
        (_headers(key=None), b"", 401),
        (_headers(key="not-a-key"), b"", 401),
        (_headers(content_type="application/json"), b"", 415),
        (_headers(), b"\xff\xff", 400),
    ],
    ids=["no-key", "wrong-key", "content-type", "undecodable"],
)
async def test_refusals_take_the_whole_way(
    node: Node, http: OpampHttp, headers: RequestHeaders, body: bytes, status: int
) -> None:
    await _enrolled(http)
    reply, now = await _answer(http.answer_read(headers, body or heartbeat(AGENT, 2).SerializeToString()))
    assert (reply.status, now) == (status, False)


async def test_another_keys_heartbeat_is_refused_at_once_and_counted_once(
    node: Node, http: OpampHttp
) -> None:
    await _enrolled(http)
    reply, now = await _answer(http.answer_read(_headers(KEY_B), heartbeat(AGENT, 2).SerializeToString()))
    assert (reply.status, now) == (401, True)
    assert _sample(node, "opamp_gateway_agent_key_mismatches_total", transport="http") == 1
    # Nothing was stored for the other key's client.
    assert node.services.writer.peek(AGENT).sequence_num == 1  # type: ignore[union-attr]


async def test_a_full_node_sheds_through_the_whole_way(node: Node, http: OpampHttp) -> None:
    await _enrolled(http)
    limits = node.services.limits
    taken = 0
    while limits.begin_message():
        taken += 1
    try:
        reply, now = await _answer(http.answer_read(_headers(), heartbeat(AGENT, 2).SerializeToString()))
    finally:
        for _ in range(taken):
            limits.end_message()
    assert (reply.status, now) == (503, False)
    assert _sample(node, "opamp_gateway_shed_requests_total", reason="max_inflight") == 1


async def test_a_stale_config_cache_is_refreshed_on_the_whole_way(
    node: Node, http: OpampHttp, monkeypatch: pytest.MonkeyPatch
) -> None:
    await _enrolled(http)
    monkeypatch.setattr(node.services.config_cache, "stale", lambda: True)
    answer = http.answer_read(_headers(), heartbeat(AGENT, 2, CAPS).SerializeToString())
    assert not isinstance(answer, Reply)
    reply, _ = await _answer(answer)
    assert reply.status == 200
