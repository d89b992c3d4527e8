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
import logging
import os
import struct
from collections.abc import Callable
from typing import Any, TypeVar

from gateway.store.base import StoreError

T = TypeVar("T")

logger = logging.getLogger("gateway.store.sqlite_lock")

SUFFIX = "-writer.lock"
NODES_SUFFIX = "-nodes.lock"
# struct flock on Linux (l_type, l_whence, l_start, l_len, l_pid, padding); l_len 0: the whole file.
_FLOCK = "@hhqqi4x"


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


class NodeMark:
    """A read lock on `<database>-nodes.lock`, held while the store is open, so a node can tell
    whether any other process (another gateway) has the file open: `alone()` asks the kernel
    whether a write lock would conflict with anyone's read lock, without taking one. Open file
    description locks (Linux): two stores of one process on one file see each other too."""

    def __init__(self, database: str) -> None:
        self.path = database + NODES_SUFFIX
        self._fd: int | None = None

    def open(self) -> None:
        if self._fd is not None:
            return
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise StoreError(f"cannot open the SQLite nodes lock {self.path}: {exc}") from exc
        try:
            # Waits only while another node is asking (a query takes no lock) or is opening.
            fcntl.fcntl(fd, fcntl.F_OFD_SETLKW, struct.pack(_FLOCK, fcntl.F_RDLCK, os.SEEK_SET, 0, 0, 0))
        except OSError as exc:
            # A file system without such locks (some network ones): the node never counts itself
            # alone, and writes every HTTP poll as beside other nodes.
            os.close(fd)
            logger.warning(
                "cannot lock %s (%s): HTTP heartbeats will be written on every poll", self.path, exc
            )
            return
        self._fd = fd

    def alone(self) -> bool:
        """Whether no other open store (another gateway process) holds the file's mark."""
        if self._fd is None:
            return False
        asked = struct.pack(_FLOCK, fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)
        try:
            found = fcntl.fcntl(self._fd, fcntl.F_OFD_GETLK, asked)
        except OSError:
            return False
        return bool(struct.unpack(_FLOCK, found)[0] == fcntl.F_UNLCK)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
