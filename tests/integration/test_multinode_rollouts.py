"""Staged rollouts across two real gateway processes (one SQLite file, a real redis-server), with
20 WebSocket agents (10 on each node) and 20 HTTP agents: a good version walks through every wave, a failing
one halts and is rolled back before later waves see it, and pause/resume hold and release a wave.

The controllers look every 0.2 s and each wave lasts at least 0.5 s; nothing but the bus brings a
change to the other node (its periodic refresh is an hour)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx2
import pytest
from websockets.asyncio.client import ClientConnection

from gateway.fleet.waves import in_wave
from gateway.opamp import capabilities as caps
from gateway.proto import opamp_pb2 as pb
from harness.gateway import GatewayProcess
from harness.waiting import eventually
from tests.integration.conftest import GatewayFactory
from tests.integration.nodes import admin_json
from tests.support.es import EsAliases
from tests.support.opamp_http import poll as http_poll
from tests.support.redis_server import RedisFactory
from tests.support.waiting import uid
from tests.support.ws import agent_socket, heartbeat, recv, report, send

pytestmark = pytest.mark.anyio

CAPS = caps.REPORTS_STATUS | caps.REPORTS_HEALTH | caps.ACCEPTS_REMOTE_CONFIG | caps.REPORTS_REMOTE_CONFIG
SERVICE = "otelcol-contrib"
GOOD, NEW, BAD = b"v: 1\n", b"v: 2\n", b"v: broken\n"
WAIT = 30.0


class Agent:
    """An agent that reports APPLIED for what it gets, or FAILED for a body in `fleet.bad`."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        # Fixed uids: the waves (a hash of uid and version) are the same on every run.
        self.uid = uid(len(fleet.agents) + 1)
        self.seq = 0
        self.received: list[bytes] = []
        self._hash = b""
        self._status: int = pb.RemoteConfigStatuses_UNSET

    @property
    def body(self) -> bytes | None:
        return self.received[-1] if self.received else None

    def first(self) -> pb.AgentToServer:
        msg = report(self.uid, 0, CAPS, SERVICE)
        msg.remote_config_status.status = pb.RemoteConfigStatuses_UNSET
        return msg

    def next(self) -> pb.AgentToServer:
        self.seq += 1
        msg = heartbeat(self.uid, self.seq, CAPS)
        msg.remote_config_status.last_remote_config_hash = self._hash
        msg.remote_config_status.status = self._status  # type: ignore[assignment]
        return msg

    def took(self, reply: pb.ServerToAgent) -> bool:
        if not reply.HasField("remote_config"):
            return False
        body = reply.remote_config.config.config_map["collector.yaml"].body
        self.received.append(body)
        self._hash = reply.remote_config.config_hash
        failed = body in self.fleet.bad
        self._status = pb.RemoteConfigStatuses_FAILED if failed else pb.RemoteConfigStatuses_APPLIED
        return True


class Fleet:
    def __init__(self) -> None:
        self.bad: set[bytes] = set()
        self.agents: list[Agent] = []
        self.http: list[tuple[Agent, GatewayProcess]] = []
        self._client = httpx2.AsyncClient(trust_env=False)

    async def poll_http(self) -> None:
        for agent, gateway in self.http:
            agent.took(await http_poll(self._client, gateway.opamp_url, agent.next()))

    def having(self, body: bytes) -> set[bytes]:
        return {a.uid for a in self.agents if a.body == body}

    def ever(self, body: bytes) -> set[bytes]:
        return {a.uid for a in self.agents if body in a.received}

    async def close(self) -> None:
        await self._client.aclose()


async def _ws_agent(ws: ClientConnection, agent: Agent) -> None:
    await send(ws, agent.first())
    while True:
        try:
            reply = await recv(ws, 60.0)
        except TimeoutError:
            continue
        if agent.took(reply):
            await send(ws, agent.next())


@contextlib.asynccontextmanager
async def fleet_on(
    a: GatewayProcess, b: GatewayProcess, ws_each: int = 10, http: int = 20
) -> AsyncIterator[Fleet]:
    fleet = Fleet()
    async with contextlib.AsyncExitStack() as stack:
        tasks: list[asyncio.Task[None]] = []
        for gateway in (a, b):
            for _ in range(ws_each):
                ws = await stack.enter_async_context(agent_socket(gateway.opamp_base_url))
                agent = Agent(fleet)
                fleet.agents.append(agent)
                tasks.append(asyncio.create_task(_ws_agent(ws, agent)))
        for _ in range(http):
            agent = Agent(fleet)
            fleet.agents.append(agent)
            fleet.http.append((agent, b))
            agent.took(await http_poll(fleet._client, b.opamp_url, agent.first()))
        try:
            yield fleet
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await fleet.close()


