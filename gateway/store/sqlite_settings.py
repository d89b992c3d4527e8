"""The `connection_settings` table of the SQLite store: synchronous functions run on its threads."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from typing import Any

from gateway.fleet.connection_settings import ConnectionSettings, SettingsSpec, spec_from_json, spec_json

TABLE = """
    CREATE TABLE IF NOT EXISTS connection_settings (
        name TEXT PRIMARY KEY,
        spec TEXT NOT NULL,
        version INTEGER NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        hash TEXT NOT NULL
    )
    """
_SELECT = "SELECT name, spec, version, created_at, updated_at, hash FROM connection_settings"


def _settings(row: Sequence[Any]) -> ConnectionSettings:
    return ConnectionSettings(
        name=row[0],
        spec=spec_from_json(json.loads(row[1])),
        version=row[2],
        created_at=row[3],
        updated_at=row[4],
        hash=row[5],
    )


def list_settings(conn: sqlite3.Connection) -> list[ConnectionSettings]:
    return [_settings(row) for row in conn.execute(_SELECT + " ORDER BY name")]


def get_settings(conn: sqlite3.Connection, name: str) -> ConnectionSettings | None:
    row = conn.execute(_SELECT + " WHERE name = ?", (name,)).fetchone()
    return None if row is None else _settings(row)


def put_settings(
    conn: sqlite3.Connection, name: str, spec: SettingsSpec, now: float
) -> tuple[ConnectionSettings, bool]:
    """Runs on the write connection, so the read-check-write below is one serialized transaction."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        current = get_settings(conn, name)
        digest = spec.digest()
        if current is not None and current.hash == digest:
            conn.execute("COMMIT")
            return current, False
        stored = ConnectionSettings(
            name=name,
            spec=spec,
            version=1 if current is None else current.version + 1,
            created_at=now if current is None else current.created_at,
            updated_at=now,
            hash=digest,
        )
        conn.execute(
            "INSERT OR REPLACE INTO connection_settings (name, spec, version, created_at, updated_at, hash) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (
                name,
                json.dumps(spec_json(spec), separators=(",", ":"), sort_keys=True),
                stored.version,
                stored.created_at,
                stored.updated_at,
                stored.hash,
            ),
        )
        conn.execute("COMMIT")
        return stored, True
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def delete_settings(conn: sqlite3.Connection, name: str) -> bool:
    deleted = conn.execute("DELETE FROM connection_settings WHERE name = ?", (name,)).rowcount
    conn.commit()
    return bool(deleted)
