"""A WebSocket agent's heartbeats stay in memory (gateway/node/liveness.py), yet the next node or
socket to get the agent never sees a false sequence gap, the store's last_seen keeps a connected agent
online, and the admin API shows the liveness of the agents its node holds."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import httpx2
import pytest

from gateway.node import duplicates
from gateway.proto import opamp_pb2 as pb
from tests.support.memory_store import MemoryStore
from tests.support.servers import run_node
from tests.support.waiting import eventually, uid
from tests.support.ws import agent_socket, exchange, heartbeat, report
from tests.support.ws_raw import RawAgent

pytestmark = pytest.mark.anyio


async def _heartbeats(ws: object, n: int, first: int, last: int) -> None:
    for seq in range(first, last + 1):
        reply = await exchange(ws, heartbeat(uid(n), seq))  # type: ignore[arg-type]
        assert reply.flags == 0 and not reply.HasField("error_response")


async def test_heartbeats_reach_the_store_when_the_socket_closes(tmp_path: Path) -> None:
    store = MemoryStore()
    async with run_node(tmp_path, store=store) as node:
        async with agent_socket(node.opamp_url) as ws:
            await exchange(ws, report(uid(1)))
            await node.services.writer.flush()
            await _heartbeats(ws, 1, 1, 5)
            await node.services.writer.flush()
            # Kept in memory while the socket is open ...
            assert store.records[uid(1)].sequence_num == 0
            async with httpx2.AsyncClient(base_url=node.admin_url) as admin:
                # ... though the admin API of the node holding it shows it.
                agent = (await admin.get(f"/api/v1/agents/{uuid.UUID(int=1)}")).json()
                assert agent["sequence_num"] == 5

        async def stored() -> bool:
            return store.records[uid(1)].sequence_num == 5

        await eventually(stored)


async def test_the_next_node_sees_no_gap_after_the_socket_closed(tmp_path: Path) -> None:
    store = MemoryStore()
    async with run_node(tmp_path / "a", store=store) as a, run_node(tmp_path / "b", store=store) as b:
        async with agent_socket(a.opamp_url) as ws:
            await exchange(ws, report(uid(2)))
            await _heartbeats(ws, 2, 1, 4)
        await a.services.writer.flush()
        await asyncio.sleep(0.1)
        await a.services.writer.flush()
        # Over WebSocket to node B, then an HTTP poll to node A: in step both times.
        async with agent_socket(b.opamp_url) as ws:
            await _heartbeats(ws, 2, 5, 6)
        await b.services.writer.flush()
        await asyncio.sleep(0.1)
        await b.services.writer.flush()
        async with httpx2.AsyncClient(base_url=a.opamp_url) as http:
            response = await http.post(
                "/v1/opamp",
                content=heartbeat(uid(2), 7).SerializeToString(),
                headers={"Content-Type": "application/x-protobuf"},
            )
        reply = pb.ServerToAgent.FromString(response.content)
        assert reply.flags == 0 and not reply.HasField("error_response")


async def test_reconnecting_before_the_old_socket_closed_sees_no_gap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The old socket is probed at once and briefly (a live one would make the newcomer a clone).
    monkeypatch.setattr(duplicates, "RECENT_SECONDS", 0.0)
    monkeypatch.setattr(duplicates, "PROBE_SECONDS", 0.2)
    async with run_node(tmp_path, store=MemoryStore()) as node:
        old = await RawAgent.open(node.opamp_url)
        try:
            await old.exchange(report(uid(3)))
            for seq in range(1, 4):
                assert (await old.exchange(heartbeat(uid(3), seq))).flags == 0
            # The agent's network dropped without a close (the old socket answers nothing more); it
            # reconnects to the same node.
            async with agent_socket(node.opamp_url) as new:
                await _heartbeats(new, 3, 4, 5)
        finally:
            old.close()


async def test_the_sweep_keeps_a_connected_agent_online_in_the_store(tmp_path: Path) -> None:
    store = MemoryStore()
    # offline_after 1 s: the sweep runs every 0.1 s and writes liveness 0.5 s old.
    async with run_node(tmp_path, store=store, offline_after=1.0) as node, agent_socket(node.opamp_url) as ws:
        await exchange(ws, report(uid(4)))
        enrolled = store.records[uid(4)].last_seen
        for seq in range(1, 16):
            await _heartbeats(ws, 4, seq, seq)
            await asyncio.sleep(0.1)
            stored = store.records[uid(4)]
            assert node.services.clock() - stored.last_seen < 1.0, "the store would show it offline"
        assert store.records[uid(4)].last_seen > enrolled
        assert store.records[uid(4)].sequence_num > 0
