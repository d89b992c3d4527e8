"""Connection settings across real gateway processes: one SQLite file, a real redis-server, raw agents.

Settings PUT on one node's admin API reach a WebSocket agent held by another node (pushed, carried by
the ConfigsChanged event) and an HTTP agent polling the other node (in its next reply); the status the
agents report is shown by both nodes.
"""

from __future__ import annotations

from typing import Any

import httpx2
import pytest

from gateway.opamp import capabilities as caps
from gateway.proto import opamp_pb2 as pb
from harness.redis_server import RedisServer
from tests.integration.conftest import GatewayFactory
from tests.integration.nodes import admin_json, agent_json, eventually, new_uid
from tests.support.opamp_http import poll as http_poll
from tests.support.ws import agent_socket, exchange, heartbeat, recv, report

pytestmark = pytest.mark.anyio

RECEIVE_TIMEOUT = 10.0
WANTS = caps.REPORTS_STATUS | pb.AgentCapabilities_ReportsOwnMetrics | caps.REPORTS_CONNECTION_SETTINGS_STATUS
ENDPOINT = "https://otlp.example.com/v1/metrics"


def _body(endpoint: str) -> dict[str, Any]:
    return {
        "selector": {"match": {"service.name": "otelcol-contrib"}},
        "own_metrics": {"destination_endpoint": endpoint},
    }


def _applied(uid: bytes, seq: int, hash_: bytes) -> pb.AgentToServer:
    msg = heartbeat(uid, seq, WANTS)
    msg.connection_settings_status.last_connection_settings_hash = hash_
    msg.connection_settings_status.status = pb.ConnectionSettingsStatuses_APPLIED
    return msg


async def test_settings_put_on_one_node_reach_agents_on_the_other(
    gateways: GatewayFactory, shared_redis: RedisServer
) -> None:
    a = gateways("node-a", shared_redis.url)
    b = gateways("node-b", shared_redis.url)
    ws_uid, http_uid = new_uid(), new_uid()
    async with (
        agent_socket(a.opamp_base_url) as ws,
        httpx2.AsyncClient(trust_env=False) as http,
    ):
        first = await exchange(ws, report(ws_uid, 0, WANTS), RECEIVE_TIMEOUT)
        assert not first.HasField("connection_settings")
        assert not (await http_poll(http, a.opamp_url, report(http_uid, 0, WANTS))).HasField(
            "connection_settings"
        )
        await admin_json(b, "PUT", "/api/v1/connection-settings/telemetry", expect=201, json=_body(ENDPOINT))
        pushed = await recv(ws, RECEIVE_TIMEOUT)
        assert pushed.instance_uid == ws_uid
        assert pushed.connection_settings.own_metrics.destination_endpoint == ENDPOINT
        assert pushed.capabilities & pb.ServerCapabilities_OffersConnectionSettings
        hash_ = pushed.connection_settings.hash
        reply = await exchange(ws, _applied(ws_uid, 1, hash_), RECEIVE_TIMEOUT)
        assert not reply.HasField("connection_settings")
        # The HTTP agent polls node-a: its next reply carries the same offer (the same hash).
        polled = await http_poll(http, a.opamp_url, heartbeat(http_uid, 1, WANTS))
        assert polled.connection_settings == pushed.connection_settings
        again = await http_poll(http, a.opamp_url, _applied(http_uid, 2, hash_))
        assert not again.HasField("connection_settings")

        for node in (a, b):
            for uid in (ws_uid, http_uid):

                async def shown(node: Any = node, uid: bytes = uid) -> bool:
                    status = (await agent_json(node, uid))["connection_settings"]
                    return status is not None and status["status"] == "APPLIED"

                await eventually(shown, what=f"{node.name} to show the applied settings")
                status = (await agent_json(node, uid))["connection_settings"]
                assert status["last_connection_settings_hash"] == status["offered_hash"] == hash_.hex()