def _body(text: bytes, rollout: dict[str, Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "selector": {"match": {"service.name": SERVICE}},
        "files": {"collector.yaml": {"content_type": "text/yaml", "body": text.decode()}},
    }
    if rollout is not None:
        body["rollout"] = rollout
    return body


async def _converged(fleet: Fleet, body: bytes, what: str) -> None:
    async def check() -> bool:
        await fleet.poll_http()
        return fleet.having(body) == {a.uid for a in fleet.agents}

    await eventually(check, timeout=WAIT, interval=0.1, what=what)


async def _rollout(gateway: GatewayProcess) -> dict[str, Any]:
    state: dict[str, Any] = await admin_json(gateway, "GET", "/api/v1/configs/collector/rollout")
    return state


@pytest.fixture
def nodes(gateways: GatewayFactory, redis_factory: RedisFactory) -> tuple[GatewayProcess, GatewayProcess]:
    redis = redis_factory()
    flags = {"config_refresh_interval": 3600, "rollout_interval": 0.2}
    return gateways("node-a", redis.url, **flags), gateways("node-b", redis.url, **flags)


async def test_a_good_version_walks_through_every_wave(nodes: tuple[GatewayProcess, GatewayProcess]) -> None:
    a, b = nodes
    async with fleet_on(a, b) as fleet:
        await admin_json(a, "PUT", "/api/v1/configs/collector", expect=201, json=_body(GOOD))
        await _converged(fleet, GOOD, "every agent to apply version 1")
        staged = {"strategy": "staged", "waves": [25, 50], "min_wave_seconds": 0.5, "max_failure_ratio": 0}
        await admin_json(b, "PUT", "/api/v1/configs/collector", json=_body(NEW, staged))
        first_wave = {a.uid for a in fleet.agents if in_wave(a.uid, 2, 0.25)}
        assert 5 <= len(first_wave) <= 15  # fixed by the uids: 11 of the 40
        seen_first_wave_alone = False

        async def completed() -> bool:
            nonlocal seen_first_wave_alone
            await fleet.poll_http()
            having = fleet.having(NEW)  # before the GET: waves only move on
            state = await _rollout(a if time.monotonic() % 2 < 1 else b)
            if state["state"] == "progressing" and state["wave"] == 0:
                assert having <= first_wave, "an agent outside the first wave got the new version"
                seen_first_wave_alone |= bool(having) and having == first_wave
            return bool(state["state"] == "completed")

        await eventually(completed, timeout=WAIT, interval=0.1, what="the rollout to complete")
        await _converged(fleet, NEW, "every agent to apply version 2")
        assert seen_first_wave_alone, "the first wave never had the new version on its own"
        done = await _rollout(a)
        assert [(e["state"], e["wave"]) for e in done["events"]] == [
            ("progressing", 0),
            ("progressing", 1),
            ("progressing", 2),
            ("completed", 2),
        ]
        assert done["applied"] == done["in_wave"] == done["targeted"] == len(fleet.agents)
        # Nobody was ever offered anything but the two versions, in order.
        assert all(agent.received[-2:] == [GOOD, NEW] for agent in fleet.agents)


async def test_a_failing_version_halts_and_rolls_back(nodes: tuple[GatewayProcess, GatewayProcess]) -> None:
    await _halts_and_rolls_back(*nodes)


async def test_on_elasticsearch_a_failing_version_halts_and_rolls_back(
    gateways: GatewayFactory, redis_factory: RedisFactory, es_aliases: EsAliases
) -> None:
    """The same on the Elasticsearch store: the record's compare-and-set is the config document's
    `if_seq_no`, and the counts come from searches."""
    redis = redis_factory()
    flags = {"config_refresh_interval": 3600, "rollout_interval": 0.2, **es_aliases.flags()}
    a, b = gateways("node-a", redis.url, **flags), gateways("node-b", redis.url, **flags)
    await _halts_and_rolls_back(a, b)
    assert not a.sqlite_path.exists()  # the nodes used Elasticsearch alone


async def _halts_and_rolls_back(a: GatewayProcess, b: GatewayProcess) -> None:
    async with fleet_on(a, b) as fleet:
        await admin_json(a, "PUT", "/api/v1/configs/collector", expect=201, json=_body(GOOD))
        await _converged(fleet, GOOD, "every agent to apply version 1")
        fleet.bad.add(BAD)
        staged = {"strategy": "staged", "waves": [25, 100], "min_wave_seconds": 0.5, "max_failure_ratio": 0.1}
        await admin_json(b, "PUT", "/api/v1/configs/collector", json=_body(BAD, staged))

        async def halted() -> bool:
            await fleet.poll_http()
            return bool((await _rollout(a))["state"] == "halted")

        await eventually(halted, timeout=WAIT, interval=0.1, what="the rollout to halt")
        await _converged(fleet, GOOD, "every agent to be back on version 1")
        state = await _rollout(b)
        assert state["events"][-1]["reason"].endswith("rolled back to version 1")
        # Only the first wave ever saw the bad version.
        first_wave = {a.uid for a in fleet.agents if in_wave(a.uid, 2, 0.25)}
        assert 5 <= len(first_wave) <= 15  # fixed by the uids: 11 of the 40
        assert fleet.ever(BAD) and fleet.ever(BAD) <= first_wave


async def test_pause_holds_a_wave_and_resume_releases_it(
    nodes: tuple[GatewayProcess, GatewayProcess],
) -> None:
    a, b = nodes
    async with fleet_on(a, b, ws_each=4, http=4) as fleet:
        await admin_json(a, "PUT", "/api/v1/configs/collector", expect=201, json=_body(GOOD))
        await _converged(fleet, GOOD, "every agent to apply version 1")
        staged = {"strategy": "staged", "waves": [50], "min_wave_seconds": 0.5}
        await admin_json(b, "PUT", "/api/v1/configs/collector", json=_body(NEW, staged))
        paused = await admin_json(a, "POST", "/api/v1/configs/collector/rollout/pause")
        assert (paused["state"], paused["wave"]) == ("paused", 0)
        first_wave = {a.uid for a in fleet.agents if in_wave(a.uid, 2, 0.5)}
        assert 2 <= len(first_wave) <= 14  # fixed by the uids

        async def first_wave_applied() -> bool:
            await fleet.poll_http()
            return fleet.having(NEW) == first_wave and (await _rollout(b))["applied"] == len(first_wave)

        await eventually(first_wave_applied, timeout=WAIT, interval=0.1, what="the first wave to apply")
        # Paused well past min_wave_seconds and many controller looks: the wave holds.
        held_until = time.monotonic() + 1.5
        while time.monotonic() < held_until:
            await fleet.poll_http()
            assert fleet.having(NEW) == first_wave
            assert (await _rollout(a))["state"] == "paused"
            await asyncio.sleep(0.1)
        resumed = await admin_json(b, "POST", "/api/v1/configs/collector/rollout/resume")
        assert resumed["state"] == "progressing"

        async def completed() -> bool:
            await fleet.poll_http()
            return bool((await _rollout(a))["state"] == "completed")

        await eventually(completed, timeout=WAIT, interval=0.1, what="the rollout to complete")
        await _converged(fleet, NEW, "every agent to apply version 2")


async def test_a_rollout_survives_every_node(
    gateways: GatewayFactory, redis_factory: RedisFactory, nodes: tuple[GatewayProcess, GatewayProcess]
) -> None:
    """The node that started the rollout is killed at once, then the other one: a new node on the same
    store picks the rollout up where it was (the record is the only state)."""
    a, b = nodes
    async with fleet_on(a, b, ws_each=0, http=8) as fleet:
        await admin_json(a, "PUT", "/api/v1/configs/collector", expect=201, json=_body(GOOD))
        await _converged(fleet, GOOD, "every agent to apply version 1")
        staged = {"strategy": "staged", "waves": [50], "min_wave_seconds": 0.5}
        await admin_json(a, "PUT", "/api/v1/configs/collector", json=_body(NEW, staged))
        a.kill()
        paused = await admin_json(b, "POST", "/api/v1/configs/collector/rollout/pause")
        assert (paused["version"], paused["state"], paused["wave"]) == (2, "paused", 0)
        b.kill()

        c = gateways("node-c", redis_factory().url, config_refresh_interval=3600, rollout_interval=0.2)
        fleet.http = [(agent, c) for agent, _ in fleet.http]
        first_wave = {a.uid for a in fleet.agents if in_wave(a.uid, 2, 0.5)}
        assert 1 <= len(first_wave) <= 7  # fixed by the uids

        async def first_wave_only() -> bool:
            await fleet.poll_http()
            return (
                fleet.having(NEW) == first_wave
                and fleet.having(GOOD) == {a.uid for a in fleet.agents} - first_wave
            )

        await eventually(first_wave_only, timeout=WAIT, interval=0.1, what="node-c to serve wave 1 only")
        assert (await _rollout(c))["state"] == "paused"
        await admin_json(c, "POST", "/api/v1/configs/collector/rollout/resume")

        async def completed() -> bool:
            await fleet.poll_http()
            return bool((await _rollout(c))["state"] == "completed")

        await eventually(completed, timeout=WAIT, interval=0.1, what="the rollout to complete on node-c")
        await _converged(fleet, NEW, "every agent to apply version 2")
