"""Everything a running gateway node holds, built once from Settings and shared by both ports.

The composition root: every part is built here from narrow arguments, and only app.py, server.py and
cli.py import this module (tests/test_architecture.py); the layers below read the node through the
protocols in transport/context.py and api/context.py."""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import uuid6
from google.protobuf.internal import api_implementation

from gateway.auth import Auth, Credentials
from gateway.bus.base import Bus
from gateway.bus.local import LocalBus
from gateway.limits import Limits
from gateway.metrics import Metrics
from gateway.node.command_sweep import CommandSweep
from gateway.node.config_cache import ConfigCache
from gateway.node.credentials import AgentCredentials
from gateway.node.drain import Drain
from gateway.node.liveness import Liveness
from gateway.node.presence import Presence
from gateway.node.rebalance import ConnectionAge, Rebalance
from gateway.node.registry import Registry
from gateway.node.retention import RetentionSweep
from gateway.node.rollouts import PackageSubject, RolloutController
from gateway.node.routing import Router
from gateway.settings import Settings
from gateway.store.base import Store
from gateway.store.breaker import CircuitBreaker
from gateway.store.writer import Writer

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
    """Every part of one node, each built here from its narrow arguments; the apps read them from here."""

    settings: Settings
    store: Store
    writer: Writer
    metrics: Metrics
    clock: Callable[[], float] = time.time
    mint_uid: Callable[[], bytes] = mint_uid
    registry: Registry = field(default_factory=Registry)
    # None: a bus for this node alone (running() always passes the configured one).
    bus: Bus = field(default=None)  # type: ignore[assignment]
    # None: no credentials (running() always passes the configured ones).
    auth: Auth = field(default=None)  # type: ignore[assignment]
    # Whether no other gateway uses the store now (SQLite: no other process has the file open);
    # None: it cannot tell (Elasticsearch is shared by design).
    store_alone: Callable[[], bool] | None = None
    limits: Limits = field(init=False)
    presence: Presence = field(init=False)
    liveness: Liveness = field(init=False)
    credentials: AgentCredentials = field(init=False)
    config_cache: ConfigCache = field(init=False)
    router: Router = field(init=False)
    command_sweep: CommandSweep = field(init=False)
    retention: RetentionSweep = field(init=False)
    drain: Drain = field(init=False)
    connection_age: ConnectionAge = field(init=False)
    rebalance: Rebalance = field(init=False)
    rollouts: RolloutController = field(init=False)
    package_rollouts: RolloutController = field(init=False)

    def __post_init__(self) -> None:
        s = self.settings
        if self.bus is None:
            self.bus = LocalBus(s.node_id)
        if self.auth is None:
            self.auth = Auth(Credentials("agent keys"), Credentials("admin tokens"))
        self.limits = Limits(s)
        self.presence = Presence(s.node_id, self.registry, self.bus, s.owner_ttl, node_ttl=s.node_ttl)
        self.liveness = Liveness(
            self.registry,
            self.writer,
            offline_after=s.offline_after,
            clock=self.clock,
            # With a bus of its own, a node whose store nobody else uses is the whole fleet.
            alone=self.store_alone if isinstance(self.bus, LocalBus) and self.bus.alone else None,
        )
        self.credentials = AgentCredentials(
            self.store,
            self.bus,
            self.registry,
            self.metrics,
            fleet=lambda: self.config_cache.fleet,
            clock=self.clock,
        )
        self.config_cache = ConfigCache(
            self.store,
            self.bus,
            self.registry,
            self.metrics,
            refresh_interval=s.config_refresh_interval,
            push_rate=s.config_push_rate,
            resend_after=s.config_resend_after,
            max_description_bytes=s.max_description_bytes,
            heartbeat_interval=s.agent_heartbeat_interval,
            credential_endpoint=s.credential_endpoint,
            credentials=self.credentials,
            clock=self.clock,
        )
        self.rollouts = RolloutController(
            self.store,
            self.config_cache.changed,
            self.metrics,
            interval=s.rollout_interval,
            offline_after=s.offline_after,
            clock=self.clock,
        )
        self.package_rollouts = RolloutController(
            self.store,
            self.config_cache.changed,
            self.metrics,
            interval=s.rollout_interval,
            offline_after=s.offline_after,
            clock=self.clock,
            subject=PackageSubject(self.store),
        )
        self.command_sweep = CommandSweep(self.store, self.registry, self.config_cache, self.metrics)
        self.retention = RetentionSweep(
            self.store, self.metrics, forget_after=s.forget_after, clock=self.clock
        )
        self.router = Router(
            s.node_id,
            self.registry,
            self.bus,
            self.store,
            self.writer,
            self.config_cache,
            self.metrics,
            offline_after=s.offline_window,
            on_pushed=self.command_sweep.pushed_elsewhere,
            on_credential=self.credentials.on_event,
        )
        self.drain = Drain(
            self.registry,
            self.presence,
            self.metrics,
            seconds=s.drain_seconds,
            retry_window=s.drain_retry_window,
        )
        self.connection_age = ConnectionAge(
            self.registry,
            self.metrics,
            max_age=s.max_connection_age,
            jitter=s.max_connection_age_jitter,
            retry_window=s.drain_retry_window,
        )
        self.rebalance = Rebalance(
            s.node_id, self.registry, self.bus, self.metrics, retry_window=s.drain_retry_window
        )

    def watch(self) -> None:
        """Point the scrape-time gauges at this node's live objects."""
        registry, bus, offline_after = self.registry, self.bus, self.settings.offline_window
        self.metrics.watch_node(
            websocket_agents=lambda: registry.websocket_agents,
            http_agents=lambda: registry.http_agents(self.clock(), offline_after),
            websocket_connections=lambda: registry.socket_count,
            bus_up=lambda: 1 if bus.up else 0,
        )
        self.metrics.watch_limits(self.limits)


