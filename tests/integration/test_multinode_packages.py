"""Packages across two real gateway processes (one SQLite file, a real redis-server), with raw agents
over WebSocket and HTTP.

A package PUT on one node reaches a WebSocket agent held by the other (pushed, carried by the
ConfigsChanged event; the periodic refresh is an hour) and an HTTP agent (in its next reply), with
the same hashes from both nodes; the DOWNLOADING and INSTALLED statuses the agents report are shown,
counted and filtered by both nodes. A staged package rollout over 24 agents halts when its first
wave reports INSTALL_FAILED, and every agent is offered the previous revision again."""

from __future__ import annotations

import asyncio
import contextlib
import copy
from collections.abc import AsyncIterator, Collection
from typing import Any

import httpx2
import pytest
from websockets.asyncio.client import ClientConnection

from gateway.fleet.waves import in_wave
from gateway.proto import opamp_pb2 as pb
from harness.gateway import GatewayProcess
from tests.integration.conftest import GatewayFactory
from tests.integration.nodes import admin_json, agent_json, eventually, new_uid, text
from tests.support.opamp_http import poll as http_poll
from tests.support.packages import body
from tests.support.redis_server import RedisFactory
from tests.support.waiting import uid
from tests.support.ws import agent_socket, exchange, heartbeat, recv, report, send

pytestmark = pytest.mark.anyio

RECEIVE_TIMEOUT = 10.0
WAIT = 30.0
CAPS = (
    pb.AgentCapabilities_ReportsStatus
    | pb.AgentCapabilities_ReportsHealth
    | pb.AgentCapabilities_AcceptsPackages
    | pb.AgentCapabilities_ReportsPackageStatuses
)
PATH = "/api/v1/packages/otelcol"


def statuses(
    offer: pb.PackagesAvailable, installed: bool, failing: Collection[str] = ()
) -> pb.PackageStatuses:
    """What an agent reports about `offer`: DOWNLOADING (40%), or the outcome: INSTALLED, or
    INSTALL_FAILED for a version in `failing`."""
    out = pb.PackageStatuses(server_provided_all_packages_hash=offer.all_packages_hash)
    for name, available in offer.packages.items():
        status = out.packages[name]
        status.name = name
        status.server_offered_version = available.version
        status.server_offered_hash = available.hash
        if not installed:
            status.status = pb.PackageStatusEnum_Downloading
            status.download_details.download_percent = 40.0
            status.download_details.download_bytes_per_second = 1e6
        elif available.version in failing:
            status.status = pb.PackageStatusEnum_InstallFailed
            status.error_message = "signature verification failed"
        else:
            status.status = pb.PackageStatusEnum_Installed
            status.agent_has_version = available.version
            status.agent_has_hash = available.hash
    return out


def reporting(agent: bytes, seq: int, report_: pb.PackageStatuses) -> pb.AgentToServer:
    msg = heartbeat(agent, seq, CAPS)
    msg.package_statuses.CopyFrom(report_)
    return msg


async def _listed(gateway: GatewayProcess, **params: str) -> set[str]:
    found = await admin_json(gateway, "GET", "/api/v1/agents", params={"limit": "1000", **params})
    return {a["instance_uid"] for a in found["agents"]}


