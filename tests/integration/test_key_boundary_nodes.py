"""Agent keys are a boundary across real gateway processes sharing one SQLite file and a real
redis-server: the stored record decides, and a key move closes the socket on the node holding it."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.auth import KEY_MISMATCH
from harness.redis_server import RedisServer
from tests.integration.conftest import GatewayFactory
from tests.integration.nodes import admin_json, agent_json, eventually, new_uid, owned_by, text
from tests.support.ws import agent_socket, closed_with, exchange, heartbeat, report

pytestmark = pytest.mark.anyio

KEY_A = "agent-key-aaaaaaaaaaaa"
KEY_B = "agent-key-bbbbbbbbbbbb"


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def test_another_key_is_refused_on_any_node_and_a_key_move_reaches_the_owner(
    gateways: GatewayFactory, shared_redis: RedisServer, tmp_path: Path
) -> None:
    keys = tmp_path / "agent-keys"
    keys.write_text(f"team-a:{KEY_A}\nteam-b:{KEY_B}\n")
    a = gateways("node-a", shared_redis.url, agent_keys_file=str(keys))
    b = gateways("node-b", shared_redis.url, agent_keys_file=str(keys))
    uid = new_uid()
    async with agent_socket(a.opamp_base_url, additional_headers=_bearer(KEY_B)) as victim:
        await exchange(victim, report(uid))
        await eventually(lambda: owned_by(b, uid, "node-a"), what="node-b to see node-a as the owner")
        async with agent_socket(b.opamp_base_url, additional_headers=_bearer(KEY_A)) as thief:
            await thief.send(b"\x00" + report(uid, 1).SerializeToString())
            assert await closed_with(thief) == (1008, KEY_MISMATCH)
        assert (await exchange(victim, heartbeat(uid, 1))).instance_uid == uid
        assert (await agent_json(b, uid))["key_id"] == "team-b"

        moved = await admin_json(b, "PUT", f"/api/v1/agents/{text(uid)}/key", json={"key_id": "team-a"})
        assert moved == {"instance_uid": text(uid), "key_id": "team-a"}
        code, reason = await closed_with(victim)
        assert code == 4000 and "node-b" in reason
    async with agent_socket(a.opamp_base_url, additional_headers=_bearer(KEY_B)) as again:
        await again.send(b"\x00" + heartbeat(uid, 2).SerializeToString())
        assert await closed_with(again) == (1008, KEY_MISMATCH)
    async with agent_socket(a.opamp_base_url, additional_headers=_bearer(KEY_A)) as owner:
        assert (await exchange(owner, heartbeat(uid, 2))).instance_uid == uid
