"""A node's turns at the writer lock (sqlite_lock.py), and the write-ahead log's checkpoints, which
run after a turn rather than inside it.

SQLite checkpoints the log automatically, inside the commit that takes it past 1,000 pages. With
several nodes on one file that commit holds the writer lock every other node waits for, and with
1,000-row batches nearly every commit crosses the threshold: a 1,000-row APPLIED batch of a
100,000-agent file spent 55-59 ms under the lock that way, 35-37 ms without it (docs/performance.md,
the ninth pass). So the store's connections turn the automatic checkpoint off, and a node
checkpoints (PASSIVE: it waits for no one, other nodes commit meanwhile) once it has changed
CHECKPOINT_ROWS rows since its last one.

SQLite starts the log over from its beginning only after a checkpoint has reached the log's end,
which one beside other nodes' commits never does: the log would grow for as long as the nodes are
busy (966 MB in a 100,000-agent config change). Once a checkpoint finds LOG_RESTART_FRAMES in the
log, the node's next one runs inside its turn, where nobody commits meanwhile.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable
from typing import Any, TypeVar

from gateway.store.sqlite_lock import WriterLock

T = TypeVar("T")

logger = logging.getLogger("gateway.store.sqlite_turns")

# Rows a node changes between two checkpoints (about SQLite's own 1,000 pages).
CHECKPOINT_ROWS = 1000
# Frames in the log (about 40 MB) past which the next checkpoint runs inside the node's turn.
LOG_RESTART_FRAMES = 10_000


def no_automatic_checkpoints(conn: sqlite3.Connection) -> None:
    """For every connection of the store: checkpoints are the node's (Turns), never a commit's."""
    conn.execute("PRAGMA wal_autocheckpoint = 0")


class Turns:
    """One node's turns at the writer lock of one database, used from its write thread only."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.lock = WriterLock(path)
        # Rows changed since the last checkpoint, and whether the log is long enough that the next
        # one runs inside a turn.
        self.unchecked = 0
        self.log_long = False

    def take(self, conn: sqlite3.Connection | None, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` under the writer lock, with `conn` the connection it writes through (None:
        not open yet); then, once this node has changed CHECKPOINT_ROWS rows, a checkpoint."""
        before = 0 if conn is None else conn.total_changes
        try:
            result: T = self.lock.run(self._turn, conn, fn, *args)
            return result
        finally:
            if conn is not None:
                self.unchecked += conn.total_changes - before
                if self.unchecked >= CHECKPOINT_ROWS:
                    self.checkpoint(conn)

    def _turn(self, conn: sqlite3.Connection | None, fn: Callable[..., T], *args: Any) -> T:
        result = fn(*args)
        if self.log_long and conn is not None:
            # Nobody commits meanwhile: this one copies the whole log, and the next write starts
            # the log over from its beginning.
            self.checkpoint(conn)
        return result

    def checkpoint(self, conn: sqlite3.Connection) -> None:
        """Copy the log into the database, as far as no reader still needs it."""
        try:
            busy, frames, _copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.Error as exc:
            # Nothing is lost: the log keeps every commit, and the next turn tries again.
            logger.warning("checkpoint of %s failed: %s", self.path, exc)
            return
        self.log_long = frames >= LOG_RESTART_FRAMES
        if not busy:
            # Busy: another node is checkpointing; this one asks again after its next turn.
            self.unchecked = 0

    def close(self) -> None:
        self.lock.close()