async def test_a_package_reaches_agents_on_both_nodes_and_their_statuses_show_on_both(
    gateways: GatewayFactory, redis_factory: RedisFactory
) -> None:
    redis = redis_factory()
    a = gateways("node-a", redis.url, config_refresh_interval=3600)
    b = gateways("node-b", redis.url, config_refresh_interval=3600)
    ws_uid, http_uid = new_uid(), new_uid()
    async with agent_socket(a.opamp_base_url) as ws, httpx2.AsyncClient(trust_env=False) as http:
        first = await exchange(ws, report(ws_uid, 0, CAPS), RECEIVE_TIMEOUT)
        assert not first.HasField("packages_available")
        assert first.capabilities & pb.ServerCapabilities_OffersPackages
        assert first.capabilities & pb.ServerCapabilities_AcceptsPackagesStatus
        polled = await http_poll(http, b.opamp_url, report(http_uid, 0, CAPS))
        assert not polled.HasField("packages_available")

        await admin_json(b, "PUT", PATH, expect=201, json=body("0.121.0"))
        pushed = await recv(ws, RECEIVE_TIMEOUT)
        offer = pushed.packages_available
        assert pushed.instance_uid == ws_uid and list(offer.packages) == ["otelcol"]
        assert offer.packages["otelcol"].version == "0.121.0" and offer.all_packages_hash
        assert offer.packages["otelcol"].file.download_url.startswith("https://artifacts.example.com/")

        # DOWNLOADING: nothing is offered again (the agent names the offer's hash).
        downloading = await exchange(ws, reporting(ws_uid, 1, statuses(offer, False)), RECEIVE_TIMEOUT)
        assert not downloading.HasField("packages_available")
        for node in (a, b):

            async def shows_downloading(node: GatewayProcess = node) -> bool:
                shown = (await agent_json(node, ws_uid))["packages"]
                return shown is not None and shown["packages"]["otelcol"]["status"] == "DOWNLOADING"

            await eventually(shows_downloading, timeout=WAIT, what=f"{node.name} to show DOWNLOADING")
            shown = await agent_json(node, ws_uid)
            assert shown["packages"]["packages"]["otelcol"]["download_percent"] == 40.0
            assert shown["package_sync"]["packages"]["otelcol"]["status"] == "installing"
            installing = await _listed(node, package="otelcol", package_status="installing")
            assert text(ws_uid) in installing

        installed = await exchange(ws, reporting(ws_uid, 2, statuses(offer, True)), RECEIVE_TIMEOUT)
        assert not installed.HasField("packages_available")

        # The HTTP agent polls node-a: the same offer, byte for byte, as node-a pushed.
        replied = await http_poll(http, a.opamp_url, heartbeat(http_uid, 1, CAPS))
        assert replied.packages_available == offer
        await http_poll(http, b.opamp_url, reporting(http_uid, 2, statuses(offer, False)))
        done = await http_poll(http, a.opamp_url, reporting(http_uid, 3, statuses(offer, True)))
        assert not done.HasField("packages_available")

        for node in (a, b):

            async def both_installed(node: GatewayProcess = node) -> bool:
                found = await _listed(node, package="otelcol", package_status="installed")
                return found == {text(ws_uid), text(http_uid)}

            await eventually(both_installed, timeout=WAIT, what=f"{node.name} to list both as installed")
            counts = (await admin_json(node, "GET", PATH))["rollout"]
            assert (counts["matched"], counts["installed"], counts["installing"]) == (2, 2, 0)
            shown = await agent_json(node, http_uid)
            status = shown["packages"]["packages"]["otelcol"]
            assert (status["status"], status["agent_has_version"]) == ("INSTALLED", "0.121.0")
            assert shown["packages"]["offered_hash"] == offer.all_packages_hash.hex()

        # A new version PUT on node-a: pushed to the socket, offered to the HTTP agent on node-b.
        await admin_json(a, "PUT", PATH, json=body("0.122.0"))
        newer = (await recv(ws, RECEIVE_TIMEOUT)).packages_available
        assert newer.packages["otelcol"].version == "0.122.0"
        assert newer.all_packages_hash != offer.all_packages_hash
        # node-b hears of the change on the bus and reads it; node-a does not wait for that before it
        # answers the PUT and pushes, so node-b's reply may come first: poll until it carries it.
        polls = iter(range(4, 10_000))

        async def offered_on_b() -> bool:
            reply = await http_poll(http, b.opamp_url, heartbeat(http_uid, next(polls), CAPS))
            return bool(reply.packages_available == newer)

        await eventually(offered_on_b, timeout=WAIT, what="node-b to offer the new version")


