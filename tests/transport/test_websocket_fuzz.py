"""Hostile WebSocket input against a live node (hypothesis): every message gets a ServerToAgent or a
close with a documented code; never 1011 (internal error), never a hang, and the node keeps serving."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from gateway.proto import opamp_pb2 as pb
from tests.support.messages import agent_to_server
from tests.support.servers import Node, node_in_thread
from tests.support.ws import ws_url

LIMIT = 2048
# The close codes the transport documents for bad input (gateway/transport/websocket.py).
DOCUMENTED = {1003: "text", 1009: "too big"}
_SETTINGS = settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    path: Path = tmp_path_factory.mktemp("ws-fuzz")
    with node_in_thread(path, max_message_bytes=LIMIT) as running:
        yield running


def _outcome(ws: ClientConnection) -> pb.ServerToAgent | int:
    """The reply to the last message, or the close code the gateway sent instead."""
    try:
        data = ws.recv(timeout=5)
    except ConnectionClosed as exc:
        assert exc.rcvd is not None, f"closed without a close frame: {exc}"
        return exc.rcvd.code
    assert isinstance(data, bytes) and data[:1] == b"\x00", data[:8]
    return pb.ServerToAgent.FromString(data[1:])


def _serves(node: Node) -> None:
    assert httpx2.get(f"{node.opamp_url}/healthz", timeout=5).status_code == 200


message = st.one_of(
    st.binary(max_size=64),
    st.binary(min_size=LIMIT - 8, max_size=LIMIT + 16),
    st.builds(lambda m: b"\x00" + m.SerializeToString(), agent_to_server()),
    st.builds(
        lambda m, junk: b"\x00" + m.SerializeToString() + junk, agent_to_server(), st.binary(max_size=8)
    ),
    st.text(max_size=32),
)


@_SETTINGS
@given(messages=st.lists(message, min_size=1, max_size=4))
def test_hostile_messages_get_a_reply_or_a_documented_close(node: Node, messages: list[bytes | str]) -> None:
    with connect(ws_url(node.opamp_url), max_size=None, compression=None, open_timeout=5) as ws:
        for data in messages:
            try:
                ws.send(data)
            except ConnectionClosed:
                break
            outcome = _outcome(ws)
            if isinstance(outcome, int):
                assert outcome in DOCUMENTED, f"closed with {outcome} after {data!r:.80}"
                break
            assert outcome.HasField("error_response") or outcome.capabilities
    _serves(node)
