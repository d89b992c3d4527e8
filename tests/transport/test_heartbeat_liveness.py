"""An agent's liveness follows its heartbeat: offline after 3 missed intervals of
--agent-heartbeat-interval, never sooner than --offline-after; a WebSocket agent without
ReportsHeartbeat whose socket answers pings stays open and online however long it is silent, and an
agent that reports heartbeats is idled out only after 3 intervals, even when --idle-timeout is
shorter."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx2
import pytest

from gateway.opamp import capabilities as caps
from gateway.proto import opamp_pb2 as pb
from tests.support.servers import run_node
from tests.support.waiting import eventually, uid
from tests.support.ws import agent_socket, closed_with, exchange, report

pytestmark = pytest.mark.anyio

HEARTBEATS = caps.REPORTS_STATUS | caps.REPORTS_HEARTBEAT | caps.ACCEPTS_OPAMP_CONNECTION_SETTINGS
SILENT = caps.REPORTS_STATUS | caps.REPORTS_HEALTH


async def _agent(admin: httpx2.AsyncClient, n: int) -> dict[str, Any]:
    response = await admin.get(f"/api/v1/agents/{uuid.UUID(int=n)}")
    assert response.status_code == 200
    body: dict[str, Any] = response.json()
    return body


async def _listed(admin: httpx2.AsyncClient, status: str) -> set[str]:
    """The uids the store's status query returns (not the node's held records)."""
    response = await admin.get("/api/v1/agents", params={"status": status})
    assert response.status_code == 200
    return {a["instance_uid"] for a in response.json()["agents"]}


async def _throughout(seconds: float, check: Callable[[], Awaitable[None]]) -> None:
    """Run `check` again and again for `seconds`: what must hold the whole time, not just at the end."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        await check()
        await asyncio.sleep(0.05)


async def test_an_agent_stays_online_within_three_heartbeat_intervals(tmp_path: Path) -> None:
    # --offline-after 1 s, heartbeats every 2 s: offline once 6 s pass without a message.
    async with run_node(tmp_path, offline_after=1.0, agent_heartbeat_interval=2) as node:
        async with httpx2.AsyncClient(base_url=node.opamp_url) as http:
            sent = time.monotonic()
            response = await http.post(
                "/v1/opamp",
                content=report(uid(1), capabilities=HEARTBEATS).SerializeToString(),
                headers={"Content-Type": "application/x-protobuf"},
            )
            assert (
                pb.ServerToAgent.FromString(
                    response.content
                ).connection_settings.opamp.heartbeat_interval_seconds
                == 2
            )
        last_message = time.monotonic()
        name = str(uuid.UUID(int=1))
        async with httpx2.AsyncClient(base_url=node.admin_url) as admin:

            async def online() -> None:
                seen = ((await _agent(admin, 1))["status"], name in await _listed(admin, "online"))
                hidden = name not in await _listed(admin, "offline")
                # Only while the answers surely came within 3 intervals of the message: a machine
                # that stalls this test for seconds would make "offline" the right answer.
                if time.monotonic() - sent < 6.0:
                    assert seen == ("online", True) and hidden

            # Past --offline-after (twice over), within 3 intervals: online in the view and the store.
            await _throughout(2.5, online)

            async def offline() -> bool:
                return (await _agent(admin, 1))["status"] == "offline" and name in await _listed(
                    admin, "offline"
                )

            await eventually(offline, timeout=8.0, interval=0.1, what="offline after 3 missed heartbeats")
            assert time.monotonic() - last_message >= 6.0 - 0.2
            summary = (await admin.get("/api/v1/fleet/summary")).json()
            assert summary["by_status"]["offline"] == 1


async def test_a_silent_websocket_agent_without_heartbeats_stays_open_and_online(tmp_path: Path) -> None:
    # The idle timeout (0.5 s) and --offline-after (1 s) pass many times over while the agent, which
    # does not report heartbeats, says nothing; its socket answers the server's pings.
    async with (
        run_node(
            tmp_path,
            offline_after=1.0,
            idle_timeout=0.5,
            agent_heartbeat_interval=0,
            ws_ping_interval=0.2,
            ws_ping_timeout=2.0,
        ) as node,
        agent_socket(node.opamp_url, ping_interval=None) as silent,
        agent_socket(node.opamp_url, ping_interval=None) as beating,
        httpx2.AsyncClient(base_url=node.admin_url) as admin,
    ):
        assert not (await exchange(silent, report(uid(2), capabilities=SILENT))).HasField("error_response")
        assert not (await exchange(beating, report(uid(3), capabilities=HEARTBEATS))).HasField(
            "error_response"
        )
        # The agent that reports heartbeats and sends none is idled out (3 x 0 s = the idle timeout).
        code, reason = await closed_with(beating, timeout=5.0)
        assert code == 1000 and "idle" in reason
        name = str(uuid.UUID(int=2))

        async def online() -> None:
            agent = await _agent(admin, 2)
            assert agent["status"] == "online" and agent["connected"] is True
            assert name in await _listed(admin, "online")

        await _throughout(3.0, online)
        # Still open: it answers a message at once.
        reply = await exchange(
            silent, pb.AgentToServer(instance_uid=uid(2), sequence_num=1, capabilities=SILENT)
        )
        assert not reply.HasField("error_response") and reply.flags == 0


async def test_the_idle_timeout_is_at_least_three_heartbeat_intervals(tmp_path: Path) -> None:
    # --idle-timeout 0.5 s, but heartbeats every 1 s: a socket is idle only after 3 s without one.
    async with (
        run_node(tmp_path, idle_timeout=0.5, agent_heartbeat_interval=1, ws_ping_interval=0.2) as node,
        agent_socket(node.opamp_url, ping_interval=None) as ws,
    ):
        assert not (await exchange(ws, report(uid(4), capabilities=HEARTBEATS))).HasField("error_response")
        started = time.monotonic()
        code, reason = await closed_with(ws, timeout=6.0)
        assert code == 1000 and "idle: no message for 3s" in reason
        assert time.monotonic() - started >= 3.0 - 0.1