class Agent:
    """An agent that reports DOWNLOADING for each offer, then INSTALLED (or INSTALL_FAILED for a
    version in the fleet's `failing`)."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        # Fixed uids: the waves (a hash of uid and revision) are the same on every run.
        self.uid = uid(len(fleet.agents) + 1)
        self.seq = 0
        self.offers: list[pb.PackagesAvailable] = []
        self.reported_outcome = True

    @property
    def version(self) -> str | None:
        return self.offers[-1].packages["otelcol"].version if self.offers else None

    def took(self, reply: pb.ServerToAgent) -> bool:
        if not reply.HasField("packages_available"):
            return False
        self.offers.append(copy.deepcopy(reply.packages_available))
        self.reported_outcome = False
        return True

    def next(self, installed: bool | None = None) -> pb.AgentToServer:
        """The next message: the outcome of the last offer once it reported DOWNLOADING."""
        self.seq += 1
        if not self.offers:
            return heartbeat(self.uid, self.seq, CAPS)
        done = self.reported_outcome if installed is None else installed
        msg = reporting(self.uid, self.seq, statuses(self.offers[-1], done, self.fleet.failing))
        self.reported_outcome = True
        return msg


class Fleet:
    def __init__(self) -> None:
        self.failing: set[str] = set()
        self.agents: list[Agent] = []
        self.http: list[tuple[Agent, GatewayProcess]] = []
        self.client = httpx2.AsyncClient(trust_env=False)

    async def poll_http(self) -> None:
        for agent, gateway in self.http:
            agent.took(await http_poll(self.client, gateway.opamp_url, agent.next()))

    def having(self, version: str) -> set[bytes]:
        return {a.uid for a in self.agents if a.version == version}

    def ever(self, version: str) -> set[bytes]:
        return {a.uid for a in self.agents if any(o.packages["otelcol"].version == version for o in a.offers)}


async def _ws_agent(ws: ClientConnection, agent: Agent) -> None:
    await send(ws, report(agent.uid, 0, CAPS))
    downloading = False
    while True:
        try:
            reply = await recv(ws, 60.0)
        except TimeoutError:
            continue
        if agent.took(reply):
            await send(ws, agent.next(installed=False))
            downloading = True
        elif downloading:
            # The reply to DOWNLOADING: then the outcome.
            await send(ws, agent.next(installed=True))
            downloading = False


@contextlib.asynccontextmanager
async def fleet_on(
    a: GatewayProcess, b: GatewayProcess, ws_each: int = 8, http: int = 8
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
        for n in range(http):
            agent = Agent(fleet)
            fleet.agents.append(agent)
            gateway = a if n % 2 else b
            fleet.http.append((agent, gateway))
            agent.took(await http_poll(fleet.client, gateway.opamp_url, report(agent.uid, 0, CAPS)))
        try:
            yield fleet
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await fleet.client.aclose()


async def _rollout(gateway: GatewayProcess) -> dict[str, Any]:
    state: dict[str, Any] = await admin_json(gateway, "GET", f"{PATH}/rollout")
    return state


async def test_a_staged_package_rollout_halts_on_failures(
    gateways: GatewayFactory, redis_factory: RedisFactory
) -> None:
    redis = redis_factory()
    flags = {"config_refresh_interval": 3600, "rollout_interval": 0.2}
    a, b = gateways("node-a", redis.url, **flags), gateways("node-b", redis.url, **flags)
    async with fleet_on(a, b) as fleet:
        everyone = {agent.uid for agent in fleet.agents}
        await admin_json(a, "PUT", PATH, expect=201, json=body("0.121.0"))

        async def all_installed() -> bool:
            await fleet.poll_http()
            counts = (await admin_json(b, "GET", PATH))["rollout"]
            return fleet.having("0.121.0") == everyone and counts["installed"] == len(everyone)

        await eventually(all_installed, timeout=WAIT, what="every agent to install 0.121.0")

        fleet.failing.add("0.122.0")
        staged = {"strategy": "staged", "waves": [25, 50], "min_wave_seconds": 0.5, "max_failure_ratio": 0}
        await admin_json(b, "PUT", PATH, json=body("0.122.0", rollout=staged))
        first_wave = {u for u in everyone if in_wave(u, 2, 0.25)}
        assert 0 < len(first_wave) < len(everyone)

        async def halted() -> bool:
            await fleet.poll_http()
            # Before the GET: waves only move on. No agent outside the first wave is ever offered it.
            assert fleet.ever("0.122.0") <= first_wave, "an agent outside the first wave got 0.122.0"
            return bool((await _rollout(a))["state"] == "halted")

        await eventually(halted, timeout=WAIT, what="the rollout to halt")
        state = await _rollout(b)
        assert state["revision"] == 2 and state["previous_revision"] == 1 and state["wave"] == 0
        # The counts are against what each agent should have now (revision 1 again); the halt's event
        # says what it saw.
        reason = state["events"][-1]["reason"]
        assert "agents failed" in reason and "rolled back to revision 1" in reason, reason

        async def back_on_the_previous_revision() -> bool:
            await fleet.poll_http()
            return fleet.having("0.121.0") == everyone

        await eventually(
            back_on_the_previous_revision, timeout=WAIT, what="every agent to be offered 0.121.0 again"
        )
        assert fleet.ever("0.122.0") <= first_wave
