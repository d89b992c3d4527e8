"""Real OpAMP WebSocket agents for the browser tests: `SimAgent`s (harness/agent.py) on the `websockets`
client, on an event loop of their own thread, so a synchronous Playwright test can look at the page
while they heartbeat, apply pushed configs, answer connection settings offers and receive restart
commands."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from gateway.proto import anyvalue_pb2 as av, opamp_pb2 as pb
from harness.agent import Reaction, SimAgent

START_TIMEOUT = 10.0


@dataclass
class UiAgent(SimAgent):
    """A SimAgent whose OS, version and health the test chooses."""

    os_type: str = "linux"
    version: str = "0.120.0"
    healthy: bool = True
    restarts: int = 0
    restarted: threading.Event = field(default_factory=threading.Event)
    # With ReportsConnectionSettingsStatus: every offer is answered APPLIED, or FAILED with this error.
    settings_error: str | None = None
    offers: list[pb.ConnectionSettingsOffers] = field(default_factory=list)
    offered: threading.Event = field(default_factory=threading.Event)

    def full_report(self) -> pb.AgentToServer:
        msg = super().full_report()
        for kv in [
            *msg.agent_description.identifying_attributes,
            *msg.agent_description.non_identifying_attributes,
        ]:
            if kv.key == "os.type":
                kv.value.CopyFrom(av.AnyValue(string_value=self.os_type))
            elif kv.key == "service.version":
                kv.value.CopyFrom(av.AnyValue(string_value=self.version))
        msg.health.healthy = self.healthy
        if not self.healthy:
            msg.health.last_error = "exporter otlphttp: connection refused"
            msg.health.status = "StatusRecoverableError"
        return msg

    def react(self, reply: pb.ServerToAgent, now: float | None = None) -> Reaction:
        reaction = super().react(reply, now)
        if reply.HasField("connection_settings"):
            offer = reply.connection_settings
            self.offers.append(offer)
            if self.capabilities & pb.AgentCapabilities_ReportsConnectionSettingsStatus:
                msg = self.heartbeat()
                status = msg.connection_settings_status
                status.last_connection_settings_hash = offer.hash
                if self.settings_error is None:
                    status.status = pb.ConnectionSettingsStatuses_APPLIED
                else:
                    status.status = pb.ConnectionSettingsStatuses_FAILED
                    status.error_message = self.settings_error
                reaction.send.append(("connection settings status", msg))
            self.offered.set()
        return reaction


@dataclass
class PackageAgent(UiAgent):
    """A UiAgent that accepts packages: it reports each offer DOWNLOADING, then INSTALLED."""

    package_offers: list[pb.PackagesAvailable] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.capabilities |= (
            pb.AgentCapabilities_AcceptsPackages | pb.AgentCapabilities_ReportsPackageStatuses
        )

    def react(self, reply: pb.ServerToAgent, now: float | None = None) -> Reaction:
        reaction = super().react(reply, now)
        if reply.HasField("packages_available"):
            offer = pb.PackagesAvailable()
            offer.CopyFrom(reply.packages_available)
            self.package_offers.append(offer)
            reaction.send += [("packages downloading", self._statuses(offer, False))]
            reaction.send += [("packages installed", self._statuses(offer, True))]
        return reaction

    def _statuses(self, offer: pb.PackagesAvailable, installed: bool) -> pb.AgentToServer:
        msg = self.heartbeat()
        msg.package_statuses.server_provided_all_packages_hash = offer.all_packages_hash
        for name, available in offer.packages.items():
            status = msg.package_statuses.packages[name]
            status.name = name
            status.server_offered_version = available.version
            status.server_offered_hash = available.hash
            if installed:
                status.status = pb.PackageStatusEnum_Installed
                status.agent_has_version = available.version
                status.agent_has_hash = available.hash
            else:
                status.status = pb.PackageStatusEnum_Downloading
                status.download_details.download_percent = 30.0
        return msg


class Fleet:
    """Agents connected over WebSocket until `close()`; each heartbeats every `interval` seconds."""

    def __init__(self, url: str, headers: dict[str, str], interval: float = 2.0) -> None:
        self._url = url.replace("http://", "ws://", 1)
        self._headers = headers
        self._interval = interval
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="ui-fleet", daemon=True)
        self._thread.start()

    def connect(self, agent: UiAgent) -> UiAgent:
        """Connect `agent` and wait until its first report has been answered."""
        ready = threading.Event()
        asyncio.run_coroutine_threadsafe(self._run(agent, ready.set), self._loop)
        assert ready.wait(START_TIMEOUT), f"agent {agent.index} got no reply in {START_TIMEOUT} s"
        return agent

    def say_goodbye(self, agent: UiAgent) -> None:
        """Connect `agent`, report, then send AgentDisconnect and close: it shows as disconnected."""
        asyncio.run_coroutine_threadsafe(self._goodbye(agent), self._loop).result(START_TIMEOUT)

    async def _goodbye(self, agent: UiAgent) -> None:
        async with connect(self._url, additional_headers=self._headers, compression=None) as ws:
            await _send(ws, agent.full_report())
            await asyncio.wait_for(ws.recv(), START_TIMEOUT)
            await _send(ws, agent.goodbye())

    async def _run(self, agent: UiAgent, on_ready: Callable[[], None]) -> None:
        async with connect(self._url, additional_headers=self._headers, compression=None) as ws:
            await _send(ws, agent.full_report())
            first = True
            while True:
                try:
                    data = await asyncio.wait_for(ws.recv(), self._interval)
                except TimeoutError:
                    await _send(ws, agent.next_message()[1])
                    continue
                except ConnectionClosed:
                    return
                assert isinstance(data, bytes)
                reaction = agent.react(pb.ServerToAgent.FromString(data[1:]))
                if first:
                    first = False
                    on_ready()
                if reaction.restart:
                    agent.restarts += 1
                    agent.restarted.set()
                for _what, msg in reaction.send:
                    await _send(ws, msg)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(START_TIMEOUT)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(START_TIMEOUT)
        self._loop.close()

    async def _shutdown(self) -> None:
        # Cancelled inside the loop and awaited there, so every socket is closed before the loop stops.
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _send(ws: ClientConnection, msg: pb.AgentToServer) -> None:
    await ws.send(b"\x00" + msg.SerializeToString())
