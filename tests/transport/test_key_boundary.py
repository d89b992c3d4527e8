"""Agent keys are a boundary (issue 20, finding 1), over real sockets: a client with key A cannot act
as an agent enrolled with key B, on HTTP (401) or WebSocket (close 1008); the admin API shows and
moves an agent's key id."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx2
import pytest

from gateway.auth import KEY_MISMATCH
from gateway.opamp import capabilities as caps
from gateway.proto import opamp_pb2 as pb
from gateway.store.base import StoreError
from gateway.transport.websocket import CLOSE_POLICY, CLOSE_TAKEN_OVER
from tests.support.servers import Node, agent_keys_file, run_node
from tests.support.waiting import eventually, uid
from tests.support.ws import CAPS, agent_socket, closed_with, exchange, heartbeat, recv, report

pytestmark = pytest.mark.anyio

KEY_A = "agent-key-aaaaaaaaaaaa"
KEY_B = "agent-key-bbbbbbbbbbbb"
VICTIM = uid(2)
CONFIG_CAPS = CAPS | caps.ACCEPTS_REMOTE_CONFIG


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _protobuf(key: str) -> dict[str, str]:
    return {"Content-Type": "application/x-protobuf", **_bearer(key)}


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    keys = agent_keys_file(tmp_path, {"team-a": KEY_A, "team-b": KEY_B})
    async with run_node(tmp_path, agent_keys_file=keys) as running:
        yield running


def _mismatches(node: Node, transport: str) -> float | None:
    return node.services.metrics.registry.get_sample_value(
        "opamp_gateway_agent_key_mismatches_total", {"transport": transport}
    )


async def _victim_config(node: Node) -> None:
    """A config only the victim's uid selects, so a stolen socket would receive it at once."""
    body = {
        "selector": {"instance_uids": [str(uuid.UUID(bytes=VICTIM))]},
        "files": {"secret.yaml": {"content_type": "text/yaml", "body": "token: victim-only\n"}},
    }
    async with httpx2.AsyncClient(base_url=node.admin_url) as admin:
        response = await admin.put("/api/v1/configs/victim", json=body)
        assert response.status_code in (200, 201), response.text


async def test_a_websocket_of_another_key_cannot_take_over_get_config_or_commands(node: Node) -> None:
    await _victim_config(node)
    async with agent_socket(node.opamp_url, additional_headers=_bearer(KEY_B)) as victim:
        first = await exchange(victim, report(VICTIM, capabilities=CONFIG_CAPS))
        assert first.remote_config.config.config_map["secret.yaml"].body == b"token: victim-only\n"
        async with agent_socket(node.opamp_url, additional_headers=_bearer(KEY_A)) as thief:
            await thief.send(b"\x00" + report(VICTIM, seq=0, capabilities=CONFIG_CAPS).SerializeToString())
            # Closed before any reply: no config, no command, no takeover of the victim's socket.
            assert await closed_with(thief) == (CLOSE_POLICY, KEY_MISMATCH)
        # The victim's socket was not taken over, and it still gets its commands.
        assert (await exchange(victim, heartbeat(VICTIM, 1, CONFIG_CAPS))).instance_uid == VICTIM
        async with httpx2.AsyncClient(base_url=node.admin_url) as admin:
            response = await admin.post(f"/api/v1/agents/{uuid.UUID(bytes=VICTIM)}/restart")
            assert response.status_code == 202 and response.json()["delivery"] == "pushed"
        assert (await recv(victim)).command.type == pb.CommandType_Restart
    assert _mismatches(node, "websocket") == 1
    closes = node.services.metrics.registry.get_sample_value(
        "opamp_gateway_websocket_closes_total", {"code": str(CLOSE_TAKEN_OVER)}
    )
    assert not closes


async def test_a_proxy_socket_of_another_key_is_closed_on_the_first_foreign_uid(node: Node) -> None:
    async with agent_socket(node.opamp_url, additional_headers=_bearer(KEY_B)) as victim:
        await exchange(victim, report(VICTIM))
        async with agent_socket(node.opamp_url, additional_headers=_bearer(KEY_A)) as proxy:
            # Its own agent first (the cached, no-task path), then the foreign one.
            assert (await exchange(proxy, report(uid(1)))).instance_uid == uid(1)
            await proxy.send(b"\x00" + heartbeat(VICTIM, 1).SerializeToString())
            assert await closed_with(proxy) == (CLOSE_POLICY, KEY_MISMATCH)
        assert (await exchange(victim, heartbeat(VICTIM, 1))).instance_uid == VICTIM


