"""A batch of agent writes applied to the SQLite file in one transaction, in as few statements as the
batch allows. Synchronous: runs on the store's write thread.

Why few statements: Python's sqlite3 lets go of the GIL around every statement step and must win it
back from the event loop's thread. While that thread is busy (every agent's APPLIED arriving after a
config change) each win waits up to the interpreter's switch interval. With a statement per row, a
commit of 1,000 rows took 4-6 s while holding the write lock every other node waited for
(`executemany` is no better: it steps once per row too). So a batch goes out in a few statements per
few hundred rows, by kind:

- heartbeat touches: `UPDATE ... FROM (VALUES ...)` of the heartbeat columns;
- status writes (no new description, package statuses, uid, command or key: an APPLIED, a health
  change, an offer): the same of STATUS_COLUMNS, about half the cost of the whole row;
- the rest: a multi-row upsert of whole rows, after one query for which of them have moved.

An UPDATE's row count says whether it applied to every row; only when not does a query ask which,
and those go out as whole rows. Moves and writes that name a command or an agent key take statements
of their own.

Within a batch every uid appears once (the writer merges writes per uid), so the rows do not depend
on each other and the order they are applied in does not matter, except that a move is applied
before the query for moved uids (a write for a uid that moved in this very batch is then dropped,
as it would be if the move had been flushed first).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, NamedTuple

from gateway.fleet.agent import AgentWrite
from gateway.store.sqlite_schema import (
    COLUMNS,
    SET_KEY_ID,
    SET_PENDING_COMMAND,
    UPSERT,
    WHOLE_ROW_FIELDS,
    new_rev,
    row_of,
    status_row_of,
    to_int64,
    touch_rows,
    update_status_rows,
    upsert_rows,
)

# Rows per multi-row upsert or touch (fewer when the file's SQLite allows fewer bound parameters),
# and uids per `IN (...)` of the query for moved uids.
_ROWS_PER_UPSERT = 250
_UIDS_PER_QUERY = 500
# Where a touch's values give its new rev: uid, last_seen, sequence_num, node, transport, new rev
# (then, for a touch of the cached row, the cached rev).
_TOUCH_REV = 5
_CACHED_TOUCH = partial(touch_rows, cached=True)
_PLAIN_TOUCH = partial(touch_rows, cached=False)

Row = tuple[Any, ...]


class StatusRow(NamedTuple):
    """A status write's values (sqlite_schema.status_row_of): an UPDATE of STATUS_COLUMNS."""

    values: Row


# How a write goes out: a touch (None), a status write, or a whole row.
Encoded = Row | StatusRow | None


def encode(write: AgentWrite) -> Encoded:
    """The values a write needs, computed before the write lock is taken."""
    if write.is_touch:
        return None
    if write.previous_uid is None and not write.changed & WHOLE_ROW_FIELDS:
        return StatusRow(status_row_of(write.state))
    return row_of(write.state)


def apply_batch(
    conn: sqlite3.Connection,
    writes: Sequence[AgentWrite],
    encoded: Sequence[Encoded],
    expected: dict[bytes, int],
) -> dict[bytes, int]:
    """Apply `writes` (with what encode() gave for each) inside the caller's transaction;
    {uid: new rev} for the touches applied to the row at the rev in `expected` (the node's cached
    copy)."""
    pairs = list(zip(writes, encoded, strict=True))
    touches = [(w, expected.get(w.state.instance_uid)) for w, e in pairs if e is None]
    touched, missed = _touch_all(conn, touches) if touches else ({}, set())
    statuses = [(*e.values, new_rev()) for _, e in pairs if isinstance(e, StatusRow)]
    if statuses:
        # Each row's values end with its new rev.
        missed |= _update_rows(conn, statuses, update_status_rows, len(statuses[0]) - 1)
    plain: list[tuple[AgentWrite, Row]] = []
    for write, row in pairs:
        state = write.state
        uid = state.instance_uid
        if row is None or isinstance(row, StatusRow):
            if uid not in missed:
                continue
            # No row to update (forgotten, never flushed, or newer): the write carries a whole
            # record, which the upsert's own last_seen guard then keeps or drops.
            row = row_of(state)
        old = write.previous_uid if write.previous_uid != uid else None
        if old is not None:
            _move(conn, write, row, old)
        else:
            plain.append((write, row))
    if plain:
        _upsert(conn, plain)
    return touched


def _touch_all(
    conn: sqlite3.Connection, touches: list[tuple[AgentWrite, int | None]]
) -> tuple[dict[bytes, int], set[bytes]]:
    """Heartbeat fields written to existing rows: ({uid: new rev} for the touches that applied to
    the cached row at its cached rev, the uids of the touches that applied to no row)."""
    cached: dict[bytes, int] = {}
    pending: list[AgentWrite] = []
    with_rev = [(w, rev) for w, rev in touches if rev is not None]
    if with_rev:
        values = [(*_touch_values(w), rev) for w, rev in with_rev]
        missed = _update_rows(conn, values, _CACHED_TOUCH, _TOUCH_REV)
        cached = {v[0]: v[_TOUCH_REV] for v in values if v[0] not in missed}
        pending = [w for w, _ in with_rev if w.state.instance_uid in missed]
    pending += [w for w, rev in touches if rev is None]
    if not pending:
        return cached, set()
    return cached, _update_rows(conn, [_touch_values(w) for w in pending], _PLAIN_TOUCH, _TOUCH_REV)


def _touch_values(write: AgentWrite) -> Row:
    state = write.state
    return (
        state.instance_uid,
        float(state.last_seen),
        to_int64(state.sequence_num),
        state.node,
        state.transport,
        new_rev(),
    )


def _update_rows(
    conn: sqlite3.Connection, values: list[Row], statement: Callable[[int], str], rev_at: int
) -> set[bytes]:
    """An UPDATE ... FROM (VALUES ...) of many rows in a few statements, each row's values starting
    with its uid and giving the row's new rev at `rev_at`; the uids it did not apply to."""
    size = _rows_per_statement(conn, len(values[0]))
    missed: set[bytes] = set()
    for start in range(0, len(values), size):
        chunk = values[start : start + size]
        params = [value for row in chunk for value in row]
        if conn.execute(statement(len(chunk)), params).rowcount == len(chunk):
            continue
        # Some did not apply (rare: a row written by a newer message, or gone). Each row a query
        # returns is a step of its own, and a GIL handoff with it, so only this case asks which:
        # the rows that carry the rev this statement gave them applied.
        revs = {row[0]: row[rev_at] for row in chunk}
        marks = ", ".join("?" for _ in chunk)
        found = conn.execute(f"SELECT uid, rev FROM agents WHERE uid IN ({marks})", list(revs))
        applied = {bytes(uid) for uid, rev in found if revs.get(bytes(uid)) == rev}
        missed.update(uid for uid in revs if uid not in applied)
    return missed


def _rows_per_statement(conn: sqlite3.Connection, values_per_row: int) -> int:
    limit = conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
    return max(1, min(_ROWS_PER_UPSERT, limit // values_per_row))


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
    size = _rows_per_statement(conn, len(COLUMNS) + 1)
    for start in range(0, len(live), size):
        chunk = live[start : start + size]
        params = [value for _, row in chunk for value in (*row, new_rev())]
        conn.execute(upsert_rows(len(chunk)), params)
    for write, _ in live:
        _named(conn, write)


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
