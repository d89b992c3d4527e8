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

from gateway.metrics import Metrics
from gateway.node.presence import Presence
from gateway.node.registry import Holder, Registry

logger = logging.getLogger("gateway.node.drain")

# A socket whose peer stopped reading must not hold up the rest of the drain.
_CLOSE_TIMEOUT = 5.0


class Drain:
    def __init__(
        self, registry: Registry, presence: Presence, metrics: Metrics, *, seconds: float, retry_window: float
    ) -> None:
        self._registry = registry
        self._presence = presence
        self._metrics = metrics
        self._seconds = seconds
        self._retry_window = retry_window
        # Set once a drain begins: the node refuses new WebSockets and reports itself unready.
        self.draining = False
        self.task: asyncio.Task[int] | None = None

    def start(self) -> asyncio.Task[int]:
        """Begin draining (idempotent): the running drain task."""
        if self.task is None:
            self.draining = True
            self._metrics.draining.set(1)
            self.task = asyncio.create_task(self.run(), name="drain")
        return self.task

    async def run(self, rng: random.Random | None = None) -> int:
        """Close every WebSocket of this node over the drain window; the number closed."""
        rng = rng or random.Random()
        self.draining = True
        seconds = self._seconds
        window = self._retry_window
        sockets = self._registry.sockets()
        rng.shuffle(sockets)
        logger.info("draining %d WebSockets over %.1fs", len(sockets), seconds)
        started = time.monotonic()
        closing: list[asyncio.Task[None]] = []
        for i, conn in enumerate(sockets):
            # Evenly spaced: the i-th of n closes at i/n of the window.
            delay = started + seconds * i / len(sockets) - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            closing.append(asyncio.create_task(self._close(conn, rng.uniform(1.0, window))))
        # Sockets that were accepted while the drain began.
        stragglers = [c for c in self._registry.sockets() if c not in set(sockets)]
        closing.extend(asyncio.create_task(self._close(c, rng.uniform(1.0, window))) for c in stragglers)
        await asyncio.gather(*closing)
        # Let the owner records of the closed sockets go, so other nodes stop routing here.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._presence.settle(), _CLOSE_TIMEOUT)
        closed = len(closing)
        logger.info("drained %d WebSockets in %.1fs", closed, time.monotonic() - started)
        return closed

    async def _close(self, conn: Holder, retry_after: float) -> None:
        try:
            await asyncio.wait_for(conn.drain(retry_after), _CLOSE_TIMEOUT)
        except TimeoutError:
            logger.warning("a WebSocket did not take its close frame within %.0fs", _CLOSE_TIMEOUT)
        self._metrics.drain_closed.inc()
