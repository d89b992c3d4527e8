"""Waiting for a condition with a deadline: `eventually` from async code, `wait_until` from sync code."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


async def eventually(
    check: Callable[[], object | Awaitable[object]],
    timeout: float = 5.0,
    interval: float = 0.01,
    what: str = "",
) -> None:
    """Poll `check` (plain or async) until it is truthy; fail once `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out waiting for {what}" if what else "condition not met within the deadline"
            )
        await asyncio.sleep(interval)


def wait_until(check: Callable[[], T | None], timeout: float, what: str, interval: float = 0.05) -> T:
    """Poll `check` until it returns something other than None/False; fail naming `what`.

    The last value seen and the last exception raised by `check` (an AssertionError, say) go into
    the failure message, so a timeout says what was observed, not just that it timed out.
    """
    deadline = time.monotonic() + timeout
    last: object = None
    last_error: BaseException | None = None
    while True:
        try:
            value = check()
        except AssertionError as exc:
            value, last_error = None, exc
        else:
            if value is not None and value is not False:
                return value
            last = value
        if time.monotonic() >= deadline:
            detail = f"; last error: {last_error}" if last_error is not None else f"; last value: {last!r}"
            raise AssertionError(f"timed out after {timeout:.1f}s waiting for {what}{detail}")
        time.sleep(interval)
