"""The `rollouts` table of the SQLite store: synchronous functions run on the store's threads."""

from __future__ import annotations

import json
import sqlite3

from gateway.fleet.rollout_record import Rollout, UnreadableRollout, rollout_from_json
from gateway.store.base import StoredRollout, StoreError


def _rollout(name: str, record: str) -> Rollout:
    try:
        return rollout_from_json(json.loads(record))
    except (UnreadableRollout, json.JSONDecodeError) as exc:
        raise StoreError(f"rollout record of config {name!r}: {exc}") from exc


def get_rollout(conn: sqlite3.Connection, name: str) -> StoredRollout | None:
    row = conn.execute("SELECT record, rev FROM rollouts WHERE name = ?", (name,)).fetchone()
    return None if row is None else StoredRollout(_rollout(name, row[0]), str(row[1]))


def list_rollouts(conn: sqlite3.Connection) -> list[Rollout]:
    return [
        _rollout(name, record)
        for name, record in conn.execute("SELECT name, record FROM rollouts ORDER BY name")
    ]


def put_rollout(conn: sqlite3.Connection, rollout: Rollout, expected_rev: str | None) -> str | None:
    """Runs on the write connection: the check and the write are one serialized transaction."""
    record = json.dumps(rollout.to_json(), separators=(",", ":"), sort_keys=True)
    conn.execute("BEGIN IMMEDIATE")
    try:
        written = _put(conn, rollout.name, record, expected_rev)
        conn.execute("COMMIT")
        return written
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _put(conn: sqlite3.Connection, name: str, record: str, expected_rev: str | None) -> str | None:
    if conn.execute("SELECT 1 FROM configs WHERE name = ?", (name,)).fetchone() is None:
        return None
    row = conn.execute("SELECT rev FROM rollouts WHERE name = ?", (name,)).fetchone()
    current = None if row is None else str(row[0])
    if current != expected_rev:
        return None
    rev = 1 if row is None else row[0] + 1
    conn.execute("INSERT OR REPLACE INTO rollouts (name, record, rev) VALUES (?, ?, ?)", (name, record, rev))
    return str(rev)
