"""Several real gateway processes sharing one SQLite file and one real redis-server."""

from __future__ import annotations

import statistics
import time

import httpx2
import pytest
from websockets.asyncio.client import ClientConnection

from gateway.opamp import capabilities as caps
from gateway.proto import opamp_pb2 as pb
from harness.gateway import GatewayProcess
from harness.redis_server import RedisServer
from tests.integration.conftest import GatewayFactory
from tests.integration.nodes import agent_json, eventually, new_uid, owned_by, text, wait_bus
from tests.support.opamp_http import poll as http_poll
from tests.support.redis_server import RedisFactory
from tests.support.ws import agent_socket, closed_with, exchange, heartbeat, recv, report

pytestmark = pytest.mark.anyio

# Measured push latencies across nodes, printed at the end of the test that collects them.
PUSH_DEADLINE = 1.0


async def restart(gateway: GatewayProcess, uid: bytes) -> dict[str, object]:
    async with httpx2.AsyncClient(base_url=gateway.admin_url) as admin:
        response = await admin.post(f"/api/v1/agents/{text(uid)}/restart")
        assert response.status_code == 202, response.text
        body: dict[str, object] = response.json()
        return body


async def expect_restart(ws: ClientConnection, uid: bytes, timeout: float = PUSH_DEADLINE) -> float:
    started = time.monotonic()
    pushed = await recv(ws, timeout)
    assert pushed.instance_uid == uid and pushed.command.type == pb.CommandType_Restart
    assert pushed.HasField("command")
    return time.monotonic() - started


async def test_restart_through_another_node_arrives_within_a_second(
    gateways: GatewayFactory, shared_redis: RedisServer
) -> None:
    a = gateways("node-a", shared_redis.url)
    b = gateways("node-b", shared_redis.url)
    uid = new_uid()
    async with agent_socket(a.opamp_base_url) as ws:
        await exchange(ws, report(uid))
        await eventually(lambda: owned_by(b, uid, "node-a"), what="node-b to see node-a as the owner")
        latencies = []
        async with httpx2.AsyncClient(base_url=b.admin_url) as admin:
            for _ in range(20):
                started = time.monotonic()
                response = await admin.post(f"/api/v1/agents/{text(uid)}/restart")
                assert response.status_code == 202
                assert response.json()["delivery"] == "pushed" and response.json()["node"] == "node-a"
                await expect_restart(ws, uid)
                latencies.append(time.monotonic() - started)
        median, worst = statistics.median(latencies) * 1000, max(latencies) * 1000
        print(f"\nrestart via node-b to a socket on node-a: median {median:.1f} ms, max {worst:.1f} ms")
        assert max(latencies) < PUSH_DEADLINE


async def test_duplicate_connection_on_two_nodes_closes_the_older(
    gateways: GatewayFactory, shared_redis: RedisServer
) -> None:
    a = gateways("node-a", shared_redis.url)
    b = gateways("node-b", shared_redis.url)
    uid = new_uid()
    async with agent_socket(a.opamp_base_url) as old, agent_socket(b.opamp_base_url) as new:
        await exchange(old, report(uid))
        await eventually(lambda: owned_by(b, uid, "node-a"), what="node-a's claim")
        await exchange(new, report(uid, 1))
        code, reason = await closed_with(old)
        assert code == 4000 and "node-b" in reason and text(uid) in reason
        assert (await exchange(new, heartbeat(uid, 2))).instance_uid == uid
        await eventually(lambda: owned_by(a, uid, "node-b"), what="node-a to see node-b as the owner")
        await restart(a, uid)
        await expect_restart(new, uid)


async def test_redis_outage_keeps_serving_and_pushes_resume(
    gateways: GatewayFactory, redis_factory: RedisFactory
) -> None:
    redis = redis_factory()
    a = gateways("node-a", redis.url)
    b = gateways("node-b", redis.url)
    ws_uid, http_uid = new_uid(), new_uid()
    async with agent_socket(a.opamp_base_url) as ws, httpx2.AsyncClient(base_url=b.opamp_base_url) as http:

        async def poll(msg: pb.AgentToServer) -> pb.ServerToAgent:
            return await http_poll(http, "/v1/opamp", msg)

        await exchange(ws, report(ws_uid))
        await poll(report(http_uid))
        await eventually(lambda: owned_by(b, ws_uid, "node-a"), what="node-a's claim")

        redis.kill()
        for gateway in (a, b):
            await wait_bus(gateway, "down")
        # Both transports are still answered, in sequence, with no full state asked for.
        for seq in (1, 2, 3):
            assert (await exchange(ws, heartbeat(ws_uid, seq))).flags == 0
            assert (await poll(heartbeat(http_uid, seq))).flags == 0
        body = await restart(b, ws_uid)
        assert body["delivery"] == "pending"

        # Redis comes back empty: node-a re-claims its socket on reconnect, pushes work again.
        redis.start()
        for gateway in (a, b):
            await wait_bus(gateway, "up")
        await eventually(lambda: owned_by(b, ws_uid, "node-a"), what="node-a to re-claim its socket")
        body = await restart(b, ws_uid)
        assert body["delivery"] == "pushed"
        await expect_restart(ws, ws_uid)


