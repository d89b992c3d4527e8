"""Graceful drain of a node holding many WebSockets."""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx2
import pytest
from websockets.asyncio.client import ClientConnection

from gateway.proto import opamp_pb2 as pb
from tests.support.memory_store import MemoryStore
from tests.support.servers import Node, run_node
from tests.support.ws import agent_socket, closed_with, exchange, recv, report

pytestmark = pytest.mark.anyio

SOCKETS = 200
DRAIN_SECONDS = 3.0
RETRY_WINDOW = 10.0


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    async with run_node(tmp_path, store=MemoryStore(), drain_seconds=DRAIN_SECONDS) as running:
        yield running


async def _last_words(ws: ClientConnection, uid: bytes) -> tuple[pb.ServerToAgent, int, float]:
    """The last ServerToAgent before the close, the close code, and when the close came."""
    last = await recv(ws, timeout=DRAIN_SECONDS + 5)
    code, _ = await closed_with(ws, timeout=5)
    return last, code, time.monotonic()


async def test_drain_closes_sockets_gradually_after_a_jittered_unavailable(node: Node) -> None:
    uids = [uuid.UUID(int=n).bytes for n in range(1, SOCKETS + 1)]
    async with contextlib.AsyncExitStack() as stack:
        sockets = [await stack.enter_async_context(agent_socket(node.opamp_url)) for _ in uids]
        await asyncio.gather(*(exchange(ws, report(uid)) for ws, uid in zip(sockets, uids, strict=True)))
        assert node.services.registry.websocket_agents == SOCKETS

        waiting = [asyncio.create_task(_last_words(ws, uid)) for ws, uid in zip(sockets, uids, strict=True)]
        started = time.monotonic()
        async with httpx2.AsyncClient(base_url=node.admin_url) as admin:
            response = await admin.post("/api/v1/drain")
            assert response.status_code == 202 and response.json()["websockets"] == SOCKETS
            assert (await admin.get("/readyz")).status_code == 503
            # Asking twice is harmless.
            assert (await admin.post("/api/v1/drain")).status_code == 202
        results = await asyncio.gather(*waiting)

    retries = []
    for (last, code, _), uid in zip(results, uids, strict=True):
        assert code == 1001
        assert last.instance_uid == uid
        assert last.error_response.type == pb.ServerErrorResponseType_Unavailable
        retries.append(last.error_response.retry_info.retry_after_nanoseconds / 1e9)
    closes = sorted(at - started for _, _, at in results)
    # Spread over the window, not at once: the last closes ~3 s after the first, and no half
    # second sees more than twice its fair share.
    assert closes[-1] - closes[0] > DRAIN_SECONDS * 0.8
    busiest = max(
        sum(1 for t in closes if b / 2 <= t < b / 2 + 0.5) for b in range(int(DRAIN_SECONDS * 2) + 2)
    )
    assert busiest <= 2 * SOCKETS * 0.5 / DRAIN_SECONDS
    # Reconnect delays are jittered across the retry window too.
    assert min(retries) >= 1.0 and max(retries) <= RETRY_WINDOW
    assert statistics.pstdev(retries) > 1.5
    assert node.services.drain.task is not None
    assert await node.services.drain.task == SOCKETS
    assert node.services.registry.socket_count == 0


async def test_drain_with_nothing_to_close_finishes_at_once(node: Node) -> None:
    async with httpx2.AsyncClient(base_url=node.admin_url) as admin:
        started = time.monotonic()
        await admin.post("/api/v1/drain")
        assert node.services.drain.task is not None
        assert await node.services.drain.task == 0
        assert time.monotonic() - started < 1.0
        text = (await admin.get("/metrics")).text
        assert "opamp_gateway_draining 1.0" in text
