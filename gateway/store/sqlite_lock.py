"""The lock that takes turns between the gateway processes writing to one SQLite file.

SQLite lets one connection write at a time; the others wait in its busy handler, which sleeps 1, 2,
5, ... up to 100 ms between attempts and cannot be told otherwise from Python. With several nodes
committing at once (every agent's APPLIED after a config change, each committed before its reply)
the write lock then sits free for most of each 100 ms while every waiter sleeps: measured with 7
nodes on one file, single commits of a few hundred rows took 3.8 s, nearly all of it asleep.

An advisory lock (flock) on a file beside the database puts the waiters in the kernel's queue
instead: the next one runs the moment the holder lets go. Only the store's write thread takes it,
around each whole write; readers never do (WAL readers do not wait for writers). A writer that
does not know this lock (the sqlite3 shell, an older gateway) still gets SQLite's own locking."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable
from typing import Any, TypeVar

from gateway.store.base import StoreError

T = TypeVar("T")

SUFFIX = "-writer.lock"


class WriterLock:
    """The flock on `<database>-writer.lock`; opened on first use, by the thread that takes it."""

    def __init__(self, database: str) -> None:
        self.path = database + SUFFIX
        self._fd: int | None = None

    def run(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` holding the lock (blocking until it is free)."""
        if self._fd is None:
            # 0o644 and O_CLOEXEC: a plain file nobody writes to, not inherited by child processes.
            try:
                self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError as exc:
                raise StoreError(f"cannot open the SQLite writer lock {self.path}: {exc}") from exc
        fd = self._fd
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            return fn(*args)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