async def test_killed_node_agent_reconnects_elsewhere_with_its_record_intact(
    gateways: GatewayFactory, shared_redis: RedisServer
) -> None:
    # A WebSocket agent's heartbeats reach the store from node-a's liveness sweep: with
    # --offline-after 2, within a second (gateway/node/liveness.py).
    a = gateways("node-a", shared_redis.url, offline_after=2)
    b = gateways("node-b", shared_redis.url, offline_after=2)
    uid = new_uid()
    async with agent_socket(a.opamp_base_url) as ws:
        await exchange(ws, report(uid))
        for seq in (1, 2, 3):
            await exchange(ws, heartbeat(uid, seq))

        async def flushed() -> bool:
            return bool((await agent_json(b, uid))["sequence_num"] == 3)

        await eventually(flushed, what="node-a's heartbeats to reach the store")
        a.kill()
    async with agent_socket(b.opamp_base_url) as ws:
        # A compressed first message, in sequence: the record is complete, no full state is asked.
        reply = await exchange(ws, heartbeat(uid, 4))
        assert reply.instance_uid == uid and not reply.flags & caps.REPORT_FULL_STATE
        agent = await agent_json(b, uid)
        assert agent["description"] == {
            "identifying_attributes": {"service.name": "otelcol-contrib"},
            "non_identifying_attributes": {},
        }
        assert (agent["connected"], agent["node"]) == (True, "node-b")
        # A gap is different: messages were lost, so the full state is asked for.
        assert (await exchange(ws, heartbeat(uid, 9))).flags & caps.REPORT_FULL_STATE
        # node-b owns it now despite node-a's stale record: a restart is pushed here.
        assert (await restart(b, uid))["delivery"] == "pushed"
        await expect_restart(ws, uid)


async def test_killed_node_before_its_liveness_was_written_costs_one_full_report(
    gateways: GatewayFactory, shared_redis: RedisServer
) -> None:
    # Default --offline-after: node-a keeps the heartbeats in memory and dies with them.
    a = gateways("node-a", shared_redis.url)
    b = gateways("node-b", shared_redis.url)
    uid = new_uid()
    async with agent_socket(a.opamp_base_url) as ws:
        await exchange(ws, report(uid))
        for seq in (1, 2, 3):
            await exchange(ws, heartbeat(uid, seq))
        assert (await agent_json(b, uid))["sequence_num"] == 0
        a.kill()
    async with agent_socket(b.opamp_base_url) as ws:
        # The store's sequence number is behind: OpAMP's repair, once (design principle 2) ...
        assert (await exchange(ws, heartbeat(uid, 4))).flags & caps.REPORT_FULL_STATE
        assert not (await exchange(ws, report(uid, 5))).flags & caps.REPORT_FULL_STATE
        # ... and then in step, with the record whole.
        assert (await exchange(ws, heartbeat(uid, 6))).flags == 0
        agent = await agent_json(b, uid)
        assert agent["sequence_num"] == 6 and (agent["connected"], agent["node"]) == (True, "node-b")
        assert agent["description"]["identifying_attributes"] == {"service.name": "otelcol-contrib"}


async def test_restart_for_an_http_agent_through_another_node(
    gateways: GatewayFactory, shared_redis: RedisServer
) -> None:
    a = gateways("node-a", shared_redis.url)
    b = gateways("node-b", shared_redis.url)
    uid = new_uid()
    async with httpx2.AsyncClient() as http:

        async def poll(gateway: GatewayProcess, msg: pb.AgentToServer) -> pb.ServerToAgent:
            return await http_poll(http, gateway.opamp_url, msg)

        await poll(a, report(uid))
        assert (await restart(b, uid))["delivery"] == "pending"
        reply = await poll(a, heartbeat(uid, 1))
        assert reply.HasField("command") and reply.command.type == pb.CommandType_Restart
        assert not (await poll(b, heartbeat(uid, 2))).HasField("command")
