"""Fewer wake-ups for a node holding many mostly idle WebSockets.

With thousands of agents, each sending a heartbeat every 30 s, an event loop wakes up for nearly
every message on its own, and the wake-up costs more than the message: a context switch, and
Python running on caches the rest of the machine has cooled meanwhile. Measured with 5,000 and
9,000 idle agents (`python -m bench fleet`, docs/performance.md), the same node costs 34-37% less
CPU per agent when its loop handles what arrived over 50 ms in one turn (27-29% at 100,000 agents
on 7 nodes), and about a fifth less again over 100 ms, the default.

So while the node holds at least ENGAGE_AT WebSocket agents, its loop, whenever it has nothing left
to do, sleeps for what is left of --loop-batch-window since it last woke, and then handles
everything that arrived meanwhile in one turn. A message waits at most the window longer. Work
already under way is never held up: while callbacks keep being scheduled (a chain of futures and
tasks, such as an agent's first report reading the store), the loop goes on turning; while a thread
works for the loop (a store call) and nothing else is under way, it waits for events as usual (the
thread's result wakes it); and a turn with more work than the window does not sleep at all.
Below DISENGAGE_AT agents the loop waits for events as usual (a small node's wake-ups cost little,
and it answers at once).

The loop must be a CountingLoop (`loop_factory`), which counts what it schedules. A request on the
admin port keeps the loop awake for AWAKE_AFTER_ADMIN seconds: a script or the UI calling the admin
API one call after another must not wait a window per call.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor
from contextvars import Context
from typing import Any, TypeVar, TypeVarTuple, Unpack

logger = logging.getLogger("gateway.pacing")

# WebSocket agents held from which the loop batches its wake-ups, and below which it stops again
# (apart, so a count hovering at the threshold does not switch it every check).
ENGAGE_AT = 1000
DISENGAGE_AT = 800
# Seconds between looks at the count.
CHECK_EVERY = 1.0
AWAKE_AFTER_ADMIN = 1.0

T = TypeVar("T")
Ts = TypeVarTuple("Ts")


class CountingLoop(asyncio.AbstractEventLoop):
    """Mixed into an event loop class: counts the callbacks it is asked to schedule (every future
    that completes and every task step goes through call_soon) and the executor jobs still out, so
    the pacer can tell a loop with work under way from an idle one."""

    scheduled = 0
    in_executor = 0

    def call_soon(
        self, callback: Callable[[Unpack[Ts]], object], *args: *Ts, context: Context | None = None
    ) -> asyncio.Handle:
        self.scheduled += 1
        return super().call_soon(callback, *args, context=context)

    def call_soon_threadsafe(
        self, callback: Callable[[Unpack[Ts]], object], *args: *Ts, context: Context | None = None
    ) -> asyncio.Handle:
        self.scheduled += 1
        return super().call_soon_threadsafe(callback, *args, context=context)

    def run_in_executor(
        self, executor: Executor | None, func: Callable[[Unpack[Ts]], T], *args: *Ts
    ) -> asyncio.Future[T]:
        future = super().run_in_executor(executor, func, *args)
        self.in_executor += 1
        future.add_done_callback(self._executor_done)
        return future

    def _executor_done(self, _future: asyncio.Future[Any]) -> None:
        self.in_executor -= 1


def loop_factory(base: Callable[[], asyncio.AbstractEventLoop] | None) -> Callable[[], CountingLoop]:
    """A factory of CountingLoops on the class `base` makes (None: asyncio's default loop)."""
    made = (base or asyncio.new_event_loop)()
    cls = type(made)
    made.close()
    counting = type(f"Counting{cls.__name__}", (CountingLoop, cls), {})

    def new() -> CountingLoop:
        loop: CountingLoop = counting()
        return loop

    return new


def pause(began: float, now: float, window: float) -> float:
    """How long an idle loop that woke at `began` sleeps at `now`: what is left of the window, and
    nothing once its work took the whole window."""
    return max(0.0, began + window - now)


class LoopPacer:
    """Batches one CountingLoop's wake-ups while `agents()` is at least ENGAGE_AT (see above)."""

    def __init__(
        self,
        window: float,
        agents: Callable[[], int],
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.window = window
        self._agents = agents
        self._clock = clock
        self._sleep = sleep
        self._loop: CountingLoop | None = None
        self._check_handle: asyncio.TimerHandle | None = None
        # The next turn's callback (a timer while awake).
        self._turn_handle: asyncio.Handle | None = None
        # When the loop last woke from a sleep, and its count of scheduled callbacks at the last turn.
        self._woke = 0.0
        self._seen = 0
        self._awake_until = 0.0
        self.slept = 0.0

    @property
    def engaged(self) -> bool:
        return self._turn_handle is not None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start looking at the agent count; nothing at all with a window of 0, or on a loop that
        does not count what it schedules (the pacer could not tell work under way from idleness)."""
        if self.window <= 0 or self._loop is not None:
            return
        if not isinstance(loop, CountingLoop):
            logger.warning("--loop-batch-window ignored: the event loop does not count its callbacks")
            return
        self._loop = loop
        self._check_handle = loop.call_later(CHECK_EVERY, self._check)

    def stop(self) -> None:
        for handle in (self._check_handle, self._turn_handle):
            if handle is not None:
                handle.cancel()
        self._check_handle = self._turn_handle = None
        self._loop = None

    def wake(self) -> None:
        """Do not sleep for the next AWAKE_AFTER_ADMIN seconds (an admin request came in)."""
        self._awake_until = self._clock() + AWAKE_AFTER_ADMIN

    def _check(self) -> None:
        loop = self._loop
        if loop is None:
            return
        agents = self._agents()
        if self._turn_handle is None and agents >= ENGAGE_AT:
            logger.info(
                "batching the event loop's wake-ups (%gs window): %d WebSocket agents", self.window, agents
            )
            self._resume()
        elif self._turn_handle is not None and agents < DISENGAGE_AT:
            logger.info("handling events as they come again: %d WebSocket agents", agents)
            self._turn_handle.cancel()
            self._turn_handle = None
        self._check_handle = loop.call_later(CHECK_EVERY, self._check)

    def _turn(self) -> None:
        """Runs once per turn of the loop while engaged: sleeps if the loop has nothing under way."""
        loop = self._loop
        if loop is None:
            return
        now = self._clock()
        if now < self._awake_until:
            # Awake: the loop waits for events as usual until then (a chain of call_soon would
            # keep it from ever waiting, spinning a core).
            self._turn_handle = loop.call_later(self._awake_until - now, self._resume)
            return
        if loop.scheduled == self._seen:
            if loop.in_executor:
                # Nothing to do but wait for a thread (a store call): the loop waits for events as
                # usual, so the thread's result wakes it at once. Another turn now would make it poll
                # its sockets without waiting, turn after turn, spinning a core for as long as the
                # thread works: during a config change, every node spun while its commit waited for
                # the store's write lock, taking the CPU the node holding the lock needed.
                self._turn_handle = loop.call_later(self.window, self._resume)
                return
            left = pause(self._woke, now, self.window)
            if left > 0:
                # Blocks the loop on purpose: what arrives meanwhile waits in the kernel's buffers
                # and is handled in the next turn, together. The GIL is free for the store's threads.
                self._sleep(left)
                self.slept += left
            self._woke = self._clock()
        self._next_turn(loop)

    def _resume(self) -> None:
        loop = self._loop
        if loop is None:
            return
        self._woke = self._clock()
        self._next_turn(loop)

    def _next_turn(self, loop: CountingLoop) -> None:
        self._turn_handle = loop.call_soon(self._turn)
        # Our own callback is not work under way.
        self._seen = loop.scheduled
