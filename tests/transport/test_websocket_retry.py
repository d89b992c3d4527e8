"""Retry hints a client that ignores retry_info (opamp-go) still obeys: when an open socket is sent
away, the reconnect it makes at once is refused before the upgrade with 503 + Retry-After."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx2
import pytest

from gateway.proto import opamp_pb2 as pb
from tests.support.memory_store import MemoryStore
from tests.support.servers import Node, run_node
from tests.support.waiting import uid
from tests.support.ws import report
from tests.support.ws_raw import OP_BINARY, OP_CLOSE, RawAgent

pytestmark = pytest.mark.anyio


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    async with run_node(tmp_path, store=MemoryStore()) as running:
        yield running


async def test_a_client_reconnecting_at_once_during_a_drain_gets_503_with_retry_after(node: Node) -> None:
    agent = await RawAgent.open(node.opamp_url)
    again: RawAgent | None = None
    try:
        await agent.exchange(report(uid(1)))
        async with httpx2.AsyncClient(base_url=node.admin_url) as admin:
            assert (await admin.post("/api/v1/drain")).status_code == 202
        opcode, payload = await agent.read_frame()
        assert opcode == OP_BINARY
        goodbye = pb.ServerToAgent.FromString(payload[1:])
        assert goodbye.error_response.type == pb.ServerErrorResponseType_Unavailable
        assert (await agent.read_frame())[0] == OP_CLOSE
        # It ignores retry_info and reconnects at once: refused before the upgrade, with a hint it obeys.
        again = await RawAgent.open(node.opamp_url)
        assert again.status == 503 and int(again.headers["retry-after"]) >= 1
    finally:
        agent.close()
        if again is not None:
            again.close()


async def test_a_client_reconnecting_at_once_over_max_connections_gets_503_with_retry_after(
    tmp_path: Path,
) -> None:
    async with run_node(tmp_path, store=MemoryStore(), max_connections=1) as node:
        held = await RawAgent.open(node.opamp_url)
        refused = await RawAgent.open(node.opamp_url)
        try:
            assert held.status == 101
            assert refused.status == 503 and int(refused.headers["retry-after"]) >= 1
        finally:
            held.close()
            refused.close()
