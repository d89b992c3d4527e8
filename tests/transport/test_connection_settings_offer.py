"""Connection settings over the wire (issue 19): settings PUT through the admin API are offered to
raw WebSocket and HTTP agents with ReportsOwnMetrics in connection_settings.own_metrics, with a
hash, from a server that then advertises OffersConnectionSettings; pushed to a held socket when they
change; not offered again once got; the agent's connection_settings_status is shown in its JSON."""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx2
import pytest

from gateway.opamp import capabilities as caps
from gateway.proto import opamp_pb2 as pb
from tests.support.servers import run_node
from tests.support.waiting import uid
from tests.support.ws import agent_socket, exchange, heartbeat, recv, report

pytestmark = pytest.mark.anyio

METRICS = pb.AgentCapabilities_ReportsOwnMetrics
WANTS = caps.REPORTS_STATUS | METRICS | caps.REPORTS_CONNECTION_SETTINGS_STATUS
OFFERS = pb.ServerCapabilities_OffersConnectionSettings
ENDPOINT = "https://otlp.example.com/v1/metrics"


def _body(endpoint: str = ENDPOINT) -> dict[str, object]:
    return {
        "selector": {"match": {"service.name": "otelcol-contrib"}},
        "own_metrics": {"destination_endpoint": endpoint, "headers": {"Authorization": "Bearer secret"}},
        "own_logs": {"destination_endpoint": "https://otlp.example.com/v1/logs"},
    }


def _metrics_endpoint(reply: pb.ServerToAgent) -> str | None:
    assert not reply.HasField("error_response"), reply.error_response.error_message
    if not reply.HasField("connection_settings"):
        return None
    offer = reply.connection_settings
    assert len(offer.hash) == 32
    # Only what the agent has the capability for: no own_logs, no opamp part.
    assert [f.name for f, _ in offer.ListFields()] == ["hash", "own_metrics"]
    return offer.own_metrics.destination_endpoint


async def _post(http: httpx2.AsyncClient, msg: pb.AgentToServer) -> pb.ServerToAgent:
    response = await http.post(
        "/v1/opamp", content=msg.SerializeToString(), headers={"Content-Type": "application/x-protobuf"}
    )
    assert response.status_code == 200
    return pb.ServerToAgent.FromString(response.content)


def _applied(msg: pb.AgentToServer, hash_: bytes) -> pb.AgentToServer:
    msg.connection_settings_status.last_connection_settings_hash = hash_
    msg.connection_settings_status.status = pb.ConnectionSettingsStatuses_APPLIED
    return msg


async def test_admin_api_round_trip_and_bad_fields(tmp_path: Path) -> None:
    async with run_node(tmp_path) as node, httpx2.AsyncClient(base_url=node.admin_url) as admin:
        assert (await admin.get("/api/v1/connection-settings")).json() == {"connection_settings": []}
        created = await admin.put("/api/v1/connection-settings/telemetry", json=_body())
        assert created.status_code == 201
        shown = created.json()
        assert shown["version"] == 1 and shown["own_metrics"]["destination_endpoint"] == ENDPOINT
        # GET -> PUT back changes nothing.
        got = (await admin.get("/api/v1/connection-settings/telemetry")).json()
        assert got == shown
        again = await admin.put("/api/v1/connection-settings/telemetry", json=got)
        assert again.status_code == 200 and again.json()["version"] == 1
        listed = (await admin.get("/api/v1/connection-settings")).json()["connection_settings"]
        assert [s["name"] for s in listed] == ["telemetry"]
        bad = await admin.put(
            "/api/v1/connection-settings/telemetry",
            json={**_body(), "own_traces": {"destination_endpoint": "ftp://x"}},
        )
        assert bad.status_code == 400
        assert bad.json()["error"]["message"].startswith("own_traces.destination_endpoint:")
        not_json = await admin.put(
            "/api/v1/connection-settings/telemetry",
            content=b"{",
            headers={"Content-Type": "application/json"},
        )
        assert not_json.status_code == 400
        assert (await admin.delete("/api/v1/connection-settings/telemetry")).status_code == 204
        assert (await admin.delete("/api/v1/connection-settings/telemetry")).status_code == 404
        assert (await admin.get("/api/v1/connection-settings/telemetry")).status_code == 404


