"""Per-agent credentials on one node over real sockets (HTTP and WebSocket) and its admin API: an
agent enrolled with the shared key is offered a credential of its own, switches to it, and from then
on the shared key is refused for its uid and its credential for any other; rotation and revocation;
what the admin API shows and refuses."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import httpx2
import pytest
from websockets.exceptions import InvalidStatus

from gateway.auth import AGENT_DENIAL
from gateway.fleet import credentials
from gateway.fleet.credentials import AgentCredential
from gateway.opamp import capabilities as caps
from gateway.proto import opamp_pb2 as pb
from gateway.store.base import StoreUnavailable
from gateway.transport.websocket import CLOSE_POLICY
from tests.support.memory_store import MemoryStore
from tests.support.servers import Node, run_node
from tests.support.waiting import eventually, uid
from tests.support.ws import agent_socket, closed_with, exchange, heartbeat, recv, report

pytestmark = pytest.mark.anyio

KEY = "shared-enrollment-key-0123456789"
WANTS = (
    caps.REPORTS_STATUS
    | caps.ACCEPTS_OPAMP_CONNECTION_SETTINGS
    | caps.REPORTS_HEARTBEAT
    | caps.REPORTS_CONNECTION_SETTINGS_STATUS
)
PUBLIC = "wss://opamp.example.com/v1/opamp"
AGENT, OTHER, PLAIN = uid(11), uid(12), uid(13)


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _protobuf(token: str) -> dict[str, str]:
    return {"Content-Type": "application/x-protobuf", **_bearer(token)}


def _text(u: bytes) -> str:
    return str(uuid.UUID(bytes=u))


def token_of(reply: pb.ServerToAgent) -> str:
    """The credential in an offer's opamp settings (and that they point at the public endpoint)."""
    opamp = reply.connection_settings.opamp
    assert opamp.destination_endpoint == PUBLIC
    [header] = [h for h in opamp.headers.headers if h.key == "Authorization"]
    assert header.value.startswith("Bearer ")
    return header.value.removeprefix("Bearer ")


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    keys = tmp_path / "agent-keys"
    keys.write_text(f"fleet:{KEY}\n")
    async with run_node(
        tmp_path, agent_keys_file=str(keys), agent_credentials="per-agent", public_opamp_url=PUBLIC
    ) as running:
        yield running


async def _agent(node: Node, u: bytes) -> dict[str, object]:
    async with httpx2.AsyncClient(base_url=node.admin_url) as admin:
        response = await admin.get(f"/api/v1/agents/{_text(u)}")
        assert response.status_code == 200, response.text
        body: dict[str, object] = response.json()
        return body


async def _post(client: httpx2.AsyncClient, msg: pb.AgentToServer, token: str) -> httpx2.Response:
    return await client.post("/v1/opamp", content=msg.SerializeToString(), headers=_protobuf(token))


async def test_the_whole_life_over_websocket(node: Node) -> None:
    async with agent_socket(node.opamp_url, additional_headers=_bearer(KEY)) as enrolling:
        first = await exchange(enrolling, report(AGENT, 0, WANTS))
        token = token_of(first)
        assert token.startswith(f"oagc1.{AGENT.hex()}.")
        assert first.connection_settings.opamp.heartbeat_interval_seconds == 30
        # Offered once: the next heartbeat gets nothing, and the shared key still works.
        assert not (await exchange(enrolling, heartbeat(AGENT, 1, WANTS))).HasField("connection_settings")
        shown = await _agent(node, AGENT)
        assert (shown["credential"], shown["credential_pending"]) == ("shared", True)
        assert token not in str(shown) and token.rsplit(".", 1)[1] not in str(shown)

        # It switches: connecting with its credential; the shared-key socket is closed now.
        async with agent_socket(node.opamp_url, additional_headers=_bearer(token)) as own:
            reply = await exchange(own, heartbeat(AGENT, 2, WANTS))
            assert reply.instance_uid == AGENT and not reply.HasField("connection_settings")
            code, reason = await closed_with(enrolling)
            assert code == CLOSE_POLICY and reason == credentials.OWN_CREDENTIAL_REQUIRED
            shown = await _agent(node, AGENT)
            assert (shown["credential"], shown["credential_pending"]) == ("per_agent", False)

            # The shared key is refused for that uid.
            async with agent_socket(node.opamp_url, additional_headers=_bearer(KEY)) as thief:
                await thief.send(b"\x00" + heartbeat(AGENT, 3, WANTS).SerializeToString())
                assert await closed_with(thief) == (CLOSE_POLICY, credentials.OWN_CREDENTIAL_REQUIRED)
            # Its credential is refused for any other uid.
            async with agent_socket(node.opamp_url, additional_headers=_bearer(token)) as elsewhere:
                await elsewhere.send(b"\x00" + report(OTHER, 0, WANTS).SerializeToString())
                assert await closed_with(elsewhere) == (CLOSE_POLICY, credentials.CREDENTIAL_OF_ANOTHER_AGENT)
            assert (await exchange(own, heartbeat(AGENT, 3, WANTS))).instance_uid == AGENT


