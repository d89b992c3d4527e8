"""The config cache while the bus is down and when it comes back, on one in-process node.

"Another node" changing a config is a write to the shared store without an event: exactly what the
node sees while Redis is down. tests/integration/test_multinode_configs.py repeats the important
cases with real processes and a real redis-server.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from websockets.asyncio.client import ClientConnection

from gateway.bus.base import Handler, OnUp
from gateway.bus.local import LocalBus
from gateway.fleet.agent import AgentState
from gateway.fleet.configs import Config, parse_request
from gateway.metrics import Metrics
from gateway.node import config_cache
from gateway.node.registry import Registry
from gateway.opamp import capabilities as caps
from gateway.opamp.push import Push
from gateway.proto import opamp_pb2 as pb
from gateway.store.base import StoreError
from tests.support.memory_store import MemoryStore
from tests.support.servers import Node, run_node
from tests.support.waiting import uid
from tests.support.ws import agent_socket, exchange, heartbeat, recv, report

pytestmark = pytest.mark.anyio

CONFIG_CAPS = caps.REPORTS_STATUS | caps.ACCEPTS_REMOTE_CONFIG | caps.REPORTS_REMOTE_CONFIG


class SwitchedBus(LocalBus):
    """The in-process bus, switched down and up like a Redis outage; coming up calls `on_up`."""

    def __init__(self, node_id: str) -> None:
        super().__init__(node_id)
        self.down = False
        self._on_up: OnUp | None = None

    @property
    def up(self) -> bool:
        return not self.down

    async def start(self, handler: Handler, on_up: OnUp | None = None) -> None:
        self._on_up = on_up
        await super().start(handler, on_up)

    async def come_back(self) -> None:
        self.down = False
        assert self._on_up is not None
        await self._on_up()


class ConfigStore(MemoryStore):
    """Counts config reads, and fails them on demand."""

    def __init__(self) -> None:
        super().__init__()
        self.config_reads = 0
        self.fail_configs = False

    async def list_configs(self) -> list[Config]:
        self.config_reads += 1
        if self.fail_configs:
            raise StoreError("configs unreadable")
        return await super().list_configs()


@dataclass
class Setup:
    node: Node
    bus: SwitchedBus
    store: ConfigStore


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[Setup]:
    store, bus = ConfigStore(), SwitchedBus("node-a")
    async with run_node(tmp_path, store=store, bus=bus, node_id="node-a") as node:
        yield Setup(node, bus, store)


async def changed_elsewhere(store: ConfigStore, body: str) -> None:
    """What another node's admin API does, minus the event this node would not receive."""
    request = parse_request(
        "collector",
        {"selector": {"match": {"service.name": "otelcol-contrib"}}, "files": {"c.yaml": {"body": body}}},
        max_bytes=1 << 20,
    )
    await store.put_config("collector", request, time.time())


def files(reply: pb.ServerToAgent) -> dict[str, bytes]:
    assert reply.HasField("remote_config"), f"no remote config in {reply}"
    return {name: f.body for name, f in reply.remote_config.config.config_map.items()}


async def enroll(ws: ClientConnection, n: int) -> pb.ServerToAgent:
    msg = report(uid(n), 0, CONFIG_CAPS)
    # It says it runs no remote config yet; without that the gateway asks before it offers one.
    msg.remote_config_status.status = pb.RemoteConfigStatuses_UNSET
    return await exchange(ws, msg)


