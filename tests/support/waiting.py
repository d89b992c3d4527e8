"""Small helpers shared by async tests: readable uids, and waiting for a condition with a deadline
(harness.waiting.eventually, here for the tests that import it with `uid`)."""

from __future__ import annotations

import uuid

from harness.waiting import eventually

__all__ = ["eventually", "uid"]


def uid(n: int) -> bytes:
    """A 16-byte instance_uid whose canonical string ends in `n` (easy to read in failures)."""
    return uuid.UUID(int=n).bytes
