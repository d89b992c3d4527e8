"""--agent-heartbeat-interval over the wire (gateway/opamp/heartbeat.py): raw WebSocket and HTTP
agents with ReportsHeartbeat and AcceptsOpAMPConnectionSettings get the interval once, in
connection_settings.opamp with a hash, from a server that advertises OffersConnectionSettings; not
on later messages, not on a reconnect, not over HTTP polls that read the record from the store; again
once the interval changes. The admin API names both capabilities."""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx2
import pytest

from gateway.opamp import capabilities as caps
from gateway.proto import opamp_pb2 as pb
from tests.support.servers import run_node
from tests.support.waiting import uid
from tests.support.ws import agent_socket, exchange, heartbeat, report

pytestmark = pytest.mark.anyio

WANTS = caps.REPORTS_STATUS | caps.REPORTS_HEARTBEAT | caps.ACCEPTS_OPAMP_CONNECTION_SETTINGS
OFFERS = pb.ServerCapabilities_OffersConnectionSettings


def _interval(reply: pb.ServerToAgent) -> int | None:
    assert not reply.HasField("error_response"), reply.error_response.error_message
    if not reply.HasField("connection_settings"):
        return None
    offer = reply.connection_settings
    assert len(offer.hash) == 32
    # Only the interval, and always explicitly (an opamp offer without it would mean 0: disabled).
    assert [f.name for f, _ in offer.opamp.ListFields()] == ["heartbeat_interval_seconds"]
    return offer.opamp.heartbeat_interval_seconds


async def _post(http: httpx2.AsyncClient, msg: pb.AgentToServer) -> pb.ServerToAgent:
    response = await http.post(
        "/v1/opamp", content=msg.SerializeToString(), headers={"Content-Type": "application/x-protobuf"}
    )
    assert response.status_code == 200
    return pb.ServerToAgent.FromString(response.content)


async def test_websocket_agent_gets_the_interval_once(tmp_path: Path) -> None:
    async with run_node(tmp_path, agent_heartbeat_interval=45) as node:
        async with agent_socket(node.opamp_url) as ws:
            first = await exchange(ws, report(uid(1), capabilities=WANTS))
            assert _interval(first) == 45
            assert first.capabilities == caps.SERVER_CAPABILITIES | OFFERS
            hash_ = first.connection_settings.hash
            for seq in range(1, 4):
                reply = await exchange(ws, heartbeat(uid(1), seq, capabilities=WANTS))
                assert _interval(reply) is None
                assert reply.capabilities & OFFERS
        # The agent reconnects (as a client applying the settings would): not offered again.
        async with agent_socket(node.opamp_url) as ws:
            assert _interval(await exchange(ws, heartbeat(uid(1), 4, capabilities=WANTS))) is None
        await node.services.writer.flush()
        stored = await node.services.store.get(uid(1))
        assert stored is not None and stored.offered_settings_hash == hash_
        # The admin API names both capabilities.
        async with httpx2.AsyncClient(base_url=node.admin_url) as admin:
            agent = (await admin.get(f"/api/v1/agents/{uuid.UUID(int=1)}")).json()
        assert {"ReportsHeartbeat", "AcceptsOpAMPConnectionSettings"} <= set(agent["capabilities"])
        assert agent["capabilities_bitmask"] == WANTS


async def test_websocket_agent_without_accepts_opamp_connection_settings_gets_none(tmp_path: Path) -> None:
    async with run_node(tmp_path, agent_heartbeat_interval=45) as node, agent_socket(node.opamp_url) as ws:
        reply = await exchange(ws, report(uid(2), capabilities=caps.REPORTS_STATUS | caps.REPORTS_HEARTBEAT))
        assert _interval(reply) is None
        # Gaining the capability is enough.
        assert _interval(await exchange(ws, heartbeat(uid(2), 1, capabilities=WANTS))) == 45


async def test_http_agent_gets_the_interval_once_across_polls(tmp_path: Path) -> None:
    async with (
        run_node(tmp_path, agent_heartbeat_interval=20) as node,
        httpx2.AsyncClient(base_url=node.opamp_url) as http,
    ):
        first = await _post(http, report(uid(3), capabilities=WANTS))
        assert _interval(first) == 20
        assert first.capabilities == caps.SERVER_CAPABILITIES | OFFERS
        for seq in range(1, 5):
            # Each poll reads the record (the writer's pending write, or the store) afresh.
            await node.services.writer.flush()
            assert _interval(await _post(http, heartbeat(uid(3), seq, capabilities=WANTS))) is None


async def test_a_new_interval_is_offered_again(tmp_path: Path) -> None:
    """The flag changed across a restart: every agent that got the old interval gets the new one once."""
    async with (
        run_node(tmp_path, agent_heartbeat_interval=30) as node,
        httpx2.AsyncClient(base_url=node.opamp_url) as http,
    ):
        assert _interval(await _post(http, report(uid(4), capabilities=WANTS))) == 30
    async with (
        run_node(tmp_path, agent_heartbeat_interval=90) as node,
        httpx2.AsyncClient(base_url=node.opamp_url) as http,
    ):
        assert _interval(await _post(http, heartbeat(uid(4), 1, capabilities=WANTS))) == 90
        assert _interval(await _post(http, heartbeat(uid(4), 2, capabilities=WANTS))) is None


async def test_a_reported_other_hash_is_answered_with_the_settings(tmp_path: Path) -> None:
    wants = WANTS | caps.REPORTS_CONNECTION_SETTINGS_STATUS
    async with run_node(tmp_path, agent_heartbeat_interval=30) as node, agent_socket(node.opamp_url) as ws:
        first = await exchange(ws, report(uid(5), capabilities=wants))
        assert _interval(first) == 30
        # The agent says it applied other settings (it lost ours): the server MUST send them again.
        msg = heartbeat(uid(5), 1, capabilities=wants)
        msg.connection_settings_status.last_connection_settings_hash = b"\x01" * 32
        msg.connection_settings_status.status = pb.ConnectionSettingsStatuses_APPLIED
        again = await exchange(ws, msg)
        assert _interval(again) == 30 and again.connection_settings.hash == first.connection_settings.hash
        # It reports ours: nothing more.
        msg = heartbeat(uid(5), 2, capabilities=wants)
        msg.connection_settings_status.last_connection_settings_hash = first.connection_settings.hash
        msg.connection_settings_status.status = pb.ConnectionSettingsStatuses_APPLIED
        assert _interval(await exchange(ws, msg)) is None


async def test_zero_offers_nothing(tmp_path: Path) -> None:
    async with run_node(tmp_path, agent_heartbeat_interval=0) as node:
        async with agent_socket(node.opamp_url) as ws:
            reply = await exchange(ws, report(uid(6), capabilities=WANTS))
            assert _interval(reply) is None and reply.capabilities == caps.SERVER_CAPABILITIES
        async with httpx2.AsyncClient(base_url=node.opamp_url) as http:
            reply = await _post(http, report(uid(7), capabilities=WANTS))
            assert _interval(reply) is None and reply.capabilities == caps.SERVER_CAPABILITIES