async def test_websocket_agent_is_offered_own_metrics_pushed_on_change_and_status_shown(
    tmp_path: Path,
) -> None:
    async with (
        run_node(tmp_path, agent_heartbeat_interval=0) as node,
        httpx2.AsyncClient(base_url=node.admin_url) as admin,
    ):
        async with agent_socket(node.opamp_url) as ws:
            first = await exchange(ws, report(uid(1), capabilities=WANTS))
            assert _metrics_endpoint(first) is None
            assert first.capabilities == caps.SERVER_CAPABILITIES
            assert (await admin.put("/api/v1/connection-settings/telemetry", json=_body())).status_code == 201
            pushed = await recv(ws)
            assert _metrics_endpoint(pushed) == ENDPOINT
            assert pushed.capabilities == caps.SERVER_CAPABILITIES | OFFERS
            hash_ = pushed.connection_settings.hash
            reply = await exchange(ws, _applied(heartbeat(uid(1), 1, capabilities=WANTS), hash_))
            assert _metrics_endpoint(reply) is None
            assert _metrics_endpoint(await exchange(ws, heartbeat(uid(1), 2, capabilities=WANTS))) is None
            # A change of the settings is pushed again, with another hash.
            changed = await admin.put(
                "/api/v1/connection-settings/telemetry", json=_body("https://new.example.com/v1/m")
            )
            assert changed.json()["version"] == 2
            again = await recv(ws)
            assert _metrics_endpoint(again) == "https://new.example.com/v1/m"
            assert again.connection_settings.hash != hash_
        await node.services.writer.flush()
        agent = (await admin.get(f"/api/v1/agents/{uuid.UUID(int=1)}")).json()
        assert agent["connection_settings"]["status"] == "APPLIED"
        assert agent["connection_settings"]["last_connection_settings_hash"] == hash_.hex()
        assert agent["connection_settings"]["offered_hash"] == again.connection_settings.hash.hex()
        assert "ReportsOwnMetrics" in agent["capabilities"]


async def test_http_agent_is_offered_own_metrics_once_and_status_shown(tmp_path: Path) -> None:
    async with (
        run_node(tmp_path) as node,
        httpx2.AsyncClient(base_url=node.admin_url) as admin,
        httpx2.AsyncClient(base_url=node.opamp_url) as http,
    ):
        assert (await admin.put("/api/v1/connection-settings/telemetry", json=_body())).status_code == 201
        first = await _post(http, report(uid(2), capabilities=WANTS))
        assert _metrics_endpoint(first) == ENDPOINT
        assert first.capabilities & OFFERS
        hash_ = first.connection_settings.hash
        for seq in range(1, 4):
            await node.services.writer.flush()
            msg = heartbeat(uid(2), seq, capabilities=WANTS)
            if seq == 1:
                msg.connection_settings_status.last_connection_settings_hash = hash_
                msg.connection_settings_status.status = pb.ConnectionSettingsStatuses_FAILED
                msg.connection_settings_status.error_message = "endpoint unreachable"
            assert _metrics_endpoint(await _post(http, msg)) is None
        # An agent without the capability gets nothing.
        other = await _post(http, report(uid(3), capabilities=caps.REPORTS_STATUS))
        assert not other.HasField("connection_settings")
        await node.services.writer.flush()
        agent = (await admin.get(f"/api/v1/agents/{uuid.UUID(int=2)}")).json()
        assert agent["connection_settings"] == {
            "status": "FAILED",
            "last_connection_settings_hash": hash_.hex(),
            "error_message": "endpoint unreachable",
            "offered_hash": hash_.hex(),
        }
        # Which settings give each part it takes; the agent without the capability takes none.
        assert agent["connection_settings_sources"] == {"own_metrics": "telemetry", "other_connections": {}}
        without = (await admin.get(f"/api/v1/agents/{uuid.UUID(int=3)}")).json()
        assert without["connection_settings"] is None
        assert without["connection_settings_sources"] == {"other_connections": {}}
        listed = (await admin.get("/api/v1/agents")).json()["agents"]
        assert [a["connection_settings_sources"] for a in listed] == [
            {"own_metrics": "telemetry", "other_connections": {}},
            {"other_connections": {}},
        ]
        assert (await admin.delete("/api/v1/connection-settings/telemetry")).status_code == 204
        await node.services.config_cache.refresh("test")
        assert (
            "connection_settings_sources"
            not in (await admin.get(f"/api/v1/agents/{uuid.UUID(int=2)}")).json()
        )
