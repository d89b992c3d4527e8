"""A minimal OpAMP WebSocket agent for tests, on the `websockets` client library."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from gateway.opamp import capabilities as caps
from gateway.proto import anyvalue_pb2 as av, opamp_pb2 as pb

CAPS = caps.REPORTS_STATUS | caps.REPORTS_HEALTH | caps.ACCEPTS_RESTART_COMMAND


def ws_url(opamp_url: str) -> str:
    return opamp_url.replace("http://", "ws://", 1) + "/v1/opamp"


@contextlib.asynccontextmanager
async def agent_socket(opamp_url: str, **kwargs: Any) -> AsyncIterator[ClientConnection]:
    async with connect(ws_url(opamp_url), max_size=None, compression=None, **kwargs) as ws:
        yield ws


def report(
    uid: bytes, seq: int = 0, capabilities: int = CAPS, name: str = "otelcol-contrib"
) -> pb.AgentToServer:
    """A full status report: description and health, as a first message carries them."""
    msg = pb.AgentToServer(instance_uid=uid, sequence_num=seq, capabilities=capabilities)
    msg.agent_description.identifying_attributes.add(key="service.name", value=av.AnyValue(string_value=name))
    msg.health.healthy = True
    return msg


def heartbeat(uid: bytes, seq: int, capabilities: int = CAPS) -> pb.AgentToServer:
    return pb.AgentToServer(instance_uid=uid, sequence_num=seq, capabilities=capabilities)


async def send(ws: ClientConnection, msg: pb.AgentToServer) -> None:
    await ws.send(b"\x00" + msg.SerializeToString())


async def recv(ws: ClientConnection, timeout: float = 5.0) -> pb.ServerToAgent:
    data = await asyncio.wait_for(ws.recv(), timeout)
    assert isinstance(data, bytes), f"expected a binary message, got {data!r}"
    assert data[:1] == b"\x00", f"missing header 0: {data[:8]!r}"
    return pb.ServerToAgent.FromString(data[1:])


async def exchange(ws: ClientConnection, msg: pb.AgentToServer, timeout: float = 5.0) -> pb.ServerToAgent:
    await send(ws, msg)
    return await recv(ws, timeout)


async def closed_with(ws: ClientConnection, timeout: float = 5.0) -> tuple[int, str]:
    """Wait for the server to close the socket; (code, reason). Fails on any other message."""
    try:
        message = await asyncio.wait_for(ws.recv(), timeout)
    except ConnectionClosed as exc:
        assert exc.rcvd is not None, f"closed without a close frame: {exc}"
        return exc.rcvd.code, exc.rcvd.reason
    raise AssertionError(f"expected a close, got a message: {message!r}")
