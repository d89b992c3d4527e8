"""The command sweep: one query per node per minute finds the commands other nodes stored for the
agents on this node's sockets, without reading their records."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import httpx2
import pytest

from gateway.fleet.agent import AgentState
from gateway.node import command_sweep
from gateway.proto import opamp_pb2 as pb
from gateway.store.base import StoreUnavailable
from gateway.store.elasticsearch import ElasticsearchStore
from gateway.store.elasticsearch_client import make_client
from gateway.store.sqlite import SQLiteStore
from tests.support.es import EsAliases
from tests.support.memory_store import MemoryStore
from tests.support.opamp_http import poll as http_poll
from tests.support.servers import Node, run_node
from tests.support.waiting import eventually, uid
from tests.support.ws import agent_socket, exchange, heartbeat, recv, report

pytestmark = pytest.mark.anyio

RESTART = pb.CommandType_Restart


class GetCountingSQLiteStore(SQLiteStore):
    """A node's SQLite store that counts the agent records it is asked for."""

    gets = 0

    async def get(self, uid: bytes) -> AgentState | None:
        self.gets += 1
        return await super().get(uid)


class GetCountingElasticsearchStore(ElasticsearchStore):
    gets = 0

    async def get(self, uid: bytes) -> AgentState | None:
        self.gets += 1
        return await super().get(uid)


class SweepStore(MemoryStore):
    """Lists pending commands from a snapshot while `frozen` (an index not refreshed since), or fails."""

    def __init__(self) -> None:
        super().__init__()
        self.frozen: dict[bytes, int] | None = None
        self.failing = False

    async def pending_commands(self, limit: int) -> dict[bytes, int]:
        listed = await super().pending_commands(limit)
        if self.failing:
            raise StoreUnavailable("store down")
        return dict(self.frozen) if self.frozen is not None else listed


@pytest.fixture
async def store() -> SweepStore:
    return SweepStore()


@pytest.fixture
async def node(tmp_path: Path, store: SweepStore) -> AsyncIterator[Node]:
    async with run_node(tmp_path, store=store) as running:
        yield running


def store_command(store: MemoryStore, n: int, **fields: object) -> None:
    """What another node's admin API leaves in a record when it cannot reach this node."""
    store.records[uid(n)] = replace(store.records[uid(n)], pending_command=RESTART, **fields)  # type: ignore[arg-type]


async def test_a_command_another_node_stored_is_pushed_without_reading_a_record(tmp_path: Path) -> None:
    # Two nodes on one SQLite file and no shared bus: node-b cannot reach node-a's socket.
    a_store = GetCountingSQLiteStore(str(tmp_path / "gateway.db"))
    async with (
        run_node(tmp_path, node_id="node-a", store=a_store) as a,
        run_node(tmp_path, node_id="node-b") as b,
        agent_socket(a.opamp_url) as ws,
        agent_socket(a.opamp_url) as other,
        httpx2.AsyncClient(base_url=a.opamp_url) as http,
        httpx2.AsyncClient(base_url=b.admin_url) as admin_b,
    ):
        await exchange(ws, report(uid(1)))
        await exchange(other, report(uid(2)))
        await http_poll(http, "/v1/opamp", report(uid(3)))
        await a.services.writer.flush()
        for n in (1, 3):
            response = await admin_b.post(f"/api/v1/agents/{uuid.UUID(int=n)}/restart")
            assert response.json()["delivery"] == "pending"
        gets = a_store.gets
        assert await a.services.command_sweep.run() == 1
        assert a_store.gets == gets
        pushed = await recv(ws)
        assert pushed.instance_uid == uid(1) and pushed.command.type == RESTART
        # Delivered, and cleared durably before the sweep returned; the HTTP agent's waits for its poll.
        first = await b.services.store.get(uid(1))
        assert first is not None and first.pending_command is None
        polling = await b.services.store.get(uid(3))
        assert polling is not None and polling.pending_command == RESTART
        assert await a.services.command_sweep.run() == 0
        assert a_store.gets == gets
        assert not (await exchange(ws, heartbeat(uid(1), 1))).HasField("command")
        assert not (await exchange(other, heartbeat(uid(2), 1))).HasField("command")


async def test_on_elasticsearch_the_sweep_is_one_search(tmp_path: Path, es_aliases: EsAliases) -> None:
    double = es_aliases.double
    a_store = GetCountingElasticsearchStore(
        make_client(es_aliases.settings()), agents_alias=es_aliases.agents, configs_alias=es_aliases.configs
    )
    async with (
        run_node(tmp_path, node_id="node-a", store=a_store) as a,
        run_node(tmp_path, node_id="node-b", store=es_aliases.store(refresh=None)) as b,
        agent_socket(a.opamp_url) as ws,
        httpx2.AsyncClient(base_url=b.admin_url) as admin_b,
    ):
        # One socket carrying 20 agents (a concentrating proxy).
        for n in range(50, 70):
            await exchange(ws, report(uid(n)))
        await a.services.writer.flush()
        response = await admin_b.post(f"/api/v1/agents/{uuid.UUID(int=55)}/restart")
        assert response.json()["delivery"] == "pending"
        double.refresh()
        gets, searches = a_store.gets, double.stats.requests["search"]
        assert await a.services.command_sweep.run() == 1
        assert (a_store.gets, double.stats.requests["search"]) == (gets, searches + 1)
        pushed = await recv(ws)
        assert pushed.instance_uid == uid(55) and pushed.command.type == RESTART
        double.refresh()
        assert await a.services.command_sweep.run() == 0
        assert (a_store.gets, double.stats.requests["search"]) == (gets, searches + 2)


