"""How the SQLite store applies a batch of writes (gateway/store/sqlite_writes.py): the same rows as
one statement per write would give, in a number of statements that does not grow with the batch's
full rows."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from gateway.fleet.agent import AgentState, AgentWrite
from gateway.store.sqlite import SQLiteStore
from gateway.store.sqlite_schema import row_of
from gateway.store.sqlite_writes import apply_batch, encode
from tests.store.store_helpers import (
    agent,
    description,
    full,
    health,
    moved,
    new_uid,
    remote_config_status,
    touch,
)


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
        apply_batch(conn, writes, [encode(w) for w in writes], {})
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


def _rev(path: str, uid: bytes) -> int:
    with sqlite3.connect(path) as conn:
        (rev,) = conn.execute("SELECT rev FROM agents WHERE uid = ?", (uid,)).fetchone()
    conn.close()
    return int(rev)


@pytest.mark.anyio
async def test_six_hundred_touches_take_a_statement_per_few_hundred_and_all_land(
    store: SQLiteStore, tmp_path: Path
) -> None:
    states = [agent(new_uid(), last_seen=float(i)) for i in range(600)]
    await store.write([full(s) for s in states])
    beats = [replace(s, last_seen=s.last_seen + 1000.0, sequence_num=s.sequence_num + 1) for s in states]
    statements = _statements(str(tmp_path / "gateway.db"), [touch(s) for s in beats])
    assert len(statements) == 3
    for state in beats[::97]:
        got = await store.get(state.instance_uid)
        assert got is not None and (got.last_seen, got.sequence_num) == (state.last_seen, state.sequence_num)


@pytest.mark.anyio
async def test_touches_report_the_new_rev_only_where_the_cached_rev_still_held(
    store: SQLiteStore, tmp_path: Path
) -> None:
    path = str(tmp_path / "gateway.db")
    cached, changed_elsewhere, newer, absent = (agent(new_uid(), last_seen=10.0) for _ in range(4))
    newer = replace(newer, last_seen=90.0)
    await store.write([full(cached), full(changed_elsewhere), full(newer)])
    expected = {
        cached.instance_uid: _rev(path, cached.instance_uid),
        # Another node wrote the row since this node cached it.
        changed_elsewhere.instance_uid: _rev(path, changed_elsewhere.instance_uid) + 1,
        newer.instance_uid: _rev(path, newer.instance_uid),
    }
    beats = [replace(s, last_seen=20.0, sequence_num=5) for s in (cached, changed_elsewhere, newer, absent)]
    writes = [touch(s) for s in beats]
    with sqlite3.connect(path, isolation_level=None) as conn:
        conn.execute("BEGIN IMMEDIATE")
        touched = apply_batch(conn, writes, [None] * len(writes), expected)
        conn.execute("COMMIT")
    conn.close()
    assert touched == {cached.instance_uid: _rev(path, cached.instance_uid)}
    assert touched[cached.instance_uid] != expected[cached.instance_uid]
    for state in (cached, changed_elsewhere):
        got = await store.get(state.instance_uid)
        assert got is not None and (got.last_seen, got.sequence_num) == (20.0, 5)
    # A row newer than the heartbeat is left alone; an agent with no row gets its whole record.
    assert await store.get(newer.instance_uid) == newer
    assert await store.get(absent.instance_uid) == beats[3]


def _status(state: AgentState) -> AgentWrite:
    """What an APPLIED report with a health change writes."""
    return AgentWrite(
        state=state, changed=frozenset({"last_seen", "sequence_num", "remote_config_status", "health"})
    )


@pytest.mark.anyio
async def test_six_hundred_status_writes_take_a_statement_per_few_hundred_and_all_land(
    store: SQLiteStore, tmp_path: Path
) -> None:
    path = str(tmp_path / "gateway.db")
    states = [agent(new_uid(), last_seen=float(i)) for i in range(600)]
    await store.write([full(s) for s in states])
    applied = [
        replace(
            s,
            last_seen=s.last_seen + 1000.0,
            remote_config_status=remote_config_status(),
            health=health(False),
        )
        for s in states
    ]
    statements = _statements(path, [_status(s) for s in applied])
    assert len(statements) == 3
    assert all(s.startswith("UPDATE agents SET last_seen") for s in statements)
    for state in applied[::97]:
        assert await store.get(state.instance_uid) == state
    with sqlite3.connect(path) as conn:
        # The derived column follows the health it is derived from.
        assert conn.execute("SELECT count(*) FROM agents WHERE healthy = 0").fetchone() == (600,)
    conn.close()


@pytest.mark.anyio
async def test_a_status_write_changes_only_status_columns_and_falls_back_to_the_whole_row(
    store: SQLiteStore, tmp_path: Path
) -> None:
    path = str(tmp_path / "gateway.db")
    commanded, newer, leaving = (agent(new_uid(), last_seen=10.0) for _ in range(3))
    newer = replace(newer, last_seen=90.0)
    await store.write([full(commanded), full(newer), full(leaving)])
    # Another node queued a restart: this node's copy knows nothing of it.
    await store.write(
        [AgentWrite(replace(commanded, pending_command=1, command_id="c-1"), frozenset({"pending_command"}))]
    )
    move = moved(leaving, new_uid(), 30.0)
    await store.write([move])
    absent = agent(new_uid(), last_seen=20.0)
    # A description this write does not name (a stale copy's) must not overwrite the stored one.
    stale_copy = replace(
        commanded,
        last_seen=20.0,
        description=description({"service.name": "other"}),
        remote_config_status=b"\x0a\x01x",
    )
    writes = [
        _status(stale_copy),
        _status(replace(newer, last_seen=40.0, remote_config_status=b"\x0a\x01y")),
        _status(replace(leaving, last_seen=31.0)),
        _status(absent),
    ]
    assert [type(encode(w)).__name__ for w in writes] == ["StatusRow"] * 4
    with sqlite3.connect(path, isolation_level=None) as conn:
        conn.execute("BEGIN IMMEDIATE")
        apply_batch(conn, writes, [encode(w) for w in writes], {})
        conn.execute("COMMIT")
    conn.close()
    got = await store.get(commanded.instance_uid)
    assert got is not None
    assert (got.last_seen, got.remote_config_status) == (20.0, b"\x0a\x01x")
    assert (got.pending_command, got.command_id, got.description) == (1, "c-1", commanded.description)
    # Newer than the write: left alone. With no row: the whole record. Moved away: no ghost row.
    assert await store.get(newer.instance_uid) == newer
    assert await store.get(absent.instance_uid) == absent
    mover = await store.get(leaving.instance_uid)
    assert mover is not None and mover.instance_uid == move.state.instance_uid and mover.last_seen == 30.0
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT count(*) FROM agents").fetchone() == (4,)
    conn.close()


def test_writes_that_name_identity_description_packages_commands_or_keys_go_out_as_whole_rows() -> None:
    state = agent(new_uid(), last_seen=1.0)
    for name in ("enrolled", "instance_uid", "description", "package_statuses", "pending_command", "key_id"):
        encoded = encode(AgentWrite(state, frozenset({"last_seen", name})))
        assert encoded == row_of(state), name
    move = moved(state, new_uid(), 2.0)
    assert encode(AgentWrite(move.state, frozenset({"last_seen"}), move.previous_uid)) == row_of(move.state)
