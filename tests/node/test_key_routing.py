"""Agent keys across nodes: the stored record is the truth. Two nodes in one process share a store
and an in-process bus hub (tests/integration covers real processes)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx2
import pytest

from gateway.auth import KEY_MISMATCH
from gateway.bus.base import BusUnavailable
from gateway.bus.local import LocalBus, LocalHub
from gateway.transport.websocket import CLOSE_POLICY, CLOSE_TAKEN_OVER
from tests.support.memory_store import MemoryStore
from tests.support.servers import Node, agent_keys_file, run_node
from tests.support.waiting import uid
from tests.support.ws import agent_socket, closed_with, exchange, heartbeat, report

pytestmark = pytest.mark.anyio

KEY_A = "agent-key-aaaaaaaaaaaa"
KEY_B = "agent-key-bbbbbbbbbbbb"
VICTIM = uid(7)
TEXT = str(uuid.UUID(bytes=VICTIM))


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
async def nodes(tmp_path: Path) -> AsyncIterator[tuple[Node, Node]]:
    keys = agent_keys_file(tmp_path, {"team-a": KEY_A, "team-b": KEY_B})
    hub, store = LocalHub(), MemoryStore()
    async with contextlib.AsyncExitStack() as stack:
        pair = []
        for name in ("node-a", "node-b"):
            node = run_node(
                tmp_path, store=store, bus=LocalBus(name, hub), node_id=name, agent_keys_file=keys
            )
            pair.append(await stack.enter_async_context(node))
        yield pair[0], pair[1]


async def test_another_key_on_another_node_is_refused_and_takes_nothing_over(
    nodes: tuple[Node, Node],
) -> None:
    a, b = nodes
    async with agent_socket(a.opamp_url, additional_headers=_bearer(KEY_B)) as victim:
        await exchange(victim, report(VICTIM))
        await a.services.presence.settle()
        async with agent_socket(b.opamp_url, additional_headers=_bearer(KEY_A)) as thief:
            await thief.send(b"\x00" + report(VICTIM, 1).SerializeToString())
            assert await closed_with(thief) == (CLOSE_POLICY, KEY_MISMATCH)
        assert (await b.services.bus.owners([VICTIM]))[VICTIM].node == "node-a"
        assert (await exchange(victim, heartbeat(VICTIM, 1))).instance_uid == VICTIM


async def test_a_key_move_on_another_node_closes_the_socket_there(nodes: tuple[Node, Node]) -> None:
    a, b = nodes
    async with (
        agent_socket(a.opamp_url, additional_headers=_bearer(KEY_B)) as victim,
        httpx2.AsyncClient(base_url=b.admin_url) as admin_b,
    ):
        await exchange(victim, report(VICTIM))
        await a.services.presence.settle()
        response = await admin_b.put(f"/api/v1/agents/{TEXT}/key", json={"key_id": "team-a"})
        assert response.status_code == 200
        code, reason = await closed_with(victim)
        assert code == CLOSE_TAKEN_OVER and "node-b" in reason
    # Node A cached the record under key B; the new socket reads the stored record.
    async with agent_socket(a.opamp_url, additional_headers=_bearer(KEY_B)) as again:
        await again.send(b"\x00" + heartbeat(VICTIM, 2).SerializeToString())
        assert await closed_with(again) == (CLOSE_POLICY, KEY_MISMATCH)
    async with agent_socket(a.opamp_url, additional_headers=_bearer(KEY_A)) as owner:
        assert (await exchange(owner, heartbeat(VICTIM, 2))).instance_uid == VICTIM


async def test_a_key_move_without_the_bus_still_rebinds_the_record(
    nodes: tuple[Node, Node], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = nodes
    async with agent_socket(a.opamp_url, additional_headers=_bearer(KEY_B)) as victim:
        await exchange(victim, report(VICTIM))
        await a.services.presence.settle()

        async def down(_uids: object) -> object:
            raise BusUnavailable("redis is down")

        monkeypatch.setattr(b.services.bus, "owners", down)
        async with httpx2.AsyncClient(base_url=b.admin_url) as admin_b:
            response = await admin_b.put(f"/api/v1/agents/{TEXT}/key", json={"key_id": "team-a"})
        assert response.status_code == 200
        stored = await b.services.store.get(VICTIM)
        assert stored is not None and stored.key_id == "team-a"
