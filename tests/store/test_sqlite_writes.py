"""How the SQLite store applies a batch of writes (gateway/store/sqlite_writes.py): the same rows as
one statement per write would give, in a number of statements that does not grow with the batch's
full rows."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from gateway.fleet.agent import AgentWrite
from gateway.store.sqlite import SQLiteStore
from gateway.store.sqlite_schema import row_of
from gateway.store.sqlite_writes import apply_batch
from tests.store.store_helpers import agent, full, moved, new_uid, touch


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    store = SQLiteStore(str(tmp_path / "gateway.db"))
    await store.open()
    yield store
    await store.close()


def _statements(path: str, writes: list[AgentWrite]) -> list[str]:
    """The statements one batch takes, applied on a connection of our own."""
    seen: list[str] = []
    with sqlite3.connect(path, isolation_level=None) as conn:
        conn.set_trace_callback(seen.append)
        conn.execute("BEGIN IMMEDIATE")
        apply_batch(conn, writes, [None if w.is_touch else row_of(w.state) for w in writes], {})
        conn.execute("COMMIT")
    conn.close()
    return [s for s in seen if not s.startswith(("BEGIN", "COMMIT"))]


@pytest.mark.anyio
async def test_six_hundred_full_rows_take_a_handful_of_statements_and_all_land(
    store: SQLiteStore, tmp_path: Path
) -> None:
    states = [agent(new_uid(), last_seen=float(i)) for i in range(600)]
    statements = _statements(str(tmp_path / "gateway.db"), [full(s) for s in states])
    # One query for moved uids per 500, one upsert per 250 rows.
    assert len(statements) == 2 + 3
    for state in states[::97]:
        assert await store.get(state.instance_uid) == state


@pytest.mark.anyio
async def test_a_batch_mixing_touches_moves_commands_and_stale_rows_lands_as_one_write_each_would(
    store: SQLiteStore,
) -> None:
    kept = agent(new_uid(), last_seen=10.0)
    newer = agent(new_uid(), last_seen=50.0)
    leaving = agent(new_uid(), last_seen=10.0)
    touched = agent(new_uid(), last_seen=10.0)
    await store.write([full(kept), full(newer), full(leaving), full(touched)])

    arrived = agent(new_uid(), last_seen=20.0)
    commanded = replace(kept, last_seen=20.0, pending_command=1, command_id="c-1")
    stale = replace(newer, last_seen=40.0, sequence_num=99)
    move = moved(leaving, new_uid(), 30.0)
    # A write for the uid that moves in this very batch: the record lives on under the new uid.
    ghost = full(replace(leaving, last_seen=31.0))
    never_flushed = agent(new_uid(), last_seen=20.0)
    await store.write(
        [
            AgentWrite(state=commanded, changed=frozenset({"last_seen", "pending_command", "command_id"})),
            full(arrived),
            full(stale),
            ghost,
            move,
            touch(replace(touched, last_seen=25.0, sequence_num=7)),
            # A touch with no row to touch stores the whole record.
            touch(never_flushed),
        ]
    )
    assert await store.get(arrived.instance_uid) == arrived
    got = await store.get(kept.instance_uid)
    assert got is not None and (got.pending_command, got.command_id, got.last_seen) == (1, "c-1", 20.0)
    # Older than what is stored: left as it was.
    assert await store.get(newer.instance_uid) == newer
    mover = await store.get(move.state.instance_uid)
    assert mover is not None and mover.last_seen == 30.0
    # The old uid answers with the moved record, and no ghost row came back under it.
    assert await store.get(leaving.instance_uid) == mover
    got = await store.get(touched.instance_uid)
    assert got is not None and (got.last_seen, got.sequence_num) == (25.0, 7)
    assert await store.get(never_flushed.instance_uid) == never_flushed
