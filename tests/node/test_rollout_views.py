"""Every node resolves configs by the stored rollout records: the views the config cache builds, and
a WebSocket agent pushed the previous version when a rollout halts and the new one when it completes."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.fleet.configs import parse_request
from gateway.fleet.rollout_record import Rollout
from gateway.fleet.rollout_steps import start
from gateway.fleet.waves import RolloutState, parse_strategy
from gateway.node.rollout_views import rollout_views
from gateway.store.base import Store
from tests.node.test_config_cache import CONFIG_CAPS, enroll, files
from tests.support.memory_store import MemoryStore
from tests.support.servers import Node, run_node
from tests.support.waiting import uid
from tests.support.ws import agent_socket, exchange, heartbeat, recv

pytestmark = pytest.mark.anyio

STRATEGY = parse_strategy({"strategy": "staged", "waves": [50, 100]})


async def _put(store: Store, body: str) -> None:
    request = parse_request(
        "collector",
        {"selector": {"match": {"service.name": "otelcol-contrib"}}, "files": {"c.yaml": {"body": body}}},
        max_bytes=1 << 20,
    )
    await store.put_config("collector", request, time.time())


async def _record(store: Store, state: RolloutState, version: int = 2, previous: int | None = 1) -> Rollout:
    record = start("collector", version, previous, STRATEGY, 1.0, [])
    if state != "progressing":
        record = record.moved(2.0, state, "test")
    stored = await store.get_rollout("collector")
    assert await store.put_rollout(record, None if stored is None else stored.rev) is not None
    return record


async def test_views_of_the_records() -> None:
    store = MemoryStore()
    await _put(store, "v: 1\n")
    await _put(store, "v: 2\n")
    configs = await store.list_configs()
    assert await rollout_views(store, configs) == {}
    await _record(store, "halted")
    view = (await rollout_views(store, configs))["collector"]
    assert (view.version, view.state, view.cutoff) == (2, "halted", 0.5)
    assert view.previous is not None and view.previous.version == 1
    assert view.previous.spec == (await store.config_versions("collector"))[1].spec
    # Completed, of another version, or with a previous version no longer kept.
    await _record(store, "completed")
    assert await rollout_views(store, configs) == {}
    await _record(store, "progressing", version=1, previous=None)
    assert await rollout_views(store, configs) == {}
    await _record(store, "progressing", previous=None)
    assert (await rollout_views(store, configs))["collector"].previous is None
    store.versions["collector"] = store.versions["collector"][:1]
    await _record(store, "paused")
    assert (await rollout_views(store, configs))["collector"].previous is None


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    async with run_node(tmp_path) as running:
        yield running


async def test_a_websocket_agent_follows_the_stored_rollout(node: Node) -> None:
    store, cache = node.services.store, node.services.config_cache
    await _put(store, "v: 1\n")
    await _put(store, "v: 2\n")
    await cache.refresh("test")
    async with agent_socket(node.opamp_url) as ws:
        assert files(await enroll(ws, 1)) == {"c.yaml": b"v: 2\n"}
        await _record(store, "halted")
        assert await cache.refresh("rollout halted") == 1
        assert files(await recv(ws)) == {"c.yaml": b"v: 1\n"}
        await _record(store, "completed")
        assert await cache.refresh("rollout completed") == 1
        assert files(await recv(ws)) == {"c.yaml": b"v: 2\n"}
        # Nothing changed since: nothing more is pushed or sent.
        assert await cache.refresh("again") == 0
        assert not (await exchange(ws, heartbeat(uid(1), 1, CONFIG_CAPS))).HasField("remote_config")


async def test_a_staged_version_without_its_record_waits_at_wave_zero() -> None:
    """Between the admin API's two writes (or after a node died between them) no agent gets the new
    version: the view is a rollout at cutoff 0 from the previous version."""
    store = MemoryStore()
    await _put(store, "v: 1\n")
    staged = parse_request(
        "collector",
        {
            "selector": {"match": {"service.name": "otelcol-contrib"}},
            "files": {"c.yaml": {"body": "v: 2\n"}},
            "rollout": {"strategy": "staged", "waves": [50]},
        },
        max_bytes=1 << 20,
    )
    await store.put_config("collector", staged, time.time())
    configs = await store.list_configs()
    view = (await rollout_views(store, configs))["collector"]
    assert (view.version, view.state, view.cutoff) == (2, "progressing", 0.0)
    assert view.previous is not None and view.previous.version == 1
    # Once its record is stored, the record decides.
    await _record(store, "progressing")
    assert (await rollout_views(store, configs))["collector"].cutoff == 0.5
