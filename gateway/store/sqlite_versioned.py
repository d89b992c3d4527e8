"""Versioned, rolled-out resources in SQLite (configs, packages): one row per name in a table, its last
KEEP_VERSIONS versions in another, and its rollout record in a third. Synchronous functions run on the
store's threads; each kind names its tables and how its spec goes to and from JSON (`Kind`)."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from gateway.fleet.rollout_record import Rollout, UnreadableRollout, rollout_from_json
from gateway.fleet.versions import oldest_kept
from gateway.store.base import StoredRollout, StoreError, VersionConflict

Spec = TypeVar("Spec")


class _Digested(Protocol):
    def digest(self) -> str: ...


class _Stored(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def version(self) -> int: ...

    @property
    def created_at(self) -> float: ...

    @property
    def hash(self) -> str: ...


class _Request(Protocol):
    @property
    def spec(self) -> Any: ...

    @property
    def expected_version(self) -> int | None: ...


Item = TypeVar("Item", bound=_Stored)
Version = TypeVar("Version")
Req = TypeVar("Req", bound=_Request)


@dataclass(frozen=True)
class Kind(Generic[Item, Version]):
    """One kind of versioned resource: its tables, and how its records are built."""

    # "config", "package": in messages.
    what: str
    table: str
    versions_table: str
    rollouts_table: str
    spec_json: Callable[[Any], Mapping[str, Any]]
    spec_from_json: Callable[[Mapping[str, Any]], Any]
    # (name, spec, version, created_at, updated_at, hash) -> the resource.
    make: Callable[[str, Any, int, float, float, str], Item]
    # (version, hash, created_at, spec) -> a stored version.
    make_version: Callable[[int, str, float, Any], Version]

    def tables(self) -> tuple[str, ...]:
        """The CREATE TABLE statements of the kind's three tables."""
        return (
            f"""
    CREATE TABLE IF NOT EXISTS {self.table} (
        name TEXT PRIMARY KEY,
        spec TEXT NOT NULL,
        version INTEGER NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        hash TEXT NOT NULL
    )
    """,
            f"""
    CREATE TABLE IF NOT EXISTS {self.versions_table} (
        name TEXT NOT NULL,
        version INTEGER NOT NULL,
        spec TEXT NOT NULL,
        hash TEXT NOT NULL,
        created_at REAL NOT NULL,
        PRIMARY KEY (name, version)
    )
    """,
            f"""
    CREATE TABLE IF NOT EXISTS {self.rollouts_table} (
        name TEXT PRIMARY KEY,
        record TEXT NOT NULL,
        rev INTEGER NOT NULL
    )
    """,
        )


def _select(kind: Kind[Any, Any]) -> str:
    return f"SELECT name, spec, version, created_at, updated_at, hash FROM {kind.table}"


def _item(kind: Kind[Item, Any], row: Sequence[Any]) -> Item:
    return kind.make(row[0], kind.spec_from_json(json.loads(row[1])), row[2], row[3], row[4], row[5])


def list_items(conn: sqlite3.Connection, kind: Kind[Item, Any]) -> list[Item]:
    return [_item(kind, row) for row in conn.execute(_select(kind) + " ORDER BY name")]


def get_item(conn: sqlite3.Connection, kind: Kind[Item, Any], name: str) -> Item | None:
    row = conn.execute(_select(kind) + " WHERE name = ?", (name,)).fetchone()
    return None if row is None else _item(kind, row)


def _check(kind: Kind[Any, Any], name: str, expected: int | None, current: _Stored | None) -> None:
    have = 0 if current is None else current.version
    if expected is not None and expected != have:
        raise VersionConflict(name, expected, have, kind.what)


