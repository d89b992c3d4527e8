"""ReadDeadlines: one timer for every body being read, cutting only the reads past their deadline."""

from __future__ import annotations

import asyncio

import pytest

from gateway.transport.read_deadlines import ReadDeadlines

pytestmark = pytest.mark.anyio


async def test_a_read_done_in_time_returns_its_result_and_leaves_nothing() -> None:
    deadlines = ReadDeadlines(0.2)

    async def quick() -> bytes:
        await asyncio.sleep(0)
        return b"body"

    assert await deadlines.run(quick()) == b"body"
    assert len(deadlines) == 0


async def test_a_read_past_its_deadline_is_cut_never_before_it() -> None:
    deadlines = ReadDeadlines(0.2)
    never = asyncio.get_running_loop().create_future()
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(TimeoutError):
        await deadlines.run(never)
    assert loop.time() - started >= 0.2
    assert len(deadlines) == 0


async def test_only_the_slow_read_among_many_is_cut() -> None:
    deadlines = ReadDeadlines(0.2)

    async def read(delay: float) -> float:
        await asyncio.sleep(delay)
        return delay

    results = await asyncio.gather(
        *(deadlines.run(read(d)) for d in (0.0, 0.01, 0.05, 5.0)), return_exceptions=True
    )
    assert results[:3] == [0.0, 0.01, 0.05]
    assert isinstance(results[3], TimeoutError)
    assert len(deadlines) == 0


async def test_a_cancellation_from_outside_stays_a_cancellation() -> None:
    deadlines = ReadDeadlines(5.0)
    never = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(deadlines.run(never))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(deadlines) == 0


async def test_reads_after_a_quiet_spell_still_time_out() -> None:
    # The timer disarms when nothing is being read and must arm again for the next read.
    deadlines = ReadDeadlines(0.1)
    with pytest.raises(TimeoutError):
        await deadlines.run(asyncio.get_running_loop().create_future())
    await asyncio.sleep(0.2)
    with pytest.raises(TimeoutError):
        await deadlines.run(asyncio.get_running_loop().create_future())
