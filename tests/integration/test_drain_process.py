"""SIGTERM drains a real gateway process before it exits."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
import uuid

import pytest
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import InvalidStatus

from gateway.proto import opamp_pb2 as pb
from tests.integration.conftest import GatewayFactory
from tests.support.ws import agent_socket, closed_with, exchange, recv, report

pytestmark = pytest.mark.anyio

SOCKETS = 30
DRAIN_SECONDS = 1.5


async def _last_words(ws: ClientConnection) -> tuple[pb.ServerToAgent, int, float]:
    last = await recv(ws, timeout=DRAIN_SECONDS + 5)
    code, _ = await closed_with(ws, timeout=5)
    return last, code, time.monotonic()


async def test_sigterm_drains_then_exits(gateways: GatewayFactory) -> None:
    gateway = gateways("node-d", drain_seconds=DRAIN_SECONDS)
    async with contextlib.AsyncExitStack() as stack:
        sockets = [
            await stack.enter_async_context(agent_socket(gateway.opamp_base_url)) for _ in range(SOCKETS)
        ]
        for n, ws in enumerate(sockets):
            await exchange(ws, report(uuid.UUID(int=n + 1).bytes))
        waiting = [asyncio.create_task(_last_words(ws)) for ws in sockets]
        started = time.monotonic()
        gateway.signal(signal.SIGTERM)
        # New upgrades are refused while the old sockets drain.
        refused = None
        while refused is None and time.monotonic() - started < DRAIN_SECONDS:
            try:
                async with agent_socket(gateway.opamp_base_url):
                    await asyncio.sleep(0.02)
            except InvalidStatus as exc:
                refused = exc.response.status_code
        assert refused == 503
        results = await asyncio.gather(*waiting)
    for last, code, _ in results:
        assert last.error_response.type == pb.ServerErrorResponseType_Unavailable
        assert last.error_response.retry_info.retry_after_nanoseconds >= 1_000_000_000
        assert code == 1001  # not uvicorn's all-at-once 1012
    closes = sorted(at for _, _, at in results)
    assert closes[-1] - closes[0] > DRAIN_SECONDS * 0.7
    assert await asyncio.to_thread(gateway.wait, 15) == 0
    log = gateway.log_text(20_000)
    assert "draining WebSockets" in log and "drained " in log
