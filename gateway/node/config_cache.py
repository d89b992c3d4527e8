"""Keeping a node's view of the configs current, and pushing changed configs to the sockets it holds.

"Configs" here means everything the fleet view holds: the configs with their rollouts, the
connection settings and the packages with their rollouts (gateway/fleet/package_set.py), all read
together and all announced by the same ConfigsChanged event.

Each node keeps every config in memory (a `ConfigSet` in the cache's `fleet`, which every message
reads and only this module replaces): the engine resolves an agent's desired config on every
message without a store read. The set (with the configs' rollout records, rollout_views.py) is
re-read when a ConfigsChanged event arrives on the bus (any node's admin API publishes one after a
change), and on a timer (`--config-refresh-interval`), so a lost event leaves a node stale for at
most that long. When the content changed, every WebSocket agent on this node whose desired config
changed gets it at once; HTTP agents get it in the reply to their next poll.

While the bus is down no event can arrive, so the set is also re-read before a message is handled
if it is older than STALE_WITHOUT_BUS: every agent then gets a change in the reply to its next
message, as with a working bus, only without the push. Events sent during an outage are lost, so
every (re)connect of the bus re-reads the set and pushes whatever changed meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Protocol

from gateway.bus.base import Bus, BusUnavailable, ConfigsChanged
from gateway.fleet.configs import Config
from gateway.fleet.connection_settings import ConnectionSettings
from gateway.fleet.desired import ConfigSet
from gateway.fleet.package_set import PackageSet
from gateway.fleet.packages import Package
from gateway.metrics import Metrics
from gateway.node.push import CredentialRecords, Missing, push_config
from gateway.node.registry import Holder, Registry
from gateway.node.rollout_views import (
    PackageRolloutSource,
    RolloutSource,
    package_rollout_views,
    rollout_views,
)
from gateway.opamp import capabilities as caps, heartbeat
from gateway.opamp.connection_offers import SettingsSet
from gateway.opamp.engine import DEFAULT_MAX_DESCRIPTION_BYTES, FleetView
from gateway.opamp.push import config_due
from gateway.periodic import Periodic
from gateway.store.base import StoreError

logger = logging.getLogger("gateway.node.config_cache")

# Sends in flight at once while pushing to every socket after a change.
_PUSH_CONCURRENCY = 256
# Seconds a message may rely on the configs read last while the bus is down. One store read per
# second per node at most, and only while agents send messages.
STALE_WITHOUT_BUS = 1.0


class ConfigSource(RolloutSource, PackageRolloutSource, Protocol):
    """Where the configs, connection settings and packages, and their rollouts, are read from (the
    store)."""

    async def list_configs(self) -> list[Config]: ...

    async def list_connection_settings(self) -> list[ConnectionSettings]: ...

    async def list_packages(self) -> list[Package]: ...


class ConfigCache:
    def __init__(
        self,
        configs: ConfigSource,
        bus: Bus,
        registry: Registry,
        metrics: Metrics,
        *,
        refresh_interval: float,
        push_rate: float,
        resend_after: float,
        max_description_bytes: int = DEFAULT_MAX_DESCRIPTION_BYTES,
        heartbeat_interval: int = 0,
        credential_endpoint: str = "",
        credentials: CredentialRecords | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._configs = configs
        self._bus = bus
        self._registry = registry
        self._metrics = metrics
        self._push_rate = push_rate
        self._clock = clock
        self._heartbeat_offer = heartbeat.settings_offer(heartbeat_interval)
        # --public-opamp-url with --agent-credentials per-agent ("": off), and the agents' credential
        # records, which the offers of per-agent credentials depend on (gateway/node/credentials.py).
        self._credential_endpoint = credential_endpoint
        self.credentials = credentials
        settings = self._settings(())
        self._fleet = FleetView(
            server_capabilities=caps.server_capabilities(settings.offers_any),
            config_resend_after=resend_after,
            max_description_bytes=max_description_bytes,
            settings=settings,
        )
        self._lock = asyncio.Lock()
        self._timer = Periodic("config-refresh", refresh_interval, self._on_timer)
        # time.monotonic() of the last read, or of a message's failed attempt at one (a failing
        # store is not asked again by every message).
        self._read_at = -math.inf
        # Set once the configs could be read: until then, readiness reports them unknown.
        self.loaded = False
        # The push after a change made through this node's admin API (see `changed`).
        self._pushes: set[asyncio.Task[int]] = set()

    @property
    def fleet(self) -> FleetView:
        """What the fleet wants now, as the engine sees it; replaced (never changed) on each read."""
        return self._fleet

    async def start(self) -> None:
        try:
            await self.refresh("start")
        except StoreError as exc:
            logger.warning("could not read the configs at start (retrying on the timer): %s", exc)
        self._timer.start()

    async def stop(self) -> None:
        await self._timer.stop()
        for task in self._pushes:
            task.cancel()
        await asyncio.gather(*self._pushes, return_exceptions=True)

    async def _on_timer(self) -> None:
        try:
            await self.refresh("timer")
        except StoreError as exc:
            logger.warning("config refresh failed (keeping the configs known so far): %s", exc)

    async def refresh(self, reason: str) -> int:
        """Re-read the configs; if they changed, push to this node's sockets. The number of pushes.

        Raises StoreError when the configs cannot be read (the node keeps the set it had).
        """
        async with self._lock:
            if not await self._read(reason):
                return 0
            return await self._push_all()

    def stale(self) -> bool:
        """Whether `refresh_if_stale` would read the store now (a WebSocket heartbeat that need not
        wait for anything is answered without a task; one that would goes the awaited way)."""
        return (
            not (self._bus.up or self._lock.locked())
            and time.monotonic() - self._read_at >= STALE_WITHOUT_BUS
        )

    async def refresh_if_stale(self) -> None:
        """Before a message is handled: while the bus is down, re-read configs older than
        STALE_WITHOUT_BUS, so the message is answered with what the store holds now.

        No push from here: the agent whose message this is gets the change in its reply (a push
        as well would send it twice), every other agent with its own next message.
        """
        if self._bus.up or self._lock.locked():
            # With the bus up, events keep the set current; a read under way is as fresh as ours.
            return
        if time.monotonic() - self._read_at < STALE_WITHOUT_BUS:
            return
        self._read_at = time.monotonic()
        try:
            async with self._lock:
                await self._read("a message while the bus is down")
        except StoreError as exc:
            logger.debug("config refresh before a message failed (answering with the configs known): %s", exc)

    async def caught_up(self) -> None:
        """After the bus (re)connects: events sent while it was down are lost, so re-read the configs
        and push to every socket whose desired config differs from its last offer or report (a
        message may have re-read the set already, and then nobody else was pushed the change)."""
        try:
            async with self._lock:
                await self._read("bus connected")
                await self._push_all()
        except StoreError as exc:
            logger.warning("config refresh after the bus connected failed (retrying on the timer): %s", exc)

    async def _read(self, reason: str) -> bool:
        """Read the configs into `fleet` (the caller holds the lock); True if they changed."""
        listed = tuple(await self._configs.list_configs())
        configs = ConfigSet(listed, rollouts=await rollout_views(self._configs, listed))
        settings = self._settings(tuple(await self._configs.list_connection_settings()))
        stored = tuple(await self._configs.list_packages())
        packages = PackageSet(stored, rollouts=await package_rollout_views(self._configs, stored))
        self._read_at = time.monotonic()
        self.loaded = True
        fleet = self._fleet
        now = (configs.generation, settings.generation, packages.generation)
        if now == (fleet.configs.generation, fleet.settings.generation, fleet.packages.generation):
            return False
        if configs.generation != fleet.configs.generation:
            fleet = replace(fleet, configs=configs)
            self._metrics.configs.set(len(configs.configs))
        if packages.generation != fleet.packages.generation:
            fleet = replace(fleet, packages=packages)
            self._metrics.packages.set(len(packages.packages))
        if settings.generation != fleet.settings.generation:
            # OffersConnectionSettings while there is anything to offer (spec: server capabilities).
            fleet = replace(
                fleet, settings=settings, server_capabilities=caps.server_capabilities(settings.offers_any)
            )
        self._fleet = fleet
        logger.info(
            "configs changed (%s): %d configs, %d connection settings, %d packages known",
            reason,
            len(configs.configs),
            len(settings.settings),
            len(packages.packages),
        )
        return True

    def _settings(self, stored: tuple[ConnectionSettings, ...]) -> SettingsSet:
        return SettingsSet(
            stored, heartbeat_offer=self._heartbeat_offer, credential_endpoint=self._credential_endpoint
        )

    def _due(self, uid: bytes, conn: Holder, fleet: FleetView, now: float) -> bool:
        state = conn.state(uid)
        if state is None:
            return False
        if self.credentials is None:
            return config_due(state, fleet, now)
        record = self.credentials.peek(uid)
        # Without its credential record the offer cannot be decided: its next message gets it.
        return not isinstance(record, Missing) and config_due(state, fleet, now, record)

    async def _push_all(self) -> int:
        """Push to every socket whose agent's desired config changed. With ~15,000 sockets on a node
        this must not hold the event loop: the decision is made synchronously (no Task for an agent
        that needs nothing), _PUSH_CONCURRENCY agents at a time, and the loop serves other sockets
        between two chunks."""
        registrations = self._registry.registrations()
        rate = self._push_rate
        pushed = 0
        started = time.monotonic()
        for start in range(0, len(registrations), _PUSH_CONCURRENCY):
            fleet, now = self._fleet, self._clock()
            chunk = [
                (uid, conn)
                for uid, conn in registrations[start : start + _PUSH_CONCURRENCY]
                if self._due(uid, conn, fleet, now)
            ]
            if chunk:
                results = await asyncio.gather(*(self._push(uid, conn) for uid, conn in chunk))
                pushed += sum(results)
            # --config-push-rate: a fleet-wide change must not bring every agent's APPLYING and
            # APPLIED reports back at once (the sockets' pings and heartbeats queue behind them).
            ahead = pushed / rate - (time.monotonic() - started) if rate else 0.0
            await asyncio.sleep(max(0.0, ahead))
        if pushed:
            logger.info("pushed remote config to %d WebSocket agents", pushed)
        return pushed

    async def _push(self, uid: bytes, conn: Holder) -> bool:
        # Decided again when the send starts: the agent's own message may have changed its record.
        if not await push_config(conn, uid, self._fleet, self._clock(), self.credentials):
            return False
        self._metrics.pushes.labels(kind="config", delivery="pushed").inc()
        return True

    async def changed(self, reason: str) -> None:
        """After a change made on this node: re-read here, tell every other node, then push to this
        node's sockets in the background. Other nodes must not wait for this node's push (with
        15,000 sockets it takes seconds), nor must the admin API's reply."""
        try:
            async with self._lock:
                fresh = await self._read(reason)
        except StoreError as exc:
            logger.warning("config refresh after %s failed: %s", reason, exc)
            fresh = False
        try:
            await self._bus.broadcast(ConfigsChanged(reason=reason))
            self._metrics.bus_events.labels(direction="sent", event="ConfigsChanged").inc()
        except BusUnavailable as exc:
            # Other nodes catch up on their timer, and their agents on their next message.
            logger.warning("bus unavailable, other nodes will see the change on their next refresh: %s", exc)
        if fresh:
            task = asyncio.create_task(self._locked_push(), name="config-push")
            self._pushes.add(task)
            task.add_done_callback(self._pushed)

    async def _locked_push(self) -> int:
        # The lock keeps this push from deciding for a socket while another push is sending to it.
        async with self._lock:
            return await self._push_all()

    def _pushed(self, task: asyncio.Task[int]) -> None:
        self._pushes.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("config push failed", exc_info=task.exception())
