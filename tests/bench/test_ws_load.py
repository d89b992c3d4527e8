"""The WebSocket load generator's parts: its client against the real baseline process, the closed
loop's reply checks, and how a wrong reply is named."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bench import targets
from bench.agents import ReplyError
from bench.baseline import OPAMP_PATH, heartbeat_reply
from bench.fleet import make_fleet
from bench.targets import HOST, Cores, Target
from bench.ws_client import WsError, connect
from bench.ws_load import (
    classify,
    close_fleet,
    closed_loop,
    connect_fleet,
    expected_reply,
    fixed_check,
    heartbeat_parts,
)
from gateway.opamp import framing
from gateway.proto import opamp_pb2 as pb

pytestmark = pytest.mark.anyio

UID = bytes(range(16))
OTHER_UID = bytes(range(1, 17))


def _framed(reply: pb.ServerToAgent) -> bytes:
    return framing.encode(reply.SerializeToString())


def _start_baseline(tmp_path: Path, reply: bytes) -> Iterator[Target]:
    with targets.baseline(reply, "uvloop", Cores(None, None), tmp_path) as target:
        yield target


@pytest.fixture
def baseline(tmp_path: Path) -> Iterator[Target]:
    yield from _start_baseline(tmp_path, heartbeat_reply())


@pytest.fixture
def erring_baseline(tmp_path: Path) -> Iterator[Target]:
    """A baseline whose fixed reply is an error_response: every heartbeat gets it."""
    reply = pb.ServerToAgent(instance_uid=UID)
    reply.error_response.error_message = "no"
    yield from _start_baseline(tmp_path, reply.SerializeToString())


def test_classify_names_what_is_wrong() -> None:
    error = pb.ServerToAgent(instance_uid=UID)
    error.error_response.error_message = "store down"
    full_state = pb.ServerToAgent(instance_uid=UID, flags=pb.ServerToAgentFlags_ReportFullState)
    assert classify(_framed(error), UID) == ("error_response", "store down")
    assert classify(_framed(full_state), UID)[0] == "full_state"
    assert classify(_framed(pb.ServerToAgent(instance_uid=OTHER_UID)), UID)[0] == "wrong_uid"
    assert classify(_framed(pb.ServerToAgent(instance_uid=OTHER_UID)), None)[0] == "unexpected"
    assert classify(b"\x01" + error.SerializeToString(), UID)[0] == "bad_header"
    assert classify(b"\x00\xff\xff", UID)[0] == "bad_body"


def test_expected_reply_swaps_only_the_uid() -> None:
    template = pb.ServerToAgent(instance_uid=UID, capabilities=7)
    assert expected_reply(template, OTHER_UID) == _framed(
        pb.ServerToAgent(instance_uid=OTHER_UID, capabilities=7)
    )
    assert expected_reply(template, None) == _framed(template)
    assert template.instance_uid == UID


@pytest.mark.parametrize("capabilities", [0, 1, 0x3F, 1 << 40])
def test_hand_encoded_heartbeats_are_protobufs_bytes(capabilities: int) -> None:
    agent = make_fleet(1)[0]
    agent.capabilities = capabilities
    before, after = heartbeat_parts(agent)
    for seq in (1, 127, 128, 300, 1 << 35):
        agent.seq = seq - 1  # the last one sent
        by_hand = before + framing.encode_varint(seq) + after
        assert by_hand == framing.encode(agent.heartbeat().SerializeToString()), seq


async def test_closed_loop_against_the_baseline_checks_every_reply(baseline: Target) -> None:
    reply = framing.encode(heartbeat_reply())
    fleet = await connect_fleet(HOST, baseline.port, OPAMP_PATH, make_fleet(8), 4, fixed_check(reply))
    try:
        for item in fleet:
            item.sock.expected = reply
        result = await closed_loop(fleet, 0.5, track_uid=False)
    finally:
        await close_fleet(fleet)
    assert result.replies > 0
    assert result.errors == 0
    assert result.checks == {"ok": result.sent}
    # One heartbeat in flight per socket when time ran out, each answered before the phase ended.
    assert result.replies <= result.sent <= result.replies + len(fleet)
    # Sequence numbers moved on once per heartbeat sent (the full report was 0).
    assert sum(item.agent.seq for item in fleet) == result.sent
    assert 0 < result.percentile_ms("50") <= result.percentile_ms("99")
    assert all(item.sock.close_code == 1000 for item in fleet)


async def test_closed_loop_counts_error_replies(erring_baseline: Target) -> None:
    error = pb.ServerToAgent(instance_uid=UID)
    error.error_response.error_message = "no"
    fleet = await connect_fleet(
        HOST, erring_baseline.port, OPAMP_PATH, make_fleet(2), 2, fixed_check(_framed(error))
    )
    try:
        for item in fleet:
            item.sock.expected = framing.encode(heartbeat_reply())
        result = await closed_loop(fleet, 0.3, track_uid=True)
    finally:
        await close_fleet(fleet)
    assert result.errors == result.sent > 0
    assert result.checks == {"error_response": result.sent}
    assert result.examples[0].endswith("error_response: no")


async def test_a_refused_handshake_is_an_error(baseline: Target) -> None:
    with pytest.raises(WsError, match="handshake refused"):
        await connect(HOST, baseline.port, "/no-such-path")


async def test_fixed_check_refuses_another_reply(baseline: Target) -> None:
    wrong = _framed(pb.ServerToAgent(instance_uid=OTHER_UID))
    with pytest.raises(ReplyError, match="unexpected"):
        await connect_fleet(HOST, baseline.port, OPAMP_PATH, make_fleet(1), 1, fixed_check(wrong))
