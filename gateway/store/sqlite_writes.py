"""A batch of agent writes applied to the SQLite file in one transaction, in as few statements as the
batch allows. Synchronous: runs on the store's write thread.

Why few statements: Python's sqlite3 lets go of the GIL around every statement step and must win it
back from the event loop's thread. While that thread is busy (every agent's APPLIED arriving after a
config change) each win waits up to the interpreter's switch interval, 5 ms. With three statements per
row, a commit of 1,000 full rows took 4-6 s while holding the write lock every other node waited
for. Here the full rows of a batch go out as one multi-row upsert per few hundred rows, after one
query for which of them have moved; only heartbeat touches (whose outcome each row must know), moves,
and writes that name a command or an agent key take statements of their own.

Within a batch every uid appears once (the writer merges writes per uid), so the rows do not depend
on each other and the order they are applied in does not matter, except that a move is applied
before the query for moved uids (a write for a uid that moved in this very batch is then dropped,
as it would be if the move had been flushed first).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from gateway.fleet.agent import AgentState, AgentWrite
from gateway.store.sqlite_schema import (
    COLUMNS,
    SET_KEY_ID,
    SET_PENDING_COMMAND,
    TOUCH,
    TOUCH_CACHED,
    UPSERT,
    new_rev,
    row_of,
    to_int64,
    upsert_rows,
)

# Rows per multi-row upsert (fewer when the file's SQLite allows fewer bound parameters), and uids
# per `IN (...)` of the query for moved uids.
_ROWS_PER_UPSERT = 250
_UIDS_PER_QUERY = 500

Row = tuple[Any, ...]


def apply_batch(
    conn: sqlite3.Connection,
    writes: Sequence[AgentWrite],
    rows: Sequence[Row | None],
    expected: dict[bytes, int],
) -> dict[bytes, int]:
    """Apply `writes` (with their `rows`, None for a touch) inside the caller's transaction;
    {uid: new rev} for the touches applied to the row at the rev in `expected` (the node's cached
    copy)."""
    touched: dict[bytes, int] = {}
    plain: list[tuple[AgentWrite, Row]] = []
    for write, row in zip(writes, rows, strict=True):
        state = write.state
        uid = state.instance_uid
        if row is None:
            applied, rev = _touch(conn, state, expected.get(uid))
            if applied:
                if rev is not None:
                    touched[uid] = rev
                continue
            # No row to touch (forgotten, or never flushed): the touch carries a whole record.
            row = row_of(state)
        old = write.previous_uid if write.previous_uid != uid else None
        if old is not None:
            _move(conn, write, row, old)
        else:
            plain.append((write, row))
    if plain:
        _upsert(conn, plain)
    return touched


def _touch(conn: sqlite3.Connection, state: AgentState, cached_rev: int | None) -> tuple[bool, int | None]:
    """A heartbeat's fields written to an existing row: (applied, the new rev if it was the cached
    row)."""
    last_seen = float(state.last_seen)
    rev = new_rev()
    values = (
        last_seen,
        to_int64(state.sequence_num),
        state.node,
        state.transport,
        rev,
        state.instance_uid,
        last_seen,
    )
    if cached_rev is not None and conn.execute(TOUCH_CACHED, (*values, cached_rev)).rowcount:
        return True, rev
    return bool(conn.execute(TOUCH, values).rowcount), None


def _move(conn: sqlite3.Connection, write: AgentWrite, row: Row, old: bytes) -> None:
    """The record under its new uid; the old uid becomes an alias of it."""
    uid = write.state.instance_uid
    # The uid is (again) the live one: it must not stay an alias of anything.
    conn.execute("DELETE FROM uid_aliases WHERE old_uid = ?", (uid,))
    conn.execute(UPSERT, (*row, new_rev()))
    _named(conn, write)
    conn.execute("DELETE FROM agents WHERE uid = ?", (old,))
    conn.execute("UPDATE uid_aliases SET new_uid = ? WHERE new_uid = ?", (uid, old))
    conn.execute("INSERT OR REPLACE INTO uid_aliases (old_uid, new_uid) VALUES (?, ?)", (old, uid))


def _upsert(conn: sqlite3.Connection, plain: list[tuple[AgentWrite, Row]]) -> None:
    moved = _moved_uids(conn, [write.state.instance_uid for write, _ in plain])
    # A write for a uid that has since moved (raced with the move on another node): the record lives
    # on under the new uid; recreating the old row would resurrect a ghost.
    live = [(write, row) for write, row in plain if write.state.instance_uid not in moved]
    per_row = len(COLUMNS) + 1
    limit = conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
    size = max(1, min(_ROWS_PER_UPSERT, limit // per_row))
    for start in range(0, len(live), size):
        chunk = live[start : start + size]
        params = [value for _, row in chunk for value in (*row, new_rev())]
        conn.execute(upsert_statement(len(chunk)), params)
    for write, _ in live:
        _named(conn, write)


@lru_cache(maxsize=32)
def upsert_statement(rows: int) -> str:
    return upsert_rows(rows)


def _named(conn: sqlite3.Connection, write: AgentWrite) -> None:
    """The columns an upsert leaves alone, when the write names them."""
    state = write.state
    uid = state.instance_uid
    if "pending_command" in write.changed:
        # Whatever its last_seen: a restart requested on one node must not be undone by a status
        # write flushed later by the node holding the agent, nor survive its own delivery.
        conn.execute(SET_PENDING_COMMAND, (state.pending_command, state.command_id, new_rev(), uid))
    if "key_id" in write.changed:
        # Likewise an adoption or an admin's move to another key, whatever the write's last_seen.
        conn.execute(SET_KEY_ID, (state.key_id, new_rev(), uid))


def _moved_uids(conn: sqlite3.Connection, uids: list[bytes]) -> set[bytes]:
    moved: set[bytes] = set()
    for start in range(0, len(uids), _UIDS_PER_QUERY):
        chunk = uids[start : start + _UIDS_PER_QUERY]
        marks = ", ".join("?" for _ in chunk)
        query = f"SELECT old_uid FROM uid_aliases WHERE old_uid IN ({marks})"
        moved.update(bytes(found) for (found,) in conn.execute(query, chunk))
    return moved
