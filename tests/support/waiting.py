"""Small helpers shared by async tests: readable uids, and waiting for a condition with a deadline."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable


def uid(n: int) -> bytes:
    """A 16-byte instance_uid whose canonical string ends in `n` (easy to read in failures)."""
    return uuid.UUID(int=n).bytes


async def eventually(check: Callable[[], object], timeout: float = 5.0, interval: float = 0.01) -> None:
    """Poll `check` until it is truthy; fail once `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met within the deadline")
        await asyncio.sleep(interval)