async def test_the_whole_life_over_http(node: Node) -> None:
    async with httpx2.AsyncClient(base_url=node.opamp_url) as client:
        first = await _post(client, report(AGENT, 0, WANTS), KEY)
        token = token_of(pb.ServerToAgent.FromString(first.content))
        assert (await _post(client, heartbeat(AGENT, 1, WANTS), KEY)).status_code == 200
        switched = await _post(client, heartbeat(AGENT, 2, WANTS), token)
        assert switched.status_code == 200
        assert not pb.ServerToAgent.FromString(switched.content).HasField("connection_settings")
        refused = await _post(client, heartbeat(AGENT, 3, WANTS), KEY)
        assert refused.status_code == 401 and refused.text.strip() == credentials.OWN_CREDENTIAL_REQUIRED
        assert "Bearer" in refused.headers["www-authenticate"]
        stolen = await _post(client, report(OTHER, 0, WANTS), token)
        assert stolen.status_code == 401 and stolen.text.strip() == credentials.CREDENTIAL_OF_ANOTHER_AGENT
        assert await node.services.writer.get(OTHER) is None
        # A forged secret, or one for a uid that has none, is refused on the request itself.
        forged = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
        for bad in (forged, credentials.mint(PLAIN).token):
            response = await _post(client, heartbeat(AGENT, 3, WANTS), bad)
            assert response.status_code == 401 and response.text.strip() == AGENT_DENIAL
        assert (await _post(client, heartbeat(AGENT, 3, WANTS), token)).status_code == 200


async def test_a_forged_credential_cannot_upgrade(node: Node) -> None:
    async with httpx2.AsyncClient(base_url=node.opamp_url) as client:
        await _post(client, report(AGENT, 0, WANTS), KEY)
    for bad in (credentials.mint(AGENT).token, credentials.mint(PLAIN).token):
        with pytest.raises(InvalidStatus) as refused:
            async with agent_socket(node.opamp_url, additional_headers=_bearer(bad)):
                pass
        assert refused.value.response.status_code == 401


async def test_an_agent_without_the_capability_stays_on_the_shared_key(node: Node) -> None:
    async with httpx2.AsyncClient(base_url=node.opamp_url) as client:
        reply = pb.ServerToAgent.FromString((await _post(client, report(PLAIN), KEY)).content)
        assert not reply.connection_settings.HasField("opamp")
        assert (await _post(client, heartbeat(PLAIN, 1), KEY)).status_code == 200
    shown = await _agent(node, PLAIN)
    assert (shown["credential"], shown["credential_pending"]) == ("shared", False)
    async with httpx2.AsyncClient(base_url=node.admin_url) as admin:
        refused = await admin.post(f"/api/v1/agents/{_text(PLAIN)}/credentials/rotate")
        assert refused.status_code == 409 and "AcceptsOpAMPConnectionSettings" in refused.text


async def test_rotation_over_websocket_and_revocation(node: Node) -> None:
    async with httpx2.AsyncClient(base_url=node.opamp_url) as client:
        old = token_of(
            pb.ServerToAgent.FromString((await _post(client, report(AGENT, 0, WANTS), KEY)).content)
        )
    async with (
        httpx2.AsyncClient(base_url=node.admin_url) as admin,
        agent_socket(node.opamp_url, additional_headers=_bearer(old)) as first,
    ):
        await exchange(first, heartbeat(AGENT, 1, WANTS))
        rotated = await admin.post(f"/api/v1/agents/{_text(AGENT)}/credentials/rotate")
        assert rotated.status_code == 202, rotated.text
        assert rotated.json()["credential"] == "per_agent"
        # Pushed at once over its socket; the old credential still works meanwhile.
        pushed = await recv(first)
        new = token_of(pushed)
        assert new != old
        assert (await exchange(first, heartbeat(AGENT, 2, WANTS))).instance_uid == AGENT
        assert (await _agent(node, AGENT))["credential_pending"] is True
        async with agent_socket(node.opamp_url, additional_headers=_bearer(new)) as second:
            await exchange(second, heartbeat(AGENT, 3, WANTS))
            # Used: the old one is refused from now on, its socket closed.
            assert await closed_with(first) == (CLOSE_POLICY, credentials.CREDENTIAL_REFUSED)
            with pytest.raises(InvalidStatus) as refused:
                async with agent_socket(node.opamp_url, additional_headers=_bearer(old)):
                    pass
            assert refused.value.response.status_code == 401

            revoked = await admin.delete(f"/api/v1/agents/{_text(AGENT)}/credentials")
            assert revoked.status_code == 200 and revoked.json()["credential"] == "revoked"
            assert await closed_with(second) == (CLOSE_POLICY, credentials.REVOKED)
        listed = (await admin.get("/api/v1/agents", params={"credential": "revoked"})).json()["agents"]
        assert [a["instance_uid"] for a in listed] == [_text(AGENT)]
        async with httpx2.AsyncClient(base_url=node.opamp_url) as client:
            assert (await _post(client, heartbeat(AGENT, 4, WANTS), new)).status_code == 401
            by_key = await _post(client, heartbeat(AGENT, 4, WANTS), KEY)
            assert by_key.status_code == 401 and by_key.text.strip() == credentials.REVOKED
            # Rotate lets it back: with the shared key it gets a credential again.
            back = await admin.post(f"/api/v1/agents/{_text(AGENT)}/credentials/rotate")
            assert back.status_code == 202 and back.json()["credential"] == "shared"
            again = await _post(client, heartbeat(AGENT, 4, WANTS), KEY)
            assert again.status_code == 200
            assert token_of(pb.ServerToAgent.FromString(again.content)) not in (old, new)


