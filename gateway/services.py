"""Everything a running gateway node holds, built once from Settings and shared by both ports."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace

import uuid6
from google.protobuf.internal import api_implementation

from gateway.auth import Auth, Credentials
from gateway.bus.base import Bus
from gateway.bus.local import LocalBus
from gateway.limits import Limits
from gateway.metrics import Metrics
from gateway.opamp.engine import FleetView
from gateway.settings import Settings
from gateway.store.base import Store
from gateway.store.breaker import CircuitBreaker
from gateway.store.writer import Writer
from gateway.transport import routing
from gateway.transport.command_sweep import CommandSweep
from gateway.transport.config_push import ConfigCache
from gateway.transport.presence import Presence
from gateway.transport.registry import Registry

logger = logging.getLogger("gateway.services")


def mint_uid() -> bytes:
    """A new instance uid: UUIDv7 (spec SHOULD). One place to switch to stdlib uuid.uuid7 on 3.14."""
    return uuid6.uuid7().bytes


def protobuf_backend() -> str:
    backend: str = api_implementation.Type()
    if backend != "upb":
        logger.warning(
            "protobuf is using the %r backend, not upb: message handling will be ~70x slower. "
            "Unset PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION and install the protobuf wheel for this platform.",
            backend,
        )
    return backend


@dataclass
class Services:
    settings: Settings
    store: Store
    writer: Writer
    metrics: Metrics
    fleet: FleetView = field(default_factory=FleetView)
    clock: Callable[[], float] = time.time
    mint_uid: Callable[[], bytes] = mint_uid
    draining: bool = False
    registry: Registry = field(default_factory=Registry)
    # None: a bus for this node alone (running() always passes the configured one).
    bus: Bus = field(default=None)  # type: ignore[assignment]
    presence: Presence = field(init=False)
    config_cache: ConfigCache = field(init=False)
    command_sweep: CommandSweep = field(init=False)
    drain_task: asyncio.Task[int] | None = None
    # None: no credentials (running() always passes the configured ones).
    auth: Auth = field(default=None)  # type: ignore[assignment]
    limits: Limits = field(init=False)

    def __post_init__(self) -> None:
        if self.bus is None:
            self.bus = LocalBus(self.settings.node_id)
        if self.auth is None:
            self.auth = Auth(Credentials("agent keys"), Credentials("admin tokens"))
        self.limits = Limits(self.settings)
        self.presence = Presence(self.settings.node_id, self.registry, self.bus, self.settings.owner_ttl)
        self.config_cache = ConfigCache(self)
        self.command_sweep = CommandSweep(self)
        if self.fleet.config_resend_after != self.settings.config_resend_after:
            self.fleet = replace(self.fleet, config_resend_after=self.settings.config_resend_after)


def open_bus(settings: Settings) -> Bus:
    if not settings.redis_url:
        return LocalBus(settings.node_id)
    from gateway.bus.redis import RedisBus

    return RedisBus(settings.redis_url, settings.node_id, owner_ttl=settings.owner_ttl)


def open_store(settings: Settings, metrics: Metrics | None = None) -> Store:
    """Elasticsearch when --elasticsearch-url is set, else the SQLite file."""
    if settings.elasticsearch_url:
        from gateway.store.elasticsearch import ElasticsearchStore

        return ElasticsearchStore.from_settings(settings, metrics)
    from gateway.store.sqlite import SQLiteStore

    return SQLiteStore(settings.sqlite_path)


async def _bus_up(services: Services) -> None:
    """Every (re)connect of the bus: re-assert this node's sockets, catch up on lost config events."""
    try:
        await services.presence.refresh()
    finally:
        await services.config_cache.caught_up()


@contextlib.asynccontextmanager
async def running(
    settings: Settings, store: Store | None = None, bus: Bus | None = None
) -> AsyncIterator[Services]:
    """Open the store, start the writer and the bus; on exit flush what is pending and close everything.

    Raises CredentialError before opening anything if a key or token file is unusable."""
    auth = Auth.from_settings(settings)
    metrics = Metrics()
    metrics.set_build(protobuf_backend())
    store = CircuitBreaker(
        store or open_store(settings, metrics),
        failures=settings.store_breaker_failures,
        reset_after=settings.store_breaker_reset,
        on_state=metrics.observe_circuit,
    )
    await store.open()
    writer = Writer(
        store,
        flush_interval=settings.flush_interval,
        batch_size=settings.flush_batch,
        max_pending=settings.writer_queue_size,
        on_flush=metrics.observe_flush,
        on_error=metrics.observe_store_error,
    )
    metrics.writer_depth.set_function(lambda: writer.depth)
    await writer.start()
    services = Services(
        settings=settings,
        store=store,
        writer=writer,
        metrics=metrics,
        bus=bus or open_bus(settings),
        auth=auth,
    )
    metrics.watch_node(services.registry, services.bus, services.clock, settings.offline_after)
    metrics.watch_limits(services.limits)
    try:
        await auth.start()
        await services.bus.start(
            functools.partial(routing.on_event, services), functools.partial(_bus_up, services)
        )
        await services.presence.start()
        await services.config_cache.start()
        await services.command_sweep.start()
        yield services
    finally:
        await services.command_sweep.stop()
        await services.config_cache.stop()
        await auth.stop()
        await services.presence.stop()
        await services.bus.stop()
        await writer.stop()
        await store.close()
