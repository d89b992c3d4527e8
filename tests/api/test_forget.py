"""Forgetting agents (issue 20, finding 10): DELETE /api/v1/agents/{uid} and the --forget-after
sweep, over real sockets on an in-process node with a SQLite file."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import httpx2
import pytest

from gateway.fleet.agent import AgentState
from gateway.node import liveness as liveness_module
from gateway.proto import opamp_pb2 as pb
from gateway.store.base import StoreUnavailable
from tests.support.memory_store import MemoryStore
from tests.support.servers import Node, run_node
from tests.support.waiting import eventually, uid
from tests.support.ws import agent_socket, exchange, report

pytestmark = pytest.mark.anyio

Send = Callable[[bytes], Awaitable[None]]


def _text(n: int) -> str:
    return str(uuid.UUID(bytes=uid(n)))


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    async with run_node(tmp_path, offline_after=0.5, agent_heartbeat_interval=0) as running:
        yield running


@pytest.fixture
async def admin(node: Node) -> AsyncIterator[httpx2.AsyncClient]:
    async with httpx2.AsyncClient(base_url=node.admin_url) as client:
        yield client


@pytest.fixture
async def send(node: Node) -> AsyncIterator[Send]:
    async with httpx2.AsyncClient(base_url=node.opamp_url) as client:

        async def _send(agent: bytes) -> None:
            response = await client.post(
                "/v1/opamp",
                content=report(agent).SerializeToString(),
                headers={"Content-Type": "application/x-protobuf"},
            )
            assert response.status_code == 200

        yield _send


async def _forget_once_offline(admin: httpx2.AsyncClient, text: str) -> None:
    """DELETE until the agent is offline (409 before), then expect 204."""

    async def deleted() -> bool:
        response = await admin.delete(f"/api/v1/agents/{text}")
        assert response.status_code in (204, 409), response.text
        return response.status_code == 204

    await eventually(deleted, what=f"agent {text} to be forgotten")


async def test_delete_forgets_an_offline_agent(admin: httpx2.AsyncClient, send: Send) -> None:
    await send(uid(1))
    await send(uid(2))
    await _forget_once_offline(admin, _text(1))
    assert (await admin.get(f"/api/v1/agents/{_text(1)}")).status_code == 404
    listed = [a["instance_uid"] for a in (await admin.get("/api/v1/agents")).json()["agents"]]
    assert listed == [_text(2)]
    again = await admin.delete(f"/api/v1/agents/{_text(1)}")
    assert again.status_code == 404 and again.json()["error"]["code"] == "not_found"
    metrics = (await admin.get("/metrics")).text
    assert 'opamp_gateway_agents_forgotten_total{reason="admin"} 1.0' in metrics


async def test_a_forgotten_agent_that_comes_back_enrolls_again(admin: httpx2.AsyncClient, send: Send) -> None:
    await send(uid(3))
    await _forget_once_offline(admin, _text(3))
    await send(uid(3))
    assert (await admin.get(f"/api/v1/agents/{_text(3)}")).status_code == 200


async def test_delete_refuses_a_connected_agent(tmp_path: Path) -> None:
    async with (
        run_node(tmp_path, offline_after=60.0) as node,
        httpx2.AsyncClient(base_url=node.admin_url) as admin,
        httpx2.AsyncClient(base_url=node.opamp_url) as opamp,
    ):
        response = await opamp.post(
            "/v1/opamp",
            content=report(uid(4)).SerializeToString(),
            headers={"Content-Type": "application/x-protobuf"},
        )
        assert response.status_code == 200
        polled = await admin.delete(f"/api/v1/agents/{_text(4)}")
        assert polled.status_code == 409 and polled.json()["error"]["code"] == "connected"
        async with agent_socket(node.opamp_url) as ws:
            await exchange(ws, report(uid(5)))
            response = await admin.delete(f"/api/v1/agents/{_text(5)}")
            assert response.status_code == 409
            assert "websocket on node test-node" in response.json()["error"]["message"]
        assert (await admin.get(f"/api/v1/agents/{_text(5)}")).status_code == 200


@pytest.mark.parametrize("text", ["nope", str(uuid.UUID(int=99)), str(uuid.UUID(int=1)).upper()])
async def test_delete_of_an_unknown_agent_is_404(admin: httpx2.AsyncClient, text: str) -> None:
    response = await admin.delete(f"/api/v1/agents/{text}")
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"


async def test_the_route_lists_both_methods(admin: httpx2.AsyncClient) -> None:
    response = await admin.post(f"/api/v1/agents/{_text(1)}")
    assert response.status_code == 405
    assert set(response.headers["allow"].replace(" ", "").split(",")) >= {"GET", "DELETE"}


async def test_forget_after_sweeps_agents_not_seen(tmp_path: Path) -> None:
    async with (
        run_node(tmp_path, offline_after=0.2, forget_after=0.5, agent_heartbeat_interval=0) as node,
        httpx2.AsyncClient(base_url=node.admin_url) as admin,
        httpx2.AsyncClient(base_url=node.opamp_url) as opamp,
    ):
        response = await opamp.post(
            "/v1/opamp",
            content=report(uid(7)).SerializeToString(),
            headers={"Content-Type": "application/x-protobuf"},
        )
        assert response.status_code == 200
        assert (await admin.get(f"/api/v1/agents/{_text(7)}")).status_code == 200

        async def forgotten() -> bool:
            return (await admin.get(f"/api/v1/agents/{_text(7)}")).status_code == 404

        await eventually(forgotten, what="the retention sweep to forget the agent")
        metrics = (await admin.get("/metrics")).text
        assert 'opamp_gateway_agents_forgotten_total{reason="retention"} 1.0' in metrics


class _Flaky(MemoryStore):
    """A store whose reads or deletes fail, or whose record goes (another node) before the delete."""

    def __init__(self) -> None:
        super().__init__()
        self.fail_get = self.fail_forget = self.gone_first = False

    async def get(self, uid: bytes) -> AgentState | None:
        if self.fail_get:
            raise StoreUnavailable("reads are down")
        return await super().get(uid)

    async def forget(self, uid: bytes) -> bytes | None:
        if self.fail_forget:
            raise StoreUnavailable("deletes are down")
        if self.gone_first:
            await super().forget(uid)
            return None
        return await super().forget(uid)


async def test_delete_when_the_store_fails_or_another_node_was_first(tmp_path: Path) -> None:
    store = _Flaky()
    async with (
        run_node(tmp_path, store=store, offline_after=0.2, agent_heartbeat_interval=0) as node,
        httpx2.AsyncClient(base_url=node.admin_url) as admin,
        httpx2.AsyncClient(base_url=node.opamp_url) as opamp,
    ):
        response = await opamp.post(
            "/v1/opamp",
            content=report(uid(8)).SerializeToString(),
            headers={"Content-Type": "application/x-protobuf"},
        )
        assert response.status_code == 200
        await node.services.writer.flush()

        async def offline() -> bool:
            body = (await admin.get(f"/api/v1/agents/{_text(8)}")).json()
            return bool(body["status"] == "offline")

        await eventually(offline)
        store.fail_get = True
        failed = await admin.delete(f"/api/v1/agents/{_text(8)}")
        assert failed.status_code == 503 and "reads are down" in failed.text
        store.fail_get, store.fail_forget = False, True
        failed = await admin.delete(f"/api/v1/agents/{_text(8)}")
        assert failed.status_code == 503 and "deletes are down" in failed.text
        assert failed.headers["Retry-After"]
        store.fail_forget, store.gone_first = False, True
        raced = await admin.delete(f"/api/v1/agents/{_text(8)}")
        assert raced.status_code == 404


async def test_a_held_http_heartbeat_does_not_bring_a_forgotten_agent_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The node alone on its file holds the heartbeat well past the agent going offline.
    monkeypatch.setattr(liveness_module, "PERSIST_AFTER", 1000.0)
    async with (
        run_node(tmp_path, offline_after=0.5, agent_heartbeat_interval=0) as node,
        httpx2.AsyncClient(base_url=node.admin_url) as admin,
        httpx2.AsyncClient(base_url=node.opamp_url) as opamp,
    ):
        for msg in (report(uid(6)), pb.AgentToServer(instance_uid=uid(6), sequence_num=1)):
            response = await opamp.post(
                "/v1/opamp",
                content=msg.SerializeToString(),
                headers={"Content-Type": "application/x-protobuf"},
            )
            assert response.status_code == 200
        assert node.services.writer.held == 1
        await _forget_once_offline(admin, _text(6))
        # What the node still held is dropped with the record, not written as a new one later.
        node.services.liveness.sweep(persist_after=0.0)
        await node.services.writer.flush()
        assert (await admin.get(f"/api/v1/agents/{_text(6)}")).status_code == 404
