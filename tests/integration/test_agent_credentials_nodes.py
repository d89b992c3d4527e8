"""Per-agent credentials across two real gateway processes sharing one SQLite file and a real
redis-server, with raw OpAMP messages over HTTP and WebSocket: the whole life of an agent's own
credential. It enrolls with the shared key on one node and is offered opamp settings carrying a
credential minted for it; it switches to it on the other node; from then on the shared key is
refused for its uid and the credential for any other uid, on both nodes; a rotation asked on one node
is pushed over the socket the other node holds, and the old credential is refused once the new one is
used (or reported applied); a revocation on one node closes the agent's socket on the other at once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx2
import pytest
from websockets.exceptions import InvalidStatus

from gateway.fleet import credentials
from gateway.opamp import capabilities as caps
from gateway.proto import opamp_pb2 as pb
from gateway.transport.websocket import CLOSE_POLICY, CLOSE_TAKEN_OVER
from harness.gateway import GatewayProcess
from harness.redis_server import RedisServer
from tests.integration.conftest import GatewayFactory
from tests.integration.nodes import admin_json, agent_json, eventually, new_uid, owned_by, text
from tests.support.ws import agent_socket, closed_with, exchange, heartbeat, recv, report

pytestmark = pytest.mark.anyio

KEY = "shared-enrollment-key-0123456789"
PUBLIC = "wss://opamp.example.com/v1/opamp"
WANTS = (
    caps.REPORTS_STATUS
    | caps.ACCEPTS_OPAMP_CONNECTION_SETTINGS
    | caps.REPORTS_HEARTBEAT
    | caps.REPORTS_CONNECTION_SETTINGS_STATUS
)
RECEIVE_TIMEOUT = 10.0


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def token_of(reply: pb.ServerToAgent) -> str:
    opamp = reply.connection_settings.opamp
    assert opamp.destination_endpoint == PUBLIC
    [header] = [h for h in opamp.headers.headers if h.key == "Authorization"]
    return header.value.removeprefix("Bearer ")


async def _post(
    http: httpx2.AsyncClient, node: GatewayProcess, msg: pb.AgentToServer, token: str
) -> httpx2.Response:
    return await http.post(
        node.opamp_url,
        content=msg.SerializeToString(),
        headers={"Content-Type": "application/x-protobuf", **_bearer(token)},
    )


async def _reply(
    http: httpx2.AsyncClient, node: GatewayProcess, msg: pb.AgentToServer, token: str
) -> pb.ServerToAgent:
    response = await _post(http, node, msg, token)
    assert response.status_code == 200, response.text
    return pb.ServerToAgent.FromString(response.content)


async def _refused(http: httpx2.AsyncClient, node: GatewayProcess, msg: pb.AgentToServer, token: str) -> str:
    response = await _post(http, node, msg, token)
    assert response.status_code == 401, response.text
    return response.text.strip()


async def _upgrade_refused(node: GatewayProcess, token: str) -> None:
    with pytest.raises(InvalidStatus) as refused:
        async with agent_socket(node.opamp_base_url, additional_headers=_bearer(token)):
            pass
    assert refused.value.response.status_code == 401


async def _kind(node: GatewayProcess, uid: bytes) -> tuple[Any, Any]:
    shown = await agent_json(node, uid)
    return shown["credential"], shown["credential_pending"]


async def test_the_whole_life_of_an_agent_credential_across_two_nodes(
    gateways: GatewayFactory, shared_redis: RedisServer, tmp_path: Path
) -> None:
    keys = tmp_path / "agent-keys"
    keys.write_text(f"fleet:{KEY}\n")
    flags = {"agent_keys_file": str(keys), "agent_credentials": "per-agent", "public_opamp_url": PUBLIC}
    a = gateways("node-a", shared_redis.url, **flags)
    b = gateways("node-b", shared_redis.url, **flags)
    ws_agent, http_agent, stranger = new_uid(), new_uid(), new_uid()
    async with httpx2.AsyncClient(trust_env=False) as http:
        # -- enroll with the shared key on node A: offered opamp settings with its own credential.
        async with agent_socket(a.opamp_base_url, additional_headers=_bearer(KEY)) as enrolling:
            first = await exchange(enrolling, report(ws_agent, 0, WANTS), RECEIVE_TIMEOUT)
            t1 = token_of(first)
            assert t1.startswith(f"oagc1.{ws_agent.hex()}.")
            assert first.connection_settings.opamp.heartbeat_interval_seconds == 30
            assert first.capabilities & pb.ServerCapabilities_OffersConnectionSettings
            assert await _kind(b, ws_agent) == ("shared", True)
            assert t1.rsplit(".", 1)[1] not in str(await agent_json(b, ws_agent))

            # -- it switches on node B: from its first connection with its credential on, that is
            # the only one accepted for its uid. Node A closes the shared-key socket.
            own = agent_socket(b.opamp_base_url, additional_headers=_bearer(t1))
            x_on_b = await own.__aenter__()
            try:
                reply = await exchange(x_on_b, heartbeat(ws_agent, 1, WANTS), RECEIVE_TIMEOUT)
                assert not reply.HasField("connection_settings")
                code, _ = await closed_with(enrolling, RECEIVE_TIMEOUT)
                assert code in (CLOSE_POLICY, CLOSE_TAKEN_OVER)
                for node in (a, b):
                    assert await _kind(node, ws_agent) == ("per_agent", False)

                # -- the shared key is refused for that uid, on both nodes, over both transports.
                async def shared_refused_on_a() -> bool:
                    response = await _post(http, a, heartbeat(ws_agent, 2, WANTS), KEY)
                    return response.status_code == 401

                await eventually(shared_refused_on_a, what="node A to refuse the shared key for the uid")
                for node in (a, b):
                    message = await _refused(http, node, heartbeat(ws_agent, 2, WANTS), KEY)
                    assert message == credentials.OWN_CREDENTIAL_REQUIRED
                    async with agent_socket(node.opamp_base_url, additional_headers=_bearer(KEY)) as thief:
                        await thief.send(b"\x00" + heartbeat(ws_agent, 2, WANTS).SerializeToString())
                        assert await closed_with(thief, RECEIVE_TIMEOUT) == (
                            CLOSE_POLICY,
                            credentials.OWN_CREDENTIAL_REQUIRED,
                        )
                    # -- and its credential is refused for any other uid.
                    message = await _refused(http, node, report(stranger, 0, WANTS), t1)
                    assert message == credentials.CREDENTIAL_OF_ANOTHER_AGENT
                    async with agent_socket(node.opamp_base_url, additional_headers=_bearer(t1)) as other:
                        await other.send(b"\x00" + report(stranger, 0, WANTS).SerializeToString())
                        assert await closed_with(other, RECEIVE_TIMEOUT) == (
                            CLOSE_POLICY,
                            credentials.CREDENTIAL_OF_ANOTHER_AGENT,
                        )
                assert (
                    await exchange(x_on_b, heartbeat(ws_agent, 2, WANTS), RECEIVE_TIMEOUT)
                ).instance_uid == ws_agent
                await eventually(lambda: owned_by(a, ws_agent, "node-b"), what="node A to see node B hold it")

                # -- rotate on node A: node B, which holds the socket, mints and pushes the new one.
                rotated = await admin_json(
                    a, "POST", f"/api/v1/agents/{text(ws_agent)}/credentials/rotate", expect=202
                )
                assert rotated["credential"] == "per_agent"
                pushed = await recv(x_on_b, RECEIVE_TIMEOUT)
                t2 = token_of(pushed)
                assert t2 != t1 and t2.startswith(f"oagc1.{ws_agent.hex()}.")
                # The old one stays valid until the new one is used.
                assert (
                    await exchange(x_on_b, heartbeat(ws_agent, 3, WANTS), RECEIVE_TIMEOUT)
                ).instance_uid == ws_agent
                assert await _kind(a, ws_agent) == ("per_agent", True)
                async with agent_socket(a.opamp_base_url, additional_headers=_bearer(t2)) as x_on_a:
                    await exchange(x_on_a, heartbeat(ws_agent, 4, WANTS), RECEIVE_TIMEOUT)
                    # Used on node A: node B's socket with the old one is closed, the old one refused.
                    code, _ = await closed_with(x_on_b, RECEIVE_TIMEOUT)
                    assert code in (CLOSE_POLICY, CLOSE_TAKEN_OVER)

                    async def old_refused_on_b() -> bool:
                        response = await _post(http, b, heartbeat(ws_agent, 5, WANTS), t1)
                        return response.status_code == 401

                    await eventually(old_refused_on_b, what="node B to refuse the old credential")
                    for node in (a, b):
                        await _upgrade_refused(node, t1)
                        assert await _kind(node, ws_agent) == ("per_agent", False)
                    await eventually(
                        lambda: owned_by(b, ws_agent, "node-a"), what="node B to see node A hold it"
                    )

                    # -- revoke on node B: node A closes the agent's socket at once.
                    revoked = await admin_json(b, "DELETE", f"/api/v1/agents/{text(ws_agent)}/credentials")
                    assert revoked["credential"] == "revoked"
                    assert await closed_with(x_on_a, RECEIVE_TIMEOUT) == (CLOSE_POLICY, credentials.REVOKED)
                for node in (a, b):
                    await _upgrade_refused(node, t2)
                    assert (
                        await _refused(http, node, heartbeat(ws_agent, 6, WANTS), KEY) == credentials.REVOKED
                    )
                    listed = await admin_json(node, "GET", "/api/v1/agents", params={"credential": "revoked"})
                    assert [agent["instance_uid"] for agent in listed["agents"]] == [text(ws_agent)]
            finally:
                await own.__aexit__(None, None, None)

        # -- an HTTP agent: enrolls on node B, switches polling node A, rotates by an APPLIED report.
        offered = await _reply(http, b, report(http_agent, 0, WANTS), KEY)
        h1 = token_of(offered)
        assert not (await _reply(http, a, heartbeat(http_agent, 1, WANTS), h1)).HasField(
            "connection_settings"
        )

        async def switched() -> bool:
            return (await _post(http, b, heartbeat(http_agent, 2, WANTS), KEY)).status_code == 401

        await eventually(switched, what="node B to refuse the HTTP agent's shared key")
        await admin_json(b, "POST", f"/api/v1/agents/{text(http_agent)}/credentials/rotate", expect=202)
        rotation = await _reply(http, a, heartbeat(http_agent, 2, WANTS), h1)
        h2 = token_of(rotation)
        assert h2 != h1
        # Still polling with the old one, it reports the new settings applied: the old one is done.
        applied = heartbeat(http_agent, 3, WANTS)
        applied.connection_settings_status.last_connection_settings_hash = rotation.connection_settings.hash
        applied.connection_settings_status.status = pb.ConnectionSettingsStatuses_APPLIED
        assert not (await _reply(http, a, applied, h1)).HasField("connection_settings")

        async def old_refused() -> bool:
            return (await _post(http, b, heartbeat(http_agent, 4, WANTS), h1)).status_code == 401

        await eventually(old_refused, what="node B to refuse the rotated-out credential")
        assert (await _reply(http, b, heartbeat(http_agent, 4, WANTS), h2)).instance_uid == http_agent
        for node in (a, b):
            listed = await admin_json(node, "GET", "/api/v1/agents", params={"credential": "per_agent"})
            assert [agent["instance_uid"] for agent in listed["agents"]] == [text(http_agent)]
