"""Async helpers for tests that drive several gateway processes: readable uids, waiting, and the
admin API and readiness of one node."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import httpx2

from harness.gateway import GatewayProcess
from harness.waiting import eventually as _eventually


def new_uid() -> bytes:
    return uuid.uuid4().bytes


def text(uid: bytes) -> str:
    return str(uuid.UUID(bytes=uid))


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 10.0, what: str = "") -> None:
    # Processes answer over HTTP: a longer deadline and a slower poll than the shared default.
    await _eventually(check, timeout=timeout, interval=0.05, what=what)


async def admin_json(
    gateway: GatewayProcess, method: str, path: str, expect: int | tuple[int, ...] = 200, **kwargs: Any
) -> Any:
    """One admin API request; asserts the status and returns the JSON body (None for 204)."""
    expected = (expect,) if isinstance(expect, int) else expect
    async with httpx2.AsyncClient(base_url=gateway.admin_url, trust_env=False) as admin:
        response = await admin.request(method, path, **kwargs)
    assert response.status_code in expected, f"{method} {path} -> {response.status_code}: {response.text}"
    return None if response.status_code == 204 else response.json()


async def agent_json(gateway: GatewayProcess, uid: bytes) -> dict[str, Any]:
    body: dict[str, Any] = await admin_json(gateway, "GET", f"/api/v1/agents/{text(uid)}")
    return body


async def owned_by(gateway: GatewayProcess, uid: bytes, node: str) -> bool:
    agent = await agent_json(gateway, uid)
    return agent["connected"] is True and agent["node"] == node and agent["transport"] == "websocket"


async def bus_state(gateway: GatewayProcess) -> str:
    # The admin port's /readyz has the details; the OpAMP port's says only ready or not.
    async with httpx2.AsyncClient(base_url=gateway.admin_url) as http:
        response = await http.get("/readyz")
        # A Redis outage never makes a node unready: it still serves every agent.
        assert response.status_code == 200, response.text
        state: str = response.json()["bus"]["state"]
        return state


async def wait_bus(gateway: GatewayProcess, state: str) -> None:
    async def check() -> bool:
        return await bus_state(gateway) == state

    await eventually(check, what=f"{gateway.name}'s bus to be {state}")
