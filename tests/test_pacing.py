"""The loop pacer on a real counting event loop (asyncio's and uvloop's): when it engages, that an
idle loop sleeps what is left of the window while work under way (scheduled callbacks, executor jobs)
never waits, the admin port's wake, and over a real socket that what arrives during a sleep is
handled in one turn."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
import uvloop

from gateway import pacing
from gateway.pacing import DISENGAGE_AT, ENGAGE_AT, CountingLoop, LoopPacer, loop_factory, pause

WINDOW = 0.05
BASES: dict[str, Callable[[], asyncio.AbstractEventLoop] | None] = {
    "asyncio": None,
    "uvloop": uvloop.new_event_loop,
}


class FakeTime:
    """The pacer's clock and sleep: a sleep moves the clock, and records how long it was."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture(autouse=True)
def quick_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pacing, "CHECK_EVERY", 0.01)


@pytest.fixture(params=sorted(BASES))
def run(request: pytest.FixtureRequest) -> Callable[[Callable[[], Coroutine[Any, Any, None]]], None]:
    """Runs a test's coroutine on a counting loop of each kind."""
    factory = loop_factory(BASES[request.param])

    def go(test: Callable[[], Coroutine[Any, Any, None]]) -> None:
        with asyncio.Runner(loop_factory=factory) as runner:
            assert isinstance(runner.get_loop(), CountingLoop)
            runner.run(test())

    return go


async def _turns(count: int) -> None:
    for _ in range(count):
        await asyncio.sleep(0)


