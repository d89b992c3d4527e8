"""Forgetting agents in the SQLite store (`--forget-after`, `DELETE /api/v1/agents/{uid}`):
synchronous functions run on the store's write thread, each one transaction.

A record goes with the aliases that lead to it (a moved uid's old names). Deleting is idempotent:
what is gone is not counted again, so several processes sharing the file may sweep at once."""

from __future__ import annotations

import sqlite3

# Rows one sweep deletes at most per transaction: keeps the write lock short.
_SWEEP_BATCH = 1000


def forget(conn: sqlite3.Connection, uid: bytes) -> bytes | None:
    """Delete the record stored under `uid` (or the one `uid` was moved to) and its aliases; the uid
    it was stored under, or None when there was none."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        row = conn.execute("SELECT uid FROM agents WHERE uid = ?", (uid,)).fetchone()
        if row is None:
            row = conn.execute(
                "SELECT a.uid FROM uid_aliases AS u JOIN agents AS a ON a.uid = u.new_uid "
                "WHERE u.old_uid = ?",
                (uid,),
            ).fetchone()
        target = None if row is None else bytes(row[0])
        if target is not None:
            conn.execute("DELETE FROM agents WHERE uid = ?", (target,))
            conn.execute("DELETE FROM uid_aliases WHERE new_uid = ?", (target,))
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return target


def forget_unseen(conn: sqlite3.Connection, before: float, limit: int) -> list[bytes]:
    """Delete at most `limit` records last seen before `before` (those seen longest ago first), and
    their aliases; the uids deleted."""
    deleted: list[bytes] = []
    while len(deleted) < limit:
        batch = min(_SWEEP_BATCH, limit - len(deleted))
        conn.execute("BEGIN IMMEDIATE")
        try:
            rows = conn.execute(
                "DELETE FROM agents WHERE uid IN "
                "(SELECT uid FROM agents WHERE last_seen < ? ORDER BY last_seen LIMIT ?) RETURNING uid",
                (float(before), batch),
            ).fetchall()
            uids = [bytes(row[0]) for row in rows]
            conn.executemany("DELETE FROM uid_aliases WHERE new_uid = ?", [(uid,) for uid in uids])
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        deleted.extend(uids)
        if len(uids) < batch:
            break
    return deleted
