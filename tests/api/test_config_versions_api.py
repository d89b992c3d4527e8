"""GET /api/v1/configs/{name}/versions over a real socket on one in-process node."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx2
import pytest

from gateway.fleet.versions import KEEP_VERSIONS, ConfigVersion
from gateway.store.base import StoreUnavailable
from tests.api.test_configs_api import config_body
from tests.support.memory_store import MemoryStore
from tests.support.servers import run_node

pytestmark = pytest.mark.anyio


@pytest.fixture
async def admin(tmp_path: Path) -> AsyncIterator[httpx2.AsyncClient]:
    async with run_node(tmp_path) as node, httpx2.AsyncClient(base_url=node.admin_url) as client:
        yield client


async def test_versions_list_every_change_newest_first(admin: httpx2.AsyncClient) -> None:
    first = (await admin.put("/api/v1/configs/base", json=config_body())).json()
    await admin.put("/api/v1/configs/base", json=config_body())  # unchanged: no new version
    second = (
        await admin.put(
            "/api/v1/configs/base", json=config_body(selector={"match": {"env": "prod"}}, priority=3)
        )
    ).json()
    response = await admin.get("/api/v1/configs/base/versions")
    assert response.status_code == 200
    body = response.json()
    assert body["keep"] == KEEP_VERSIONS
    assert body["versions"] == [
        {
            "version": 2,
            "hash": second["hash"],
            "created_at": second["updated_at"],
            "priority": 3,
            "selector": {"match": {"env": "prod"}},
            "files": ["collector.yaml"],
        },
        {
            "version": 1,
            "hash": first["hash"],
            "created_at": first["created_at"],
            "priority": 0,
            "selector": {"match": {"service.name": "otelcol-contrib"}},
            "files": ["collector.yaml"],
        },
    ]


async def test_a_deleted_config_has_no_versions(admin: httpx2.AsyncClient) -> None:
    await admin.put("/api/v1/configs/gone", json=config_body())
    assert (await admin.delete("/api/v1/configs/gone")).status_code == 204
    response = await admin.get("/api/v1/configs/gone/versions")
    assert response.status_code == 404
    assert response.json()["error"]["message"] == "no config 'gone'"


async def test_a_bad_name_is_400(admin: httpx2.AsyncClient) -> None:
    response = await admin.get("/api/v1/configs/Bad/versions")
    assert response.status_code == 400
    assert response.json()["error"]["message"].startswith("name: ")


class _DownStore(MemoryStore):
    async def config_versions(self, name: str) -> list[ConfigVersion]:
        raise StoreUnavailable("versions unreadable")


async def test_a_store_failure_is_503(tmp_path: Path) -> None:
    async with (
        run_node(tmp_path, store=_DownStore()) as node,
        httpx2.AsyncClient(base_url=node.admin_url) as c,
    ):
        response = await c.get("/api/v1/configs/base/versions")
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "store_unavailable"