async def _until(condition: Callable[[], object], seconds: float = 2.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not condition() and loop.time() < deadline:
        await asyncio.sleep(0.005)
    assert condition(), "condition not reached"


def _started(fake: FakeTime, agents: list[int]) -> LoopPacer:
    pacer = LoopPacer(WINDOW, lambda: agents[0], clock=fake.clock, sleep=fake.sleep)
    pacer.start(asyncio.get_running_loop())
    return pacer


async def _engaged(fake: FakeTime, agents: list[int]) -> LoopPacer:
    pacer = _started(fake, agents)
    await _until(lambda: pacer.engaged)
    return pacer


@pytest.mark.parametrize(
    ("worked", "sleeps"),
    [(0.0, WINDOW), (0.03, WINDOW - 0.03), (WINDOW, 0.0), (3 * WINDOW, 0.0)],
)
def test_an_idle_loop_sleeps_what_its_work_left_of_the_window(worked: float, sleeps: float) -> None:
    assert pause(1000.0, 1000.0 + worked, WINDOW) == pytest.approx(sleeps)


def test_a_small_node_never_sleeps(run: Callable[..., None]) -> None:
    fake, agents = FakeTime(), [ENGAGE_AT - 1]

    async def test() -> None:
        pacer = _started(fake, agents)
        await asyncio.sleep(0.05)
        assert not pacer.engaged
        pacer.stop()

    run(test)
    assert fake.sleeps == []


def test_from_the_threshold_an_idle_loop_sleeps_the_window_each_turn(run: Callable[..., None]) -> None:
    fake, agents = FakeTime(), [ENGAGE_AT]

    async def test() -> None:
        pacer = await _engaged(fake, agents)
        # The test's own timer is all the loop has: every other turn is idle. No time passes on the
        # fake clock between them, so each sleeps the whole window.
        await asyncio.sleep(0.05)
        pacer.stop()
        assert len(fake.sleeps) >= 3
        assert fake.sleeps == [pytest.approx(WINDOW)] * len(fake.sleeps)
        assert pacer.slept == pytest.approx(WINDOW * len(fake.sleeps))

    run(test)


def test_work_under_way_never_waits_and_a_loop_waiting_for_a_thread_does_not_spin(
    run: Callable[..., None],
) -> None:
    fake, agents = FakeTime(), [ENGAGE_AT]

    async def test() -> None:
        loop = asyncio.get_running_loop()
        pacer = await _engaged(fake, agents)
        fake.sleeps.clear()
        # A chain of 50 task steps, each a scheduled callback: none of its turns sleeps.
        await _turns(50)
        assert fake.sleeps == []
        turns = 0
        turn = pacer._turn

        def counted() -> None:
            nonlocal turns
            turns += 1
            turn()

        pacer._turn = counted  # type: ignore[method-assign]
        # A thread working for the loop, nothing else under way: no turn sleeps until its result is
        # back, and the next turn is a timer, so the loop waits for events instead of turning on and on.
        release = threading.Event()
        job = loop.run_in_executor(None, release.wait, 2.0)
        await asyncio.sleep(0.01)
        turns = 0
        assert callable(getattr(pacer._turn_handle, "when", None))
        await asyncio.sleep(4 * WINDOW)
        # A turn per window at most (a spinning loop turns thousands of times in 0.2 s).
        assert turns <= 8
        assert fake.sleeps == []
        waited = loop.time()
        release.set()
        await job
        # The thread's result woke the loop: it did not wait out a window, let alone sleep.
        assert loop.time() - waited < WINDOW
        assert fake.sleeps == []
        # Nothing under way any more: the loop sleeps again.
        await _until(lambda: bool(fake.sleeps))
        pacer.stop()

    run(test)


def test_it_stops_below_the_lower_threshold_only(run: Callable[..., None]) -> None:
    fake, agents = FakeTime(), [ENGAGE_AT]

    async def test() -> None:
        pacer = await _engaged(fake, agents)
        agents[0] = DISENGAGE_AT  # between the two: no change
        await asyncio.sleep(0.05)
        assert pacer.engaged
        agents[0] = DISENGAGE_AT - 1
        await _until(lambda: not pacer.engaged)
        pacer.stop()

    run(test)


def test_an_admin_request_keeps_the_loop_awake_without_spinning_it(run: Callable[..., None]) -> None:
    fake, agents = FakeTime(), [ENGAGE_AT]

    async def test() -> None:
        pacer = await _engaged(fake, agents)
        pacer.wake()
        await asyncio.sleep(0.05)
        fake.sleeps.clear()
        await asyncio.sleep(0.05)
        assert fake.sleeps == []
        # Awake, the next turn is a timer: the loop waits for events instead of turning on and on.
        assert callable(getattr(pacer._turn_handle, "when", None))
        fake.now += pacing.AWAKE_AFTER_ADMIN
        await _until(lambda: bool(fake.sleeps))
        pacer.stop()

    run(test)


def test_a_window_of_zero_or_a_loop_that_does_not_count_does_nothing(run: Callable[..., None]) -> None:
    fake = FakeTime()

    async def test() -> None:
        pacer = LoopPacer(0.0, lambda: 10 * ENGAGE_AT, clock=fake.clock, sleep=fake.sleep)
        pacer.start(asyncio.get_running_loop())
        await asyncio.sleep(0.05)
        assert not pacer.engaged

    run(test)

    async def plain() -> None:
        pacer = LoopPacer(WINDOW, lambda: 10 * ENGAGE_AT, clock=fake.clock, sleep=fake.sleep)
        pacer.start(asyncio.get_running_loop())
        await asyncio.sleep(0.05)
        assert not pacer.engaged

    asyncio.run(plain())
    assert fake.sleeps == []


def test_stop_ends_the_turns(run: Callable[..., None]) -> None:
    fake, agents = FakeTime(), [ENGAGE_AT]

    async def test() -> None:
        pacer = await _engaged(fake, agents)
        pacer.stop()
        assert not pacer.engaged
        slept = len(fake.sleeps)
        await asyncio.sleep(0.05)
        assert len(fake.sleeps) == slept

    run(test)


class _Reads(asyncio.Protocol):
    def __init__(self) -> None:
        self.reads: list[bytes] = []

    def data_received(self, data: bytes) -> None:
        self.reads.append(data)


def test_what_arrives_during_a_sleep_is_read_in_one_turn(run: Callable[..., None]) -> None:
    async def test() -> None:
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair()
        theirs.setblocking(True)
        transport, protocol = await loop.connect_accepted_socket(_Reads, ours)
        chunks = [b"heartbeat-%d;" % i for i in range(5)]
        sleeps: list[float] = []

        def sleep(seconds: float) -> None:
            # Five agents' messages, sent while the loop sleeps, reach the socket's buffer.
            if not sleeps:
                for chunk in chunks:
                    theirs.sendall(chunk)
            sleeps.append(seconds)

        pacer = LoopPacer(WINDOW, lambda: ENGAGE_AT, sleep=sleep)
        pacer.start(loop)
        try:
            await _until(lambda: protocol.reads)
            assert protocol.reads == [b"".join(chunks)]
        finally:
            pacer.stop()
            transport.close()
            theirs.close()

    run(test)