def put_item(
    conn: sqlite3.Connection, kind: Kind[Item, Any], name: str, request: _Request, now: float
) -> tuple[Item, bool]:
    """Runs on the write connection, so the read-check-write below is one serialized transaction."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        current = get_item(conn, kind, name)
        _check(kind, name, request.expected_version, current)
        spec: _Digested = request.spec
        digest = spec.digest()
        if current is not None and current.hash == digest:
            conn.execute("COMMIT")
            return current, False
        version = 1 if current is None else current.version + 1
        created = now if current is None else current.created_at
        stored = kind.make(name, request.spec, version, created, now, digest)
        text = json.dumps(kind.spec_json(request.spec), separators=(",", ":"), sort_keys=True)
        conn.execute(
            f"INSERT OR REPLACE INTO {kind.table} (name, spec, version, created_at, updated_at, hash) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (name, text, version, created, now, digest),
        )
        conn.execute(
            f"INSERT OR REPLACE INTO {kind.versions_table} (name, version, spec, hash, created_at) "
            "VALUES (?, ?, ?, ?, ?)",
            (name, version, text, digest, now),
        )
        conn.execute(
            f"DELETE FROM {kind.versions_table} WHERE name = ? AND version < ?", (name, oldest_kept(version))
        )
        conn.execute("COMMIT")
        return stored, True
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def delete_item(conn: sqlite3.Connection, kind: Kind[Any, Any], name: str, expected: int | None) -> bool:
    conn.execute("BEGIN IMMEDIATE")
    try:
        current = get_item(conn, kind, name)
        if current is None and expected is None:
            conn.execute("COMMIT")
            return False
        _check(kind, name, expected, current)
        for table in (kind.table, kind.versions_table, kind.rollouts_table):
            conn.execute(f"DELETE FROM {table} WHERE name = ?", (name,))
        conn.execute("COMMIT")
        return current is not None
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def versions(conn: sqlite3.Connection, kind: Kind[Any, Version], name: str) -> list[Version]:
    rows = conn.execute(
        f"SELECT version, hash, created_at, spec FROM {kind.versions_table} "
        "WHERE name = ? ORDER BY version DESC",
        (name,),
    )
    return [
        kind.make_version(row[0], row[1], row[2], kind.spec_from_json(json.loads(row[3]))) for row in rows
    ]


# -- rollout records -------------------------------------------------------------------------------


def _rollout(kind: Kind[Any, Any], name: str, record: str) -> Rollout:
    try:
        return rollout_from_json(json.loads(record))
    except (UnreadableRollout, json.JSONDecodeError) as exc:
        raise StoreError(f"rollout record of {kind.what} {name!r}: {exc}") from exc


def get_rollout(conn: sqlite3.Connection, kind: Kind[Any, Any], name: str) -> StoredRollout | None:
    row = conn.execute(f"SELECT record, rev FROM {kind.rollouts_table} WHERE name = ?", (name,)).fetchone()
    return None if row is None else StoredRollout(_rollout(kind, name, row[0]), str(row[1]))


def list_rollouts(conn: sqlite3.Connection, kind: Kind[Any, Any]) -> list[Rollout]:
    return [
        _rollout(kind, name, record)
        for name, record in conn.execute(f"SELECT name, record FROM {kind.rollouts_table} ORDER BY name")
    ]


def put_rollout(
    conn: sqlite3.Connection, kind: Kind[Any, Any], rollout: Rollout, expected_rev: str | None
) -> str | None:
    """Runs on the write connection: the check and the write are one serialized transaction."""
    record = json.dumps(rollout.to_json(), separators=(",", ":"), sort_keys=True)
    conn.execute("BEGIN IMMEDIATE")
    try:
        written = _put_rollout(conn, kind, rollout.name, record, expected_rev)
        conn.execute("COMMIT")
        return written
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _put_rollout(
    conn: sqlite3.Connection, kind: Kind[Any, Any], name: str, record: str, expected_rev: str | None
) -> str | None:
    if conn.execute(f"SELECT 1 FROM {kind.table} WHERE name = ?", (name,)).fetchone() is None:
        return None
    row = conn.execute(f"SELECT rev FROM {kind.rollouts_table} WHERE name = ?", (name,)).fetchone()
    current = None if row is None else str(row[0])
    if current != expected_rev:
        return None
    rev = 1 if row is None else row[0] + 1
    conn.execute(
        f"INSERT OR REPLACE INTO {kind.rollouts_table} (name, record, rev) VALUES (?, ?, ?)",
        (name, record, rev),
    )
    return str(rev)