async def test_http_with_another_key_cannot_overwrite_move_or_disconnect(node: Node) -> None:
    async with httpx2.AsyncClient(base_url=node.opamp_url) as client:
        enrolled = await client.post(
            "/v1/opamp", content=report(VICTIM).SerializeToString(), headers=_protobuf(KEY_B)
        )
        assert enrolled.status_code == 200
        before = await node.services.writer.get(VICTIM)
        assert before is not None and before.key_id == "team-b"
        overwrite = report(VICTIM, seq=1, name="evil")
        overwrite.health.healthy = False
        move = pb.AgentToServer(instance_uid=VICTIM, sequence_num=1, flags=caps.REQUEST_INSTANCE_UID)
        goodbye = pb.AgentToServer(instance_uid=VICTIM, sequence_num=1, agent_disconnect=pb.AgentDisconnect())
        for msg in (overwrite, move, goodbye):
            response = await client.post(
                "/v1/opamp", content=msg.SerializeToString(), headers=_protobuf(KEY_A)
            )
            assert response.status_code == 401
            assert response.text.strip() == KEY_MISMATCH
            assert "Bearer" in response.headers["www-authenticate"]
        await node.services.writer.flush()
        after = await node.services.store.get(VICTIM)
        assert after is not None
        assert (after.instance_uid, after.description, after.health, after.disconnected) == (
            VICTIM,
            before.description,
            before.health,
            False,
        )
        assert _mismatches(node, "http") == 3
        # The key that enrolled it still speaks for it.
        response = await client.post(
            "/v1/opamp", content=heartbeat(VICTIM, 1).SerializeToString(), headers=_protobuf(KEY_B)
        )
        assert response.status_code == 200


async def test_a_pending_command_is_not_delivered_to_another_key(node: Node) -> None:
    async with httpx2.AsyncClient(base_url=node.opamp_url) as client:
        await client.post("/v1/opamp", content=report(VICTIM).SerializeToString(), headers=_protobuf(KEY_B))
        async with httpx2.AsyncClient(base_url=node.admin_url) as admin:
            response = await admin.post(f"/api/v1/agents/{uuid.UUID(bytes=VICTIM)}/restart")
            assert response.status_code == 202 and response.json()["delivery"] == "pending"
        stolen = await client.post(
            "/v1/opamp", content=heartbeat(VICTIM, 1).SerializeToString(), headers=_protobuf(KEY_A)
        )
        assert stolen.status_code == 401
        own = await client.post(
            "/v1/opamp", content=heartbeat(VICTIM, 1).SerializeToString(), headers=_protobuf(KEY_B)
        )
        assert pb.ServerToAgent.FromString(own.content).command.type == pb.CommandType_Restart


async def test_the_admin_api_shows_filters_and_moves_key_ids(node: Node) -> None:
    text = str(uuid.UUID(bytes=VICTIM))
    async with (
        httpx2.AsyncClient(base_url=node.admin_url) as admin,
        agent_socket(node.opamp_url, additional_headers=_bearer(KEY_B)) as victim,
    ):
        await exchange(victim, report(VICTIM))
        await exchange(victim, heartbeat(VICTIM, 1))
        agent = (await admin.get(f"/api/v1/agents/{text}")).json()
        assert agent["key_id"] == "team-b"
        assert KEY_B not in str(agent)
        listed = (await admin.get("/api/v1/agents", params={"key_id": "team-b"})).json()["agents"]
        assert [a["instance_uid"] for a in listed] == [text]
        assert (await admin.get("/api/v1/agents", params={"key_id": "team-a"})).json()["agents"] == []
        bad = await admin.get("/api/v1/agents", params={"key_id": "not a key id"})
        assert bad.status_code == 400 and "key_id" in bad.json()["error"]["message"]

        unknown = await admin.put(f"/api/v1/agents/{text}/key", json={"key_id": "team-c"})
        assert unknown.status_code == 400 and "team-c" in unknown.json()["error"]["message"]
        moved = await admin.put(f"/api/v1/agents/{text}/key", json={"key_id": "team-a"})
        assert moved.status_code == 200 and moved.json() == {"instance_uid": text, "key_id": "team-a"}
        # The agent's socket is closed so that it authenticates again.
        code, _ = await closed_with(victim)
        assert code == CLOSE_TAKEN_OVER
    assert (await node.services.store.get(VICTIM)).key_id == "team-a"  # type: ignore[union-attr]
    async with httpx2.AsyncClient(base_url=node.opamp_url) as client:
        msg = heartbeat(VICTIM, 2).SerializeToString()
        assert (await client.post("/v1/opamp", content=msg, headers=_protobuf(KEY_B))).status_code == 401
        assert (await client.post("/v1/opamp", content=msg, headers=_protobuf(KEY_A))).status_code == 200


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"[]", "body"),
        (b"{}", "key_id"),
        (b'{"key_id": 7}', "key_id"),
        (b'{"key_id": "a", "other": 1}', "other"),
        # An empty field name is quoted (hypothesis found ": unknown field").
        (b'{"": null}', "''"),
        (b"{", "body"),
        (b'{"key_id": "' + b"a" * 2000 + b'"}', "body"),
    ],
)
async def test_a_bad_key_move_is_a_400_naming_the_field(node: Node, body: bytes, field: str) -> None:
    async with httpx2.AsyncClient(base_url=node.admin_url) as admin:
        response = await admin.put(
            f"/api/v1/agents/{uuid.UUID(bytes=VICTIM)}/key",
            content=body,
            headers={"Content-Type": "application/json"},
        )
    assert response.status_code == 400
    assert response.json()["error"]["message"].startswith(field + ":")


