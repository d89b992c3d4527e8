"""Runs one gateway node: both ports on one event loop, one set of Services, clean shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import sys
from collections.abc import Callable, Iterator
from typing import Any, cast

import uvicorn

from gateway import tls
from gateway.app import admin_app, opamp_app, opamp_post
from gateway.file_limit import raise_file_limit
from gateway.pacing import LoopPacer
from gateway.services import Services, running
from gateway.settings import Settings
from gateway.transport.http import OpampHttp
from gateway.transport.http_protocol import SlowClientProtocol, http_protocol_class
from gateway.transport.keepalive import Keepalive
from gateway.transport.unfinished import UnfinishedRequests
from gateway.transport.websocket import OpampEndpoint
from gateway.transport.ws_protocol import WebSocketProtocol, protocol_class

logger = logging.getLogger("gateway.server")


class _Server(uvicorn.Server):
    """uvicorn's Server, minus its own signal handling: one node owns two servers and stops both."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _config(
    app: object,
    host: str,
    port: int,
    settings: Settings,
    *,
    http: type[SlowClientProtocol] | None = None,
    client_certs: bool = False,
    websocket: type[WebSocketProtocol] | None = None,
) -> uvicorn.Config:
    return uvicorn.Config(
        # uvicorn types its app as a private ASGI alias; the caller passes one of our Starlette apps.
        cast(Any, app),
        host=host,
        port=port,
        lifespan="off",
        # httptools, with slow clients bounded (gateway/transport/http_protocol.py).
        http="httptools" if http is None else http,
        log_config=None,
        access_log=False,
        # The OpAMP port's upgrades go to its own protocol (no compression: OpAMP messages are
        # compact protobuf, and deflate would cost ~2.5x memory per socket); the admin port has no
        # WebSocket route.
        ws="none" if websocket is None else websocket,
        timeout_graceful_shutdown=10,
        server_header=False,
        **tls.uvicorn_options(settings, client_certs=client_certs),
    )


def _http(services: Services, port: str, opamp: OpampHttp | None = None) -> type[SlowClientProtocol]:
    """One port's HTTP protocol: its own unfinished requests, so slow clients on one port never
    crowd out the other (the liveness probe's)."""
    s = services.settings
    metrics = services.metrics

    def count(what: str) -> None:
        if what in ("header", "body"):
            metrics.client_timeouts.labels(kind=what).inc()
        else:
            metrics.shed.labels(
                reason="max_unfinished" if what == "evicted" else "max_unfinished_per_ip"
            ).inc()

    # The whole request gets more than --read-timeout, so POST /v1/opamp answers 408 first.
    unfinished = UnfinishedRequests(
        header_timeout=s.header_timeout,
        body_timeout=1.5 * s.read_timeout,
        per_address=s.max_unfinished_per_ip,
        total=s.max_unfinished,
        count=count,
    )
    metrics.watch_unfinished(port, lambda: unfinished.heads, lambda: unfinished.bodies)
    return http_protocol_class(unfinished, opamp)


def _websocket(services: Services) -> type[WebSocketProtocol]:
    s = services.settings
    endpoint = OpampEndpoint(services, services.auth.agents, services.metrics.auth_failed("opamp"))
    sweep = Keepalive(s.ws_ping_interval, s.ws_ping_timeout, s.ws_idle_timeout)
    # Pings keep idle sockets alive through proxies and find dead peers (the spec is silent). The
    # limit is enforced from each frame's header, closing with 1009 (spec 2.2) before a byte of an
    # oversized message is buffered; the limit counts the OpAMP header (spec 2.2).
    # --max-inflight-bytes bounds what all sockets' partly received messages hold together.
    return protocol_class(
        endpoint,
        sweep,
        limit=s.max_message_bytes,
        send_timeout=s.send_timeout,
        inflight_limit=s.max_inflight_bytes,
    )


# The cyclic GC's generation sizes for a node holding thousands of sockets. Each WebSocket costs
# ~120 GC-tracked objects (uvicorn, websockets, Starlette, the cached record), so 15,000 sockets
# make ~1.9 million. With CPython's defaults (700, 10, 10), a full collection of those stops the
# event loop for 1.0-1.5 s, and one happens whenever the objects promoted since the last one reach
# 25% of the old generation: a dozen times while 15,000 agents connect, and every minute or so
# under heartbeats (each heartbeat's new record survives until the next). Measured with 15,000
# agents heartbeating every 30 s: p99 round trip 1,470 ms with the defaults, 111 ms with these
# (no full collection during connect or heartbeats; docs/performance.md). A young generation of
# 50,000 lets short-lived objects (writes waiting for a flush, replies) die before promotion.
_GC_THRESHOLDS = (50_000, 20, 10)


