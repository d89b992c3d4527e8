"""Run a coroutine at once, and give it a task only if it has to wait.

An HTTP heartbeat whose record the node already knows is handled without waiting for anything, yet
the handler is a coroutine because other messages do wait (a store read, a durable write). A task
per request costs more than handling such a heartbeat (docs/performance.md), so the OpAMP port runs
the handler's first steps right away, in the protocol's callback, and only a handler that really
suspends is handed to a task, which carries on from where it stopped. Python 3.12's eager task
factory does the same for every task of a loop; this does it for one call site, on 3.11 too.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Generator
from typing import Any, TypeVar

T = TypeVar("T")


class _Resumed:
    """Awaitable that drives a coroutine already started elsewhere, from the future it waits on."""

    __slots__ = ("_coro", "_waiting")

    def __init__(self, coro: Coroutine[Any, Any, T], waiting: Any) -> None:
        self._coro = coro
        self._waiting = waiting

    def __await__(self) -> Generator[Any, Any, Any]:
        coro, waiting = self._coro, self._waiting
        while True:
            try:
                # The task waits on what the coroutine yielded (a future, or None for a bare yield),
                # exactly as if it had run the coroutine from the start.
                sent = yield waiting
            except BaseException as exc:  # the task's cancellation, passed on to the coroutine
                try:
                    waiting = coro.throw(exc)
                except StopIteration as done:
                    return done.value
            else:
                try:
                    waiting = coro.send(sent)
                except StopIteration as done:
                    return done.value


async def _finish(coro: Coroutine[Any, Any, T], waiting: Any, on_result: Callable[[T], None]) -> None:
    result: T = await _Resumed(coro, waiting)
    on_result(result)


def run(coro: Coroutine[Any, Any, T], on_result: Callable[[T], None]) -> asyncio.Task[None] | None:
    """Run `coro` until it finishes or first waits. Finished: `on_result(result)` has been called and
    None is returned. Waiting: the returned task finishes it and then calls `on_result`.

    An exception from the coroutine's first steps propagates from here; a later one ends the task.
    """
    try:
        waiting = coro.send(None)
    except StopIteration as done:
        on_result(done.value)
        return None
    return asyncio.get_running_loop().create_task(_finish(coro, waiting, on_result))
