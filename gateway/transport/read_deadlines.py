"""The read timeout of HTTP request bodies, with one timer per node instead of one per request.

A client that trickles its body (slowloris) must not hold a slot in flight for ever, but nearly
every body is complete before the handler runs: an `asyncio.timeout` per request (a timer armed,
then cancelled) costs more than reading the body. So each read registers its task and deadline
here; one timer, armed only while reads are registered, wakes every `timeout / 4` and cancels the
reads past their deadline. A read is thus cut between `timeout` and `1.25 * timeout` after it began.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")

# Sweeps per timeout: how late past its deadline a read may be cut.
_SWEEPS = 4


class ReadDeadlines:
    """Read timeouts for the requests of one event loop."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._period = timeout / _SWEEPS
        self._reading: dict[asyncio.Task[object], float] = {}
        self._expired: set[asyncio.Task[object]] = set()
        self._timer: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        return len(self._reading)

    async def run(self, read: Awaitable[T]) -> T:
        """Await `read` in the current task; TimeoutError if it is not done by its deadline."""
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("ReadDeadlines.run() must be awaited in a task")
        loop = asyncio.get_running_loop()
        self._reading[task] = loop.time() + self.timeout
        if self._timer is None:
            self._timer = loop.call_at(loop.time() + self._period, self._sweep)
        try:
            return await read
        except asyncio.CancelledError:
            if task not in self._expired:
                raise
            self._expired.discard(task)
            # The cancellation was this deadline's, not the caller's: undo it, as asyncio.timeout does.
            if task.uncancel() > 0:
                raise
            raise TimeoutError from None
        finally:
            self._reading.pop(task, None)

    def _sweep(self) -> None:
        self._timer = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        for task, deadline in list(self._reading.items()):
            if deadline <= now and task not in self._expired:
                self._expired.add(task)
                task.cancel()
        # Tasks cancelled for a deadline that ended some other way before they could see it.
        self._expired.intersection_update(self._reading)
        if self._reading:
            self._timer = loop.call_at(now + self._period, self._sweep)