async def test_the_admin_api_filters_and_refuses(node: Node) -> None:
    async with httpx2.AsyncClient(base_url=node.opamp_url) as client:
        token = token_of(
            pb.ServerToAgent.FromString((await _post(client, report(AGENT, 0, WANTS), KEY)).content)
        )
        await _post(client, heartbeat(AGENT, 1, WANTS), token)
        await _post(client, report(PLAIN), KEY)
    async with httpx2.AsyncClient(base_url=node.admin_url) as admin:

        async def kind(name: str) -> list[str]:
            response = await admin.get("/api/v1/agents", params={"credential": name})
            assert response.status_code == 200
            return [a["instance_uid"] for a in response.json()["agents"]]

        assert await kind("per_agent") == [_text(AGENT)]
        assert await kind("shared") == [_text(PLAIN)]
        assert await kind("revoked") == []
        bad = await admin.get("/api/v1/agents", params={"credential": "own"})
        assert bad.status_code == 400 and bad.json()["error"]["message"].startswith("credential:")
        for method, path in (("POST", "credentials/rotate"), ("DELETE", "credentials")):
            missing = await admin.request(method, f"/api/v1/agents/{_text(OTHER)}/{path}")
            assert missing.status_code == 404
            odd = await admin.request(method, f"/api/v1/agents/not-a-uid/{path}")
            assert odd.status_code == 404
        listed = (await admin.get("/api/v1/agents")).json()["agents"]
        assert {a["credential"] for a in listed} == {"per_agent", "shared"}
        assert token not in str(listed)


async def test_shared_credentials_rotate_nothing(tmp_path: Path) -> None:
    keys = tmp_path / "agent-keys"
    keys.write_text(f"{KEY}\n")
    async with (
        run_node(tmp_path, agent_keys_file=str(keys)) as shared,
        httpx2.AsyncClient(base_url=shared.opamp_url) as client,
        httpx2.AsyncClient(base_url=shared.admin_url) as admin,
    ):
        reply = pb.ServerToAgent.FromString((await _post(client, report(AGENT, 0, WANTS), KEY)).content)
        assert not reply.connection_settings.opamp.headers.headers
        refused = await admin.post(f"/api/v1/agents/{_text(AGENT)}/credentials/rotate")
        assert refused.status_code == 409 and "--agent-credentials per-agent" in refused.text
        # Revocation works whatever the mode: the uid is refused.
        assert (await admin.delete(f"/api/v1/agents/{_text(AGENT)}/credentials")).status_code == 200
        assert (await _post(client, heartbeat(AGENT, 1, WANTS), KEY)).status_code == 401

        async def gone() -> bool:
            shown: dict[str, object] = (await admin.get(f"/api/v1/agents/{_text(AGENT)}")).json()
            return shown["credential"] == "revoked"

        await eventually(gone, what="the agent to show revoked")


async def test_a_store_that_fails_is_a_503_for_rotate_and_revoke(tmp_path: Path) -> None:
    class Down(MemoryStore):
        down = False

        async def get_credentials(self, uids: Sequence[bytes]) -> dict[bytes, AgentCredential]:
            if self.down:
                raise StoreUnavailable("credentials unreadable")
            return await super().get_credentials(uids)

    keys = tmp_path / "agent-keys"
    keys.write_text(f"{KEY}\n")
    store = Down()
    async with (
        run_node(
            tmp_path,
            store=store,
            agent_keys_file=str(keys),
            agent_credentials="per-agent",
            public_opamp_url=PUBLIC,
        ) as running,
        httpx2.AsyncClient(base_url=running.opamp_url) as client,
        httpx2.AsyncClient(base_url=running.admin_url) as admin,
    ):
        assert (await _post(client, report(AGENT, 0, WANTS), KEY)).status_code == 200
        await running.services.writer.flush()
        store.down = True
        for method, path in (("POST", "credentials/rotate"), ("DELETE", "credentials"), ("GET", "")):
            response = await admin.request(method, f"/api/v1/agents/{_text(AGENT)}/{path}".rstrip("/"))
            assert response.status_code == 503, (method, path, response.text)
            assert response.headers["Retry-After"] == "5"
