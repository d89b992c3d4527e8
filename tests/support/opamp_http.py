"""One plain-HTTP OpAMP exchange, for tests that act as an HTTP agent."""

from __future__ import annotations

import httpx2

from gateway.proto import opamp_pb2 as pb

PROTOBUF = {"Content-Type": "application/x-protobuf"}


async def poll(client: httpx2.AsyncClient, url: str, msg: pb.AgentToServer) -> pb.ServerToAgent:
    """POST `msg` to `url` (absolute, or relative to the client's base URL); expect 200 and a reply."""
    response = await client.post(url, content=msg.SerializeToString(), headers=PROTOBUF)
    assert response.status_code == 200, response.text
    return pb.ServerToAgent.FromString(response.content)