def _tune_gc(services: Services) -> None:
    """Startup objects (modules, settings, the app) live as long as the process: freeze them out of
    every collection, and size the generations for many long-lived sockets (see above). Each
    collection's pause is counted in opamp_gateway_gc_seconds_total (`python -m bench fleet`)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*_GC_THRESHOLDS)
    gc.callbacks.append(services.metrics.gc_callback())


# How long the event loop's thread may hold the GIL while another thread waits for it (CPython's
# default is 5 ms). The store's write thread gives the GIL up around every SQLite statement step and
# must win it back from a busy loop after each; with SQLite that happens while it holds the file's
# write lock, which every other node sharing the file waits for. At 5 ms, 1,000 statements under a
# busy loop took 4-6 s (docs/performance.md); at 1 ms a fifth of that. The loop is interrupted only
# while a thread is waiting, so an idle node pays nothing.
_SWITCH_INTERVAL = 0.001


def _tune_threads() -> None:
    sys.setswitchinterval(_SWITCH_INTERVAL)


class StartupFailed(Exception):
    """A port could not be opened (already in use, no permission)."""


async def _serve_one(server: uvicorn.Server) -> bool:
    """Serve until told to stop; False if the server never started. uvicorn reports a failed
    bind by logging it and calling sys.exit(), which must not escape as a task exception."""
    try:
        await server.serve()
    except SystemExit:
        return False
    return server.started


async def _announce_when_started(servers: list[uvicorn.Server], settings: Settings) -> None:
    while not all(server.started for server in servers):
        await asyncio.sleep(0.01)
    opamp, admin = (server.servers[0].sockets[0].getsockname() for server in servers)
    scheme = "https" if settings.tls else "http"
    logger.info(
        "gateway node %s serving OpAMP on %s://%s:%d/v1/opamp, admin on %s://%s:%d/api/v1 "
        "(agent keys: %s, admin token: %s, client certificates: %s)",
        settings.node_id,
        scheme,
        opamp[0],
        opamp[1],
        scheme,
        admin[0],
        admin[1],
        "required" if settings.agent_auth else "not required",
        "required" if settings.admin_auth else "not required",
        "required" if settings.tls_client_ca else "not required",
    )


def _waking(app: Any, wake: Callable[[], None]) -> Any:
    """`app`, calling `wake` as each request (or connection) comes in."""

    async def waking(scope: Any, receive: Any, send: Any) -> None:
        wake()
        await app(scope, receive, send)

    return waking


def build_servers(services: Services, wake: Callable[[], None] | None = None) -> list[uvicorn.Server]:
    """The OpAMP port's server and the admin port's; `wake` is called on every admin request (the
    node's LoopPacer keeps the loop awake for the calls that may follow)."""
    s = services.settings
    post = opamp_post(services)
    admin: Any = admin_app(services)
    return [
        _Server(
            _config(
                opamp_app(services, post),
                s.host,
                s.port,
                s,
                http=_http(services, "opamp", post),
                client_certs=True,
                websocket=_websocket(services),
            )
        ),
        _Server(
            _config(
                admin if wake is None else _waking(admin, wake),
                s.admin_host,
                s.admin_port,
                s,
                http=_http(services, "admin"),
            )
        ),
    ]


async def serve(settings: Settings) -> None:
    """Run the node until a signal stops it. Raises TLSConfigError or CredentialError (naming the
    file) before listening if a TLS, key or token file is unusable."""
    tls.check(settings)
    raise_file_limit(settings)
    async with running(settings) as services:
        registry = services.registry
        pacer = LoopPacer(settings.loop_batch_window, lambda: registry.websocket_agents)
        servers = build_servers(services, wake=pacer.wake)
        _tune_gc(services)
        _tune_threads()
        loop = asyncio.get_running_loop()
        pacer.start(loop)

        def _exit_now(_drained: object = None) -> None:
            for server in servers:
                if server.should_exit:
                    server.force_exit = True
                server.should_exit = True

        sigterm_seen = False

        def _stop(sig: signal.Signals) -> None:
            nonlocal sigterm_seen
            # SIGTERM (Kubernetes) drains first: uvicorn alone would close every socket at once with
            # 1012. A second signal, or SIGINT (a person at a terminal), stops at once.
            if sig == signal.SIGTERM and not sigterm_seen:
                sigterm_seen = True
                logger.info("received SIGTERM: draining WebSockets, then shutting down")
                services.drain.start().add_done_callback(_exit_now)
                return
            logger.info("received %s, shutting down", sig.name)
            _exit_now()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, _stop, sig)
        tasks = [asyncio.create_task(_serve_one(server)) for server in servers]
        started = asyncio.create_task(_announce_when_started(servers, settings))
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        # If one port could not start (address in use), stop the other too.
        for server in servers:
            server.should_exit = True
        results = await asyncio.gather(*tasks)
        pacer.stop()
        started.cancel()
        if not all(results):
            raise StartupFailed("could not listen on every port; see the error above")
