"""Graceful drain: stop taking WebSockets, then close the open ones a few at a time.

Closing every socket at once (what uvicorn does on shutdown, with 1012) makes every agent reconnect
to the remaining nodes in the same second. Here the sockets are closed evenly over --drain-seconds,
each after a last ServerToAgent{Unavailable, retry_info} whose retry delay is random within
--drain-retry-window, so the reconnects spread over the window on top of the spread of the closes.
HTTP polls keep being answered while a node drains: they hold nothing open.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.services import Services
    from gateway.transport.registry import Holder

logger = logging.getLogger("gateway.transport.drain")

# A socket whose peer stopped reading must not hold up the rest of the drain.
_CLOSE_TIMEOUT = 5.0


def start_drain(services: Services) -> asyncio.Task[int]:
    """Begin draining (idempotent): the running drain task."""
    if services.drain_task is None:
        services.draining = True
        services.metrics.draining.set(1)
        services.drain_task = asyncio.create_task(drain(services), name="drain")
    return services.drain_task


async def drain(services: Services, rng: random.Random | None = None) -> int:
    """Close every WebSocket of this node over the drain window; the number closed."""
    rng = rng or random.Random()
    services.draining = True
    seconds = services.settings.drain_seconds
    window = services.settings.drain_retry_window
    sockets = services.registry.sockets()
    rng.shuffle(sockets)
    logger.info("draining %d WebSockets over %.1fs", len(sockets), seconds)
    started = time.monotonic()
    closing: list[asyncio.Task[None]] = []
    for i, conn in enumerate(sockets):
        # Evenly spaced: the i-th of n closes at i/n of the window.
        delay = started + seconds * i / len(sockets) - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        closing.append(asyncio.create_task(_close(services, conn, rng.uniform(1.0, window))))
    # Sockets that were accepted while the drain began.
    stragglers = [c for c in services.registry.sockets() if c not in set(sockets)]
    closing.extend(asyncio.create_task(_close(services, c, rng.uniform(1.0, window))) for c in stragglers)
    await asyncio.gather(*closing)
    # Let the owner records of the closed sockets go, so other nodes stop routing here.
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(services.presence.settle(), _CLOSE_TIMEOUT)
    closed = len(closing)
    logger.info("drained %d WebSockets in %.1fs", closed, time.monotonic() - started)
    return closed


async def _close(services: Services, conn: Holder, retry_after: float) -> None:
    try:
        await asyncio.wait_for(conn.drain(retry_after), _CLOSE_TIMEOUT)
    except TimeoutError:
        logger.warning("a WebSocket did not take its close frame within %.0fs", _CLOSE_TIMEOUT)
    services.metrics.drain_closed.inc()
