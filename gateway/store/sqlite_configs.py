"""The `configs` table of the SQLite store: synchronous functions run on the store's threads."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from typing import Any

from gateway.fleet.configs import Config, ConfigRequest, spec_from_json, spec_json
from gateway.fleet.versions import ConfigVersion, oldest_kept
from gateway.store.base import VersionConflict

_SELECT = "SELECT name, spec, version, created_at, updated_at, hash FROM configs"


def _config(row: Sequence[Any]) -> Config:
    return Config(
        name=row[0],
        spec=spec_from_json(json.loads(row[1])),
        version=row[2],
        created_at=row[3],
        updated_at=row[4],
        hash=row[5],
    )


def list_configs(conn: sqlite3.Connection) -> list[Config]:
    return [_config(row) for row in conn.execute(_SELECT + " ORDER BY name")]


def get_config(conn: sqlite3.Connection, name: str) -> Config | None:
    row = conn.execute(_SELECT + " WHERE name = ?", (name,)).fetchone()
    return None if row is None else _config(row)


def _check(name: str, expected: int | None, current: Config | None) -> None:
    have = 0 if current is None else current.version
    if expected is not None and expected != have:
        raise VersionConflict(name, expected, have)


def put_config(
    conn: sqlite3.Connection, name: str, request: ConfigRequest, now: float
) -> tuple[Config, bool]:
    """Runs on the write connection, so the read-check-write below is one serialized transaction."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        current = get_config(conn, name)
        _check(name, request.expected_version, current)
        digest = request.spec.digest()
        if current is not None and current.hash == digest:
            conn.execute("COMMIT")
            return current, False
        stored = Config(
            name=name,
            spec=request.spec,
            version=1 if current is None else current.version + 1,
            created_at=now if current is None else current.created_at,
            updated_at=now,
            hash=digest,
        )
        spec = json.dumps(spec_json(stored.spec), separators=(",", ":"), sort_keys=True)
        conn.execute(
            "INSERT OR REPLACE INTO configs (name, spec, version, created_at, updated_at, hash) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (name, spec, stored.version, stored.created_at, stored.updated_at, stored.hash),
        )
        conn.execute(
            "INSERT OR REPLACE INTO config_versions (name, version, spec, hash, created_at) "
            "VALUES (?, ?, ?, ?, ?)",
            (name, stored.version, spec, stored.hash, stored.updated_at),
        )
        conn.execute(
            "DELETE FROM config_versions WHERE name = ? AND version < ?", (name, oldest_kept(stored.version))
        )
        conn.execute("COMMIT")
        return stored, True
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def delete_config(conn: sqlite3.Connection, name: str, expected: int | None) -> bool:
    conn.execute("BEGIN IMMEDIATE")
    try:
        current = get_config(conn, name)
        if current is None and expected is None:
            conn.execute("COMMIT")
            return False
        _check(name, expected, current)
        conn.execute("DELETE FROM configs WHERE name = ?", (name,))
        conn.execute("DELETE FROM config_versions WHERE name = ?", (name,))
        conn.execute("DELETE FROM rollouts WHERE name = ?", (name,))
        conn.execute("COMMIT")
        return current is not None
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def config_versions(conn: sqlite3.Connection, name: str) -> list[ConfigVersion]:
    rows = conn.execute(
        "SELECT version, hash, created_at, spec FROM config_versions WHERE name = ? ORDER BY version DESC",
        (name,),
    )
    return [
        ConfigVersion(version=row[0], hash=row[1], created_at=row[2], spec=spec_from_json(json.loads(row[3])))
        for row in rows
    ]
