"""Server pings from the node's keepalive sweep (gateway/transport/keepalive.py): a socket whose peer
talks is never pinged, a silent one is pinged and stays while it answers, and a peer that stops
answering is dropped with 1011 (tests/transport/test_websocket.py checks the timing of that)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bench.ws_client import connect
from gateway.opamp import framing
from gateway.server import build_servers
from gateway.transport.keepalive import Keepalive
from gateway.transport.ws_protocol import WebSocketProtocol
from tests.support.memory_store import MemoryStore
from tests.support.servers import run_node
from tests.support.waiting import uid
from tests.support.ws import heartbeat, report

pytestmark = pytest.mark.anyio


def _framed(msg: object) -> bytes:
    return framing.encode(msg.SerializeToString())  # type: ignore[attr-defined]


async def test_only_silent_sockets_are_pinged(tmp_path: Path) -> None:
    async with run_node(tmp_path, store=MemoryStore(), ws_ping_interval=0.3, ws_ping_timeout=0.3) as node:
        host, port = "127.0.0.1", int(node.opamp_url.rsplit(":", 1)[1])
        talker = await connect(host, port, "/v1/opamp")
        silent = await connect(host, port, "/v1/opamp")
        try:
            await talker.request(_framed(report(uid(1))), 5)
            await silent.request(_framed(report(uid(2))), 5)
            for seq in range(1, 13):
                await talker.request(_framed(heartbeat(uid(1), seq)), 5)
                await asyncio.sleep(0.1)
            assert talker.pings == 0
            # Silent for 1.2 s with pings due after 0.3 s: pinged, answered, still open.
            assert silent.pings >= 2
            assert silent.open and talker.open
        finally:
            await talker.close()
            await silent.close()


async def test_the_opamp_port_uses_its_own_protocol_and_the_sweep(tmp_path: Path) -> None:
    async with run_node(tmp_path, store=MemoryStore()) as node:
        opamp, admin = (server.config for server in build_servers(node.services))
        assert isinstance(opamp.ws, type) and issubclass(opamp.ws, WebSocketProtocol)
        assert opamp.ws.sockets.__class__ is Keepalive
        # The admin port has no WebSocket route: uvicorn refuses upgrades there.
        assert admin.ws == "none"


def test_a_sweep_with_no_sockets_left_stops_its_timer() -> None:
    keepalive = Keepalive(20.0, 20.0)
    loop = asyncio.new_event_loop()
    try:
        keepalive.sweep(loop)
        assert keepalive.sockets == 0 and keepalive._timer is None
    finally:
        loop.close()
