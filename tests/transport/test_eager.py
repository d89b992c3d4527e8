"""eager.run: a coroutine runs at once, and gets a task only when it really waits."""

from __future__ import annotations

import asyncio

import pytest

from gateway.transport import eager

pytestmark = pytest.mark.anyio


class _Boom(Exception):
    pass


async def test_a_coroutine_that_never_waits_is_finished_without_a_task() -> None:
    steps: list[str] = []

    async def handler() -> str:
        steps.append("ran")
        return "done"

    results: list[str] = []
    task = eager.run(handler(), results.append)
    # Before any other callback of the loop could run: the result is there on return.
    assert (task, steps, results) == (None, ["ran"], ["done"])


async def test_a_coroutine_that_waits_is_continued_by_a_task_from_where_it_stopped() -> None:
    loop = asyncio.get_running_loop()
    future: asyncio.Future[int] = loop.create_future()
    steps: list[str] = []

    async def handler() -> int:
        steps.append("before")
        got = await future
        steps.append("after")
        await asyncio.sleep(0)  # a bare yield in the task, too
        return got + 1

    results: list[int] = []
    task = eager.run(handler(), results.append)
    assert task is not None and steps == ["before"] and results == []
    await asyncio.sleep(0)
    assert not task.done()
    future.set_result(41)
    await task
    assert steps == ["before", "after"] and results == [42]


async def test_an_exception_before_the_first_wait_is_raised_by_run() -> None:
    async def handler() -> None:
        raise _Boom

    results: list[None] = []
    with pytest.raises(_Boom):
        eager.run(handler(), results.append)
    assert results == []


async def test_an_exception_after_a_wait_ends_the_task_and_skips_the_result() -> None:
    async def handler() -> None:
        await asyncio.sleep(0)
        raise _Boom

    results: list[None] = []
    task = eager.run(handler(), results.append)
    assert task is not None
    with pytest.raises(_Boom):
        await task
    assert results == []


async def test_an_exception_thrown_into_the_waiting_coroutine_can_be_handled_there() -> None:
    loop = asyncio.get_running_loop()
    future: asyncio.Future[int] = loop.create_future()

    async def handler() -> str:
        try:
            await future
        except _Boom:
            return "handled"
        return "not reached"

    results: list[str] = []
    task = eager.run(handler(), results.append)
    assert task is not None
    future.set_exception(_Boom())
    await task
    assert results == ["handled"]


async def test_cancelling_the_task_cancels_the_coroutine_where_it_waits() -> None:
    loop = asyncio.get_running_loop()
    future: asyncio.Future[None] = loop.create_future()
    cleaned: list[bool] = []

    async def handler() -> None:
        try:
            await future
        finally:
            cleaned.append(True)

    results: list[None] = []
    task = eager.run(handler(), results.append)
    assert task is not None
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # The future the coroutine awaited was cancelled with it, as a plain task would do.
    assert cleaned == [True] and future.cancelled() and results == []


async def test_a_coroutine_may_wait_several_times_in_its_task() -> None:
    loop = asyncio.get_running_loop()
    futures = [loop.create_future() for _ in range(3)]

    async def handler() -> int:
        total = 0
        for future in futures:
            total += await future
        return total

    results: list[int] = []
    task = eager.run(handler(), results.append)
    assert task is not None
    for n, future in enumerate(futures):
        loop.call_later(0.01 * (n + 1), future.set_result, n + 1)
    await task
    assert results == [6]


def test_on_uvloop_the_task_continues_the_coroutine_as_on_asyncio() -> None:
    # The gateway runs on uvloop (cli.py), whose tasks check what a coroutine yields in C.
    uvloop = pytest.importorskip("uvloop")

    async def main() -> list[int]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[int] = loop.create_future()
        sleeper = asyncio.ensure_future(asyncio.sleep(3600))

        async def handler() -> int:
            got = await future
            try:
                await sleeper
            except asyncio.CancelledError:
                return got * 2
            return -1

        results: list[int] = []
        task = eager.run(handler(), results.append)
        assert task is not None
        loop.call_soon(future.set_result, 21)
        while not future.done():
            await asyncio.sleep(0)
        await asyncio.sleep(0)
        sleeper.cancel()
        await task
        return results

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        assert runner.run(main()) == [42]
