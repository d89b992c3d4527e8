"""Liveness and readiness, served on both ports.

The OpAMP port is open to anyone who can reach it (no key is asked for /readyz), so its /readyz says
only ready or not ready; the admin port's /readyz names the node and says what is wrong (the store's
error, the bus and its state), which can hold host names and ports."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse

from gateway.api.context import node_of
from gateway.store.base import StoreError
from gateway.store.breaker import CircuitBreaker


async def healthz(_request: Request) -> JSONResponse:
    """The process and its event loop are alive. Never checks dependencies: an outage of the store
    must not make Kubernetes restart every pod."""
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> JSONResponse:
    """The admin port's readiness: 200 or 503, with the details."""
    services = node_of(request)
    problems: dict[str, str] = {}
    if services.drain.draining:
        problems["drain"] = "draining: not accepting new agents"
    try:
        await services.store.ping()
    except StoreError as exc:
        problems["store"] = str(exc)
    if services.writer.last_error is not None:
        problems["writer"] = f"last flush failed: {services.writer.last_error}"
    # The bus is reported, never a reason to fail: with Redis down a node still answers every agent
    # and converges them on their next message; failing readiness on every node at once would turn
    # a slower push into a fleet-wide outage.
    bus = services.bus.status()
    # The breaker's state is reported either way; when open, ping() above failed fast and said why.
    circuit = services.store.state if isinstance(services.store, CircuitBreaker) else "closed"
    if problems:
        return JSONResponse(
            {"status": "unavailable", "problems": problems, "bus": bus, "store_circuit": circuit},
            status_code=503,
        )
    return JSONResponse(
        {"status": "ready", "node": services.settings.node_id, "bus": bus, "store_circuit": circuit}
    )


async def readyz_plain(request: Request) -> JSONResponse:
    """The OpAMP port's readiness: the same decision as `readyz`, without any detail."""
    verdict = await readyz(request)
    if verdict.status_code == 200:
        return JSONResponse({"status": "ready"})
    return JSONResponse({"status": "unavailable"}, status_code=verdict.status_code)