async def test_with_the_bus_down_a_message_rereads_configs_once_they_are_stale(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(config_cache, "STALE_WITHOUT_BUS", 3600.0)
    setup.bus.down = True
    async with agent_socket(setup.node.opamp_url) as ws:
        await enroll(ws, 1)
        await changed_elsewhere(setup.store, "v: 1\n")
        reads = setup.store.config_reads
        # Read at start, so not stale yet: messages cost no store read and know nothing new.
        for seq in (1, 2, 3):
            assert not (await exchange(ws, heartbeat(uid(1), seq, CONFIG_CAPS))).HasField("remote_config")
        assert setup.store.config_reads == reads

        monkeypatch.setattr(config_cache, "STALE_WITHOUT_BUS", 0.0)
        assert files(await exchange(ws, heartbeat(uid(1), 4, CONFIG_CAPS))) == {"c.yaml": b"v: 1\n"}
        assert setup.store.config_reads == reads + 1


async def test_with_the_bus_up_messages_rely_on_events(setup: Setup, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config_cache, "STALE_WITHOUT_BUS", 0.0)
    async with agent_socket(setup.node.opamp_url) as ws:
        await enroll(ws, 2)
        reads = setup.store.config_reads
        await changed_elsewhere(setup.store, "v: 1\n")
        assert not (await exchange(ws, heartbeat(uid(2), 1, CONFIG_CAPS))).HasField("remote_config")
        assert setup.store.config_reads == reads


async def test_a_failed_read_before_a_message_answers_with_the_configs_known(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(config_cache, "STALE_WITHOUT_BUS", 3600.0)
    await changed_elsewhere(setup.store, "v: 1\n")
    await setup.node.services.config_cache.refresh("test")
    # As if that read were long ago: the next message finds the configs stale.
    monkeypatch.setattr(setup.node.services.config_cache, "_read_at", -math.inf)
    setup.bus.down, setup.store.fail_configs = True, True
    reads = setup.store.config_reads
    async with agent_socket(setup.node.opamp_url) as ws:
        reply = await enroll(ws, 3)
        assert setup.store.config_reads == reads + 1
        assert not reply.HasField("error_response")
        assert files(reply) == {"c.yaml": b"v: 1\n"}
        # The failed attempt counts: the failing store is not asked again by the next message.
        assert not (await exchange(ws, heartbeat(uid(3), 1, CONFIG_CAPS))).HasField("error_response")
        assert setup.store.config_reads == reads + 1


async def test_coming_back_pushes_what_changed_to_agents_not_yet_sent_it(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(config_cache, "STALE_WITHOUT_BUS", 0.0)
    async with agent_socket(setup.node.opamp_url) as talking, agent_socket(setup.node.opamp_url) as silent:
        await enroll(talking, 4)
        await enroll(silent, 5)
        setup.bus.down = True
        await changed_elsewhere(setup.store, "v: 2\n")
        # One agent's message brings the change to the node; only that agent is sent it (no push).
        assert files(await exchange(talking, heartbeat(uid(4), 1, CONFIG_CAPS))) == {"c.yaml": b"v: 2\n"}

        await setup.bus.come_back()
        assert files(await recv(silent)) == {"c.yaml": b"v: 2\n"}
        # The other already has the offer: nothing pushed to it, its next reply is empty.
        assert not (await exchange(talking, heartbeat(uid(4), 2, CONFIG_CAPS))).HasField("remote_config")


async def test_a_failed_read_when_the_bus_comes_back_keeps_the_node_serving(
    setup: Setup, caplog: pytest.LogCaptureFixture
) -> None:
    setup.bus.down, setup.store.fail_configs = True, True
    with caplog.at_level(logging.WARNING, logger="gateway.node.config_cache"):
        await setup.bus.come_back()
    assert "config refresh after the bus connected failed" in caplog.text
    setup.store.fail_configs = False
    async with agent_socket(setup.node.opamp_url) as ws:
        assert not (await enroll(ws, 6)).HasField("error_response")


class _Socket:
    """Stands in for a WebSocket connection whose every agent is due the config; records each send."""

    epoch = "socket"

    def __init__(self) -> None:
        self.pushed_at: list[float] = []

    def state(self, uid: bytes) -> AgentState:
        description = pb.AgentDescription()
        name = description.identifying_attributes.add()
        name.key, name.value.string_value = "service.name", "otelcol-contrib"
        return AgentState(
            instance_uid=uid,
            enrolled_at=0.0,
            last_seen=0.0,
            capabilities=CONFIG_CAPS,
            description=description.SerializeToString(),
        )

    async def send(self, push: Push) -> bool:
        assert push.reply.HasField("remote_config")
        self.pushed_at.append(time.monotonic())
        return True

    def alive(self, uid: bytes, now: float) -> AgentState | None:
        raise AssertionError("no liveness sweep here")

    async def answers(self, recent: float, within: float) -> bool:
        raise AssertionError("no duplicates here")

    async def taken_over(self, uid: bytes, where: str) -> None:
        raise AssertionError("nothing is taken over here")

    async def drain(self, retry_after: float) -> None:
        raise AssertionError("nothing is drained here")

    own = None
    authenticated = False

    async def refuse(self, uid: bytes, reason: str) -> None:
        raise AssertionError("nothing is refused here")


async def _cache_with_sockets(count: int, rate: float) -> tuple[config_cache.ConfigCache, _Socket]:
    socket = _Socket()
    registry = Registry()
    for i in range(count):
        registry.register(i.to_bytes(16, "big"), socket)
    store = ConfigStore()
    await changed_elsewhere(store, "receivers: {}")
    cache = config_cache.ConfigCache(
        store,
        LocalBus("test-node"),
        registry,
        Metrics(),
        refresh_interval=30.0,
        push_rate=rate,
        resend_after=60.0,
    )
    assert await cache._read("test")
    return cache, socket


async def test_pushes_after_a_change_are_paced_by_the_push_rate() -> None:
    cache, socket = await _cache_with_sockets(600, rate=1000.0)
    started = time.monotonic()
    assert await cache._push_all() == 600
    # 256 sends go out at once, the next 256 not before 0.256 s, the last 88 not before 0.512 s.
    second, third = socket.pushed_at[256], socket.pushed_at[512]
    assert second - started >= 0.25 and third - started >= 0.5


async def test_a_push_rate_of_zero_does_not_pace() -> None:
    cache, socket = await _cache_with_sockets(600, rate=0.0)
    assert await cache._push_all() == 600
    assert len(socket.pushed_at) == 600