async def test_moving_an_unknown_agent_is_a_404(node: Node) -> None:
    async with httpx2.AsyncClient(base_url=node.admin_url) as admin:
        missing = await admin.put(f"/api/v1/agents/{uuid.UUID(bytes=uid(9))}/key", json={"key_id": "team-a"})
        not_uid = await admin.put("/api/v1/agents/nope/key", json={"key_id": "team-a"})
    assert (missing.status_code, not_uid.status_code) == (404, 404)


async def test_an_anonymous_agent_is_adopted_by_the_first_key_and_an_admin_can_unbind_it(
    tmp_path: Path,
) -> None:
    # Enrolled while the gateway had no keys: bound to none.
    async with run_node(tmp_path) as open_node, httpx2.AsyncClient(base_url=open_node.opamp_url) as client:
        response = await client.post(
            "/v1/opamp",
            content=report(VICTIM).SerializeToString(),
            headers={"Content-Type": "application/x-protobuf"},
        )
        assert response.status_code == 200
        async with httpx2.AsyncClient(base_url=open_node.admin_url) as admin:
            assert (await admin.get(f"/api/v1/agents/{uuid.UUID(bytes=VICTIM)}")).json()["key_id"] is None
            # With keys off any well-formed key id is taken.
            moved = await admin.put(
                f"/api/v1/agents/{uuid.UUID(bytes=VICTIM)}/key", json={"key_id": "team-x"}
            )
            assert moved.status_code == 200
            unbound = await admin.put(f"/api/v1/agents/{uuid.UUID(bytes=VICTIM)}/key", json={"key_id": None})
            assert unbound.json()["key_id"] is None
    keys = tmp_path / "agent-keys"
    keys.write_text(f"team-a:{KEY_A}\nteam-b:{KEY_B}\n")
    async with (
        run_node(tmp_path, agent_keys_file=str(keys)) as node,
        httpx2.AsyncClient(base_url=node.opamp_url) as client,
    ):
        adopt = await client.post(
            "/v1/opamp", content=heartbeat(VICTIM, 1).SerializeToString(), headers=_protobuf(KEY_A)
        )
        assert adopt.status_code == 200

        async def adopted() -> bool:
            state = await node.services.store.get(VICTIM)
            return state is not None and state.key_id == "team-a"

        await eventually(adopted)
        other = await client.post(
            "/v1/opamp", content=heartbeat(VICTIM, 2).SerializeToString(), headers=_protobuf(KEY_B)
        )
        assert other.status_code == 401


async def test_a_key_move_the_store_cannot_take_is_a_503(node: Node, monkeypatch: pytest.MonkeyPatch) -> None:
    async def down(_uid: bytes, _key_id: str) -> None:
        raise StoreError("the store is down")

    monkeypatch.setattr(node.services.router, "rebind", down)
    async with httpx2.AsyncClient(base_url=node.admin_url) as admin:
        response = await admin.put(f"/api/v1/agents/{uuid.UUID(bytes=VICTIM)}/key", json={"key_id": "team-a"})
    assert response.status_code == 503 and response.headers["retry-after"]
    assert response.json()["error"]["code"] == "store_unavailable"
