"""/readyz: the OpAMP port (open to anyone who reaches it) says only ready or not ready; the admin
port's says why (issue 20, finding 14)."""

from __future__ import annotations

from pathlib import Path

import httpx2
import pytest

from harness.ports import free_port
from tests.support.memory_store import MemoryStore
from tests.support.servers import run_node
from tests.support.waiting import eventually

pytestmark = pytest.mark.anyio


async def test_the_opamp_port_shows_no_node_id_and_no_redis_address(tmp_path: Path) -> None:
    redis_port = free_port()  # nothing listens there: the bus stays down
    async with (
        run_node(tmp_path, store=MemoryStore(), redis_url=f"redis://127.0.0.1:{redis_port}/0") as node,
        httpx2.AsyncClient(base_url=node.admin_url) as admin,
        httpx2.AsyncClient(base_url=node.opamp_url) as opamp,
    ):

        async def bus_down() -> bool:
            body = (await admin.get("/readyz")).json()
            return bool(body["bus"]["state"] == "down" and body["bus"].get("error"))

        await eventually(bus_down)
        detailed = await admin.get("/readyz")
        assert detailed.json()["node"] == "test-node"
        plain = await opamp.get("/readyz")
        assert plain.status_code == 200
        assert plain.json() == {"status": "ready"}
        assert str(redis_port) not in plain.text and "test-node" not in plain.text


async def test_the_opamp_port_says_unavailable_without_saying_why(tmp_path: Path) -> None:
    async with (
        run_node(tmp_path, store=MemoryStore()) as node,
        httpx2.AsyncClient(base_url=node.admin_url) as admin,
        httpx2.AsyncClient(base_url=node.opamp_url) as opamp,
    ):
        node.services.drain.draining = True
        plain = await opamp.get("/readyz")
        assert plain.status_code == 503 and plain.json() == {"status": "unavailable"}
        detailed = await admin.get("/readyz")
        assert detailed.status_code == 503 and "drain" in detailed.json()["problems"]
