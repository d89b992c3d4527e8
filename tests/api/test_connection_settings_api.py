"""The connection-settings admin API's refusals: bodies that are not JSON, too large, with lone
surrogates or nested too deeply, and a store that fails (503)."""

from __future__ import annotations

from pathlib import Path

import httpx2
import pytest

from gateway.fleet.connection_settings import ConnectionSettings, SettingsSpec
from gateway.store.base import StoreUnavailable
from tests.support.memory_store import MemoryStore
from tests.support.servers import run_node

pytestmark = pytest.mark.anyio

JSON = {"Content-Type": "application/json"}
PATH = "/api/v1/connection-settings/telemetry"


async def test_bodies_refused_by_name(tmp_path: Path) -> None:
    async with (
        run_node(tmp_path, max_config_bytes=4096) as node,
        httpx2.AsyncClient(base_url=node.admin_url) as admin,
    ):
        huge = await admin.put(PATH, content=b"[" + b" " * 10_000 + b"]", headers=JSON)
        assert huge.status_code == 413
        surrogate = b'{"selector": {}, "own_logs": {"destination_endpoint": "https://x/\\ud800"}}'
        response = await admin.put(PATH, content=surrogate, headers=JSON)
        assert response.status_code == 400 and "lone surrogate" in response.json()["error"]["message"]
        bad_name = await admin.put("/api/v1/connection-settings/Bad", json={"selector": {}})
        assert bad_name.status_code == 400 and bad_name.json()["error"]["message"].startswith("name: ")
        assert (await admin.get("/api/v1/connection-settings")).json() == {"connection_settings": []}


async def test_deeply_nested_json_is_400(tmp_path: Path) -> None:
    async with (
        run_node(tmp_path, max_config_bytes=1 << 20) as node,
        httpx2.AsyncClient(base_url=node.admin_url) as admin,
    ):
        deep = await admin.put(PATH, content=b"[" * 100_000 + b"]" * 100_000, headers=JSON)
        assert deep.status_code == 400 and "nested too deeply" in deep.json()["error"]["message"]


class _DownStore(MemoryStore):
    async def list_connection_settings(self) -> list[ConnectionSettings]:
        raise StoreUnavailable("settings unreadable")

    async def get_connection_settings(self, name: str) -> ConnectionSettings | None:
        raise StoreUnavailable("settings unreadable")

    async def put_connection_settings(
        self, name: str, spec: SettingsSpec, now: float
    ) -> tuple[ConnectionSettings, bool]:
        raise StoreUnavailable("settings unwritable")

    async def delete_connection_settings(self, name: str) -> bool:
        raise StoreUnavailable("settings unwritable")


async def test_a_store_failure_is_503(tmp_path: Path) -> None:
    async with (
        run_node(tmp_path, store=_DownStore()) as node,
        httpx2.AsyncClient(base_url=node.admin_url) as admin,
    ):
        body = {"selector": {}, "own_logs": {"destination_endpoint": "https://x.example.com"}}
        for response in (
            await admin.get("/api/v1/connection-settings"),
            await admin.get(PATH),
            await admin.put(PATH, json=body),
            await admin.delete(PATH),
        ):
            assert response.status_code == 503
            assert response.json()["error"]["code"] == "store_unavailable"
