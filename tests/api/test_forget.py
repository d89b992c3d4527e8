"""Forgetting agents (issue 20, finding 10): DELETE /api/v1/agents/{uid} and the --forget-after
sweep, over real sockets on an in-process node with a SQLite file."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import httpx2
import pytest

from tests.support.servers import Node, run_node
from tests.support.waiting import eventually, uid
from tests.support.ws import agent_socket, exchange, report

pytestmark = pytest.mark.anyio

Send = Callable[[bytes], Awaitable[None]]


def _text(n: int) -> str:
    return str(uuid.UUID(bytes=uid(n)))


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    async with run_node(tmp_path, offline_after=0.5) as running:
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
        run_node(tmp_path, offline_after=0.2, forget_after=0.5) as node,
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