async def test_a_listing_older_than_the_push_does_not_restart_the_agent_twice(
    node: Node, store: SweepStore
) -> None:
    services = node.services
    async with agent_socket(node.opamp_url) as ws:
        await exchange(ws, report(uid(10)))
        await eventually(lambda: services.writer.depth == 0 and uid(10) in store.records)
        store_command(store, 10)
        store.frozen = {uid(10): RESTART}
        assert await services.command_sweep.run() == 1
        assert (await recv(ws)).command.type == RESTART
        assert store.records[uid(10)].pending_command is None
        # The listing still shows it (not refreshed since): one realtime read finds it delivered.
        reads = store.reads
        assert await services.command_sweep.run() == 0
        assert await services.command_sweep.run() == 0
        assert store.reads == reads + 2
        assert not (await exchange(ws, heartbeat(uid(10), 1))).HasField("command")
        # Requested again: the read finds it pending, so it goes out.
        store_command(store, 10)
        assert await services.command_sweep.run() == 1
        assert (await recv(ws)).command.type == RESTART
        # Once the listing no longer shows it, the next request costs no read at all.
        store.frozen = None
        assert await services.command_sweep.run() == 0
        store_command(store, 10)
        reads = store.reads
        assert await services.command_sweep.run() == 1
        assert store.reads == reads
        assert (await recv(ws)).command.type == RESTART


async def test_past_the_limit_the_agents_seen_last_come_first(
    node: Node, store: SweepStore, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    services = node.services
    monkeypatch.setattr(command_sweep, "SWEEP_LIMIT", 2)
    async with agent_socket(node.opamp_url) as ws:
        for n in (20, 21, 22):
            await exchange(ws, report(uid(n)))
        await eventually(lambda: services.writer.depth == 0 and len(store.records) == 3)
        for n, last_seen in ((20, 5.0), (21, 7.0), (22, 6.0)):
            store_command(store, n, last_seen=last_seen)
        with caplog.at_level(logging.WARNING, logger="gateway.node.command_sweep"):
            assert await services.command_sweep.run() == 2
        assert "2 agents have a command waiting, the most one sweep reads" in caplog.text
        assert {(await recv(ws)).instance_uid for _ in range(2)} == {uid(21), uid(22)}
        assert store.records[uid(20)].pending_command == RESTART
        # The next sweep gets to it.
        assert await services.command_sweep.run() == 1
        assert (await recv(ws)).instance_uid == uid(20)


async def test_a_failing_store_skips_one_sweep(node: Node, store: SweepStore) -> None:
    services = node.services
    async with agent_socket(node.opamp_url) as ws:
        await exchange(ws, report(uid(30)))
        await eventually(lambda: services.writer.depth == 0 and uid(30) in store.records)
        store_command(store, 30)
        store.failing = True
        assert await services.command_sweep.run() == 0
        store.failing = False
        assert await services.command_sweep.run() == 1
        assert (await recv(ws)).command.type == RESTART


async def test_a_node_without_websocket_agents_asks_nothing(node: Node, store: SweepStore) -> None:
    async with httpx2.AsyncClient(base_url=node.opamp_url) as http:
        await http_poll(http, "/v1/opamp", report(uid(40)))
    await eventually(lambda: node.services.writer.depth == 0 and uid(40) in store.records)
    store_command(store, 40)
    assert await node.services.command_sweep.run() == 0
    assert store.pending_queries == 0
    assert store.records[uid(40)].pending_command == RESTART


async def test_a_listing_older_than_an_admin_restart_does_not_make_the_sweep_push_it_again(
    node: Node, store: SweepStore
) -> None:
    services = node.services
    async with agent_socket(node.opamp_url) as ws, httpx2.AsyncClient(base_url=node.admin_url) as admin:
        await exchange(ws, report(uid(11)))
        await eventually(lambda: services.writer.depth == 0 and uid(11) in store.records)
        # The restart is stored, then pushed by the router (and cleared), while the listing the sweep
        # reads has not caught up (Elasticsearch between refreshes).
        response = await admin.post(f"/api/v1/agents/{uuid.UUID(bytes=uid(11))}/restart")
        assert response.json()["delivery"] == "pushed"
        assert (await recv(ws)).command.type == RESTART
        store.frozen = {uid(11): RESTART}
        assert await services.command_sweep.run() == 0
        assert not (await exchange(ws, heartbeat(uid(11), 1))).HasField("command")