def open_bus(settings: Settings) -> Bus:
    if not settings.redis_url:
        return LocalBus(settings.node_id)
    from gateway.bus.redis import RedisBus

    return RedisBus(
        settings.redis_url, settings.node_id, owner_ttl=settings.owner_ttl, node_ttl=settings.node_ttl
    )


def open_store(settings: Settings, metrics: Metrics) -> Store:
    """Elasticsearch when --elasticsearch-url is set, else the SQLite file."""
    if settings.elasticsearch_url:
        from gateway.store.elasticsearch import ElasticsearchStore

        return ElasticsearchStore.from_settings(
            settings,
            on_request=metrics.observe_es_request,
            on_bulk=metrics.observe_es_bulk,
            on_rejected=metrics.observe_es_rejected,
            on_oversized=metrics.observe_es_oversized,
        )
    from gateway.store.sqlite import SQLiteStore

    return SQLiteStore(settings.sqlite_path)


async def _bus_up(services: Services) -> None:
    """Every (re)connect of the bus: re-assert this node's sockets, catch up on lost config and
    credential events."""
    try:
        await services.presence.beat()
        await services.presence.refresh()
    finally:
        await services.config_cache.caught_up()
        await services.credentials.caught_up()


@contextlib.asynccontextmanager
async def running(
    settings: Settings, store: Store | None = None, bus: Bus | None = None
) -> AsyncIterator[Services]:
    """Open the store, start the writer and the bus; on exit flush what is pending and close everything.

    Raises CredentialError before opening anything if a key or token file is unusable."""
    auth = Auth.from_settings(settings)
    metrics = Metrics()
    auth.count_errors(metrics.credential_file_failed)
    metrics.set_build(protobuf_backend())
    inner = store or open_store(settings, metrics)
    # Only the SQLite store can tell (sqlite_lock.py NodeMark); Elasticsearch is shared by design.
    store_alone: Callable[[], bool] | None = getattr(inner, "alone", None)
    store = CircuitBreaker(
        inner,
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
    metrics.writer_held.set_function(lambda: writer.held)
    await writer.start()
    services = Services(
        settings=settings,
        store=store,
        writer=writer,
        metrics=metrics,
        store_alone=store_alone,
        bus=bus or open_bus(settings),
        auth=auth,
    )
    services.watch()
    try:
        await auth.start()
        await services.bus.start(services.router.on_event, functools.partial(_bus_up, services))
        await services.presence.start()
        await services.liveness.start()
        await services.config_cache.start()
        await services.command_sweep.start()
        await services.rollouts.start()
        await services.package_rollouts.start()
        await services.retention.start()
        await services.connection_age.start()
        yield services
    finally:
        await services.rebalance.stop()
        await services.connection_age.stop()
        await services.rollouts.stop()
        await services.package_rollouts.stop()
        await services.command_sweep.stop()
        await services.retention.stop()
        await services.config_cache.stop()
        await auth.stop()
        await services.presence.stop()
        await services.bus.stop()
        # After the sockets closed (each handed its liveness over), before the writer's last flush.
        await services.liveness.stop()
        await writer.stop()
        await store.close()
