"""Tells this node's own commits to the SQLite file from everyone else's.

`PRAGMA data_version` on a connection changes whenever the file changed since that connection last
looked, whoever committed. The node keeps one connection just for looking (`CommitWatch`), shared
by two threads under a lock:

- the write thread reads it inside each of the node's agent-batch transactions, right after BEGIN
  IMMEDIATE (from there to COMMIT no other connection can commit: the transaction holds SQLite's
  write lock), and again just after COMMIT, and logs the pair, holding the lock from COMMIT to the
  log. The first read comes before the
  transaction's first write because that write may restart the WAL, which other connections see
  as a change too (the event loop, seeing it during the transaction, leaves it to the log entry);
- the event loop reads it before answering from the node's copies (sqlite_cache.py): if every change
  since its last look is a logged pair, only this node wrote, and its copies are still true.

Another gateway commits only under the writer lock (sqlite_lock.py), which the write thread holds
from before its first read to after its second, so another node's commit is never taken for the
node's own. A process that ignores that lock (the sqlite3 shell) could commit in the microseconds
between this node's COMMIT and its second read; the node would then miss that change until the
agent's next heartbeat, whose touch is written at the cached rev, does not apply, and drops the copy.

The event loop never waits: when the write thread holds the lock, or SQLite is busy, it is told
"unknown" and reads the row as before.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager

logger = logging.getLogger("gateway.store.sqlite_watch")

_VERSION = "PRAGMA data_version"


class CommitWatch:
    """One read-only connection's data_version, for the event loop and the write thread."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        # (before, after) of each of this node's commits not yet seen by the event loop.
        self._own: deque[tuple[int, int]] = deque()
        # The data_version the event loop saw last (None: never, or it lost track).
        self._known: int | None = None
        # The data_version when this node's transaction under way began (None: none is).
        self._writing: int | None = None

    def open(self) -> None:
        with self._lock:
            if self._conn is None:
                # No busy timeout: the event loop would rather read the row than wait.
                conn = sqlite3.connect(self.path, timeout=0, isolation_level=None, check_same_thread=False)
                conn.execute("PRAGMA query_only = ON")
                self._conn = conn

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            self._own.clear()
            self._known = None

    # -- the write thread, inside a transaction that holds SQLite's write lock ---------------------

    def began(self) -> int | None:
        """Right after BEGIN IMMEDIATE."""
        with self._lock:
            self._writing = self._version()
            return self._writing

    def rolled_back(self) -> None:
        with self._lock:
            self._writing = None

    @contextmanager
    def committing(self, before: int | None) -> Iterator[None]:
        """Around COMMIT: the event loop must not look between the commit and its logging, or it
        would see a change nobody logged."""
        with self._lock:
            try:
                yield
            finally:
                self._writing = None
            after = self._version()
            if before is not None and after is not None:
                self._own.append((before, after))

    # -- the event loop ----------------------------------------------------------------------------

    def others_wrote(self) -> bool | None:
        """Whether another connection committed since the last call: False only if every change
        since then was this node's own; None if that cannot be told now (ask the file instead)."""
        if not self._lock.acquire(blocking=False):
            # The write thread is committing. If its transaction began where the event loop last
            # looked, nobody else has committed since: it holds SQLite's write lock, and every other
            # gateway waits for the writer lock until after it logs.
            writing = self._writing
            return None if writing is None or writing != self._known else False
        try:
            now = self._version()
            if now is None:
                self._known = None
                self._own.clear()
                return None
            known, own = self._known, self._own
            others = False
            while own:
                before, after = own.popleft()
                # A change between the last look and this commit was not this node's.
                others = others or before != known
                known = after
            if now != known and (self._writing is None or self._writing != known):
                others = True
                known = now
            # Else a change under this node's transaction (its first write restarting the WAL): the
            # transaction's log entry will account for it, starting from `known`.
            self._known = known
            return others
        finally:
            self._lock.release()

    def _version(self) -> int | None:
        conn = self._conn
        if conn is None:
            return None
        try:
            return int(conn.execute(_VERSION).fetchone()[0])
        except sqlite3.Error as exc:
            logger.debug("reading the data_version of %s: %s", self.path, exc)
            return None
