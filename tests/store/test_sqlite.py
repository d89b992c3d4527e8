"""What only the SQLite adapter promises: WAL, schema versioning, threads, several processes."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import closing
from dataclasses import replace
from pathlib import Path

import pytest

from gateway.fleet.agent import AgentState, AgentWrite
from gateway.store.base import AgentQuery, StoreError, StoreUnavailable, decode_cursor, encode_cursor
from gateway.store.sqlite import SCHEMA_VERSION, SQLiteStore
from gateway.store.sqlite_schema import SELECT_PENDING_COMMANDS
from tests.store.store_helpers import (
    agent,
    effective_config,
    full,
    heartbeat,
    moved,
    new_uid,
    touch,
    uid_from_int,
)

HERE = Path(__file__).parent
ROOT = HERE.parent.parent
PROC_WRITER = HERE / "sqlite_proc_writer.py"


@pytest.fixture
def db_path(tmp_path: Path) -> str:
    return str(tmp_path / "gateway.db")


@pytest.fixture
async def store(db_path: str) -> AsyncIterator[SQLiteStore]:
    store = SQLiteStore(db_path)
    await store.open()
    yield store
    await store.close()


def sqlite_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("sqlite-")]


@pytest.mark.anyio
async def test_file_is_in_wal_mode_with_a_schema_version(store: SQLiteStore, db_path: str) -> None:
    with closing(sqlite3.connect(db_path)) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"agents", "uid_aliases"} <= tables


@pytest.mark.anyio
async def test_operators_can_query_the_file(store: SQLiteStore, db_path: str) -> None:
    state = agent(last_seen=5.0, healthy=False, identifying={"shard": 3})
    await store.write([full(state)])
    with closing(sqlite3.connect(db_path)) as conn:
        row = conn.execute(
            "SELECT uid_text, agent_type, agent_version, os_type, healthy, attrs ->> '$.shard' FROM agents"
        ).fetchone()
    assert row == (state.uid, "otelcol-contrib", "0.120.0", "linux", 0, "3")


@pytest.mark.anyio
async def test_newer_schema_is_refused(db_path: str) -> None:
    with closing(sqlite3.connect(db_path)) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    store = SQLiteStore(db_path)
    with pytest.raises(StoreError) as raised:
        await store.open()
    message = str(raised.value)
    assert db_path in message
    assert f"version {SCHEMA_VERSION + 1}" in message
    assert f"version {SCHEMA_VERSION}" in message
    assert not sqlite_threads()
    with closing(sqlite3.connect(db_path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 1


@pytest.mark.anyio
async def test_not_a_database_is_refused(db_path: str) -> None:
    Path(db_path).write_bytes(b"this is not a database file, just some text" * 100)
    with pytest.raises(StoreError, match=db_path):
        await SQLiteStore(db_path).open()
    assert not sqlite_threads()


@pytest.mark.anyio
async def test_missing_directory_is_refused(tmp_path: Path) -> None:
    path = str(tmp_path / "no" / "such" / "dir" / "gateway.db")
    with pytest.raises(StoreError, match="no/such/dir"):
        await SQLiteStore(path).open()


@pytest.mark.anyio
async def test_two_stores_opening_a_new_file_at_once(db_path: str) -> None:
    stores = [SQLiteStore(db_path) for _ in range(4)]
    await asyncio.gather(*(s.open() for s in stores))
    state = agent()
    await stores[0].write([full(state)])
    for s in stores:
        assert await s.get(state.instance_uid) == state
    for s in stores:
        await s.close()


@pytest.mark.anyio
async def test_closed_store_refuses_work_and_can_reopen(db_path: str) -> None:
    store = SQLiteStore(db_path)
    with pytest.raises(StoreError, match="not open"):
        await store.get(b"\0" * 16)
    await store.open()
    state = agent()
    await store.write([full(state)])
    await store.ping()
    await store.close()
    await store.close()
    assert not sqlite_threads()
    with pytest.raises(StoreError, match="not open"):
        await store.write([full(state)])
    with pytest.raises(StoreError, match="not open"):
        await store.ping()
    await store.open()
    assert await store.get(state.instance_uid) == state
    await store.close()


@pytest.mark.anyio
async def test_event_loop_keeps_running_during_a_large_write(store: SQLiteStore) -> None:
    config = effective_config("processors:\n  batch: {}\n" * 200)
    batch = [full(agent(last_seen=float(i), effective_config=config)) for i in range(4000)]
    ticks: list[float] = []
    running = True

    async def ticker() -> None:
        while running:
            ticks.append(time.perf_counter())
            await asyncio.sleep(0.001)

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0.02)
    started = time.perf_counter()
    await store.write(batch)
    ended = time.perf_counter()
    running = False
    await task
    took = ended - started
    during = [t for t in ticks if started <= t <= ended]
    longest_gap = max(b - a for a, b in zip(ticks, ticks[1:], strict=False))
    assert took > 0.05, "the write was too small to show anything"
    assert len(during) >= 10, (took, len(during))
    assert longest_gap < took / 2, (took, longest_gap)


@pytest.mark.anyio
async def test_reads_do_not_wait_for_a_running_write(store: SQLiteStore) -> None:
    known = agent()
    await store.write([full(known)])
    config = effective_config("exporters:\n  otlp: {}\n" * 200)
    write = asyncio.create_task(store.write([full(agent(effective_config=config)) for _ in range(4000)]))
    await asyncio.sleep(0.01)
    assert not write.done()
    assert await store.get(known.instance_uid) == known
    page = await store.list_agents(AgentQuery(), 1000.0, 300.0)
    assert not write.done(), "a read waited for the write to finish"
    assert [a.instance_uid for a in page.agents] == [known.instance_uid]
    await write


@pytest.mark.anyio
async def test_lock_held_elsewhere_gives_store_unavailable(db_path: str) -> None:
    store = SQLiteStore(db_path, busy_timeout=0.05)
    await store.open()
    first, second = agent(), agent()
    await store.write([full(first)])
    with closing(sqlite3.connect(db_path, isolation_level=None)) as other:
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(StoreUnavailable, match="locked"):
            await store.write([full(second)])
        # WAL: readers are not blocked by another process's write lock.
        assert await store.get(first.instance_uid) == first
        other.execute("ROLLBACK")
    await store.write([full(second)])
    assert await store.get(second.instance_uid) == second
    await store.close()


@pytest.mark.anyio
async def test_lock_released_during_retries_lets_the_write_through(db_path: str) -> None:
    store = SQLiteStore(db_path, busy_timeout=0.05)
    await store.open()
    state = agent()
    with closing(sqlite3.connect(db_path, isolation_level=None)) as other:
        other.execute("BEGIN IMMEDIATE")
        asyncio.get_running_loop().call_later(0.08, other.execute, "ROLLBACK")
        await store.write([full(state)])
    assert await store.get(state.instance_uid) == state
    await store.close()


@pytest.mark.anyio
async def test_a_batch_is_all_or_nothing(store: SQLiteStore) -> None:
    kept = agent(last_seen=1.0)
    await store.write([full(kept)])
    good = [full(agent()), touch(heartbeat(kept, 2.0)), full(moved(kept, new_uid(), 3.0).state)]
    # A touch of a missing record falls back to a full row, which fails to encode mid-transaction.
    broken = touch(agent(b"\x01" * 15))
    with pytest.raises(ValueError):
        await store.write([*good, broken])
    assert await store.get(kept.instance_uid) == kept
    assert (await store.summary(1.0, 300.0)).total == 1
    await store.write(good)
    assert (await store.summary(1.0, 300.0)).total == 3


@pytest.mark.anyio
async def test_uint64_fields_use_all_64_bits(store: SQLiteStore) -> None:
    for value in (0, 2**63 - 1, 2**63, 2**64 - 1):
        state = agent(sequence_num=value, capabilities=value)
        await store.write([full(state)])
        assert await store.get(state.instance_uid) == state
        beat = agent(state.instance_uid, last_seen=state.last_seen + 1, sequence_num=2**64 - 1 - value)
        await store.write([touch(beat)])
        got = await store.get(state.instance_uid)
        assert got is not None
        assert got.sequence_num == 2**64 - 1 - value


def test_cursor_roundtrip() -> None:
    for uid in (b"\0" * 16, b"\xff" * 16, uid_from_int(12345)):
        text = agent(uid).uid
        cursor = encode_cursor(text)
        assert decode_cursor(cursor) == text
        assert cursor.isascii() and "=" not in cursor and "/" not in cursor and "+" not in cursor


def test_two_processes_share_one_file(tmp_path: Path) -> None:
    """Two gateway processes write concurrently: nothing is lost and nothing moves backwards."""
    db_path = str(tmp_path / "shared.db")
    shared = [uid_from_int(0xABC0 + i) for i in range(8)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(PROC_WRITER),
                db_path,
                str(worker),
                "1.5",
                ",".join(u.hex() for u in shared),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for worker in (1, 2)
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None
            ready = proc.stdout.readline()
            assert ready.strip() == "ready", proc.communicate(timeout=30)[1]
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        outputs = [proc.communicate(timeout=60) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    for proc, (_, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err
    results = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]

    # Both really wrote, at the same time.
    assert all(r["batches"] >= 10 for r in results), [r["batches"] for r in results]
    assert max(r["started"] for r in results) < min(r["ended"] for r in results)

    stored = asyncio.run(_read_all(db_path))
    own = {uid: expected for r in results for uid, expected in r["own"].items()}
    writes: dict[str, list[tuple[float, int]]] = {}
    for r in results:
        for uid, pair in r["newest"].items():
            writes.setdefault(uid, []).append((pair[0], pair[1]))
    assert set(stored) == set(writes)
    for uid, expected in own.items():
        state = stored[uid]
        assert (state.last_seen, state.sequence_num) == (expected["last_seen"], expected["sequence_num"]), uid
        assert (state.description or b"").hex() == expected["description"], uid
        assert (state.health or b"").hex() == expected["health"], uid
    for uid in (u.hex() for u in shared):
        newest = max(last_seen for last_seen, _ in writes[uid])
        winners = {seq for last_seen, seq in writes[uid] if last_seen == newest}
        assert stored[uid].last_seen == newest, uid
        assert stored[uid].sequence_num in winners, uid


async def _read_all(db_path: str) -> dict[str, AgentState]:
    store = SQLiteStore(db_path)
    await store.open()
    try:
        page = await store.list_agents(AgentQuery(limit=1000), time.time(), 300.0)
        assert page.next_cursor is None
        return {a.instance_uid.hex(): a for a in page.agents}
    finally:
        await store.close()


_V1_AGENTS = """
CREATE TABLE agents (
    uid BLOB PRIMARY KEY, uid_text TEXT NOT NULL UNIQUE, enrolled_at REAL NOT NULL, last_seen REAL NOT NULL,
    sequence_num INTEGER NOT NULL, capabilities INTEGER NOT NULL, description BLOB, health BLOB,
    effective_config BLOB, remote_config_status BLOB, disconnected INTEGER NOT NULL,
    previous_instance_uids BLOB NOT NULL, pending_command INTEGER, node TEXT NOT NULL,
    transport TEXT NOT NULL, healthy INTEGER, agent_type TEXT NOT NULL, agent_version TEXT NOT NULL,
    os_type TEXT NOT NULL,
    attrs TEXT NOT NULL, search TEXT NOT NULL
)
"""


# What version 2 added to version 1 (gateway/store/sqlite_schema.py MIGRATIONS[2]), spelled out so the
# test keeps describing a real version 2 file whatever the schema becomes.
_V2_COLUMNS = (
    "ALTER TABLE agents ADD COLUMN offered_config_hash BLOB",
    "ALTER TABLE agents ADD COLUMN offered_at REAL NOT NULL DEFAULT 0",
    "ALTER TABLE agents ADD COLUMN failed_config_hash BLOB",
)


@pytest.mark.anyio
async def test_a_version_1_file_is_upgraded_in_place(tmp_path: Path) -> None:
    db_path = str(tmp_path / "v1.db")
    uid = uuid.uuid4()
    with closing(sqlite3.connect(db_path)) as conn:
        conn.execute(_V1_AGENTS)
        conn.execute(
            "INSERT INTO agents VALUES (?, ?, 1.0, 2.0, 3, 4, NULL, NULL, NULL, NULL, 0, x'', NULL, 'n', "
            "'http', NULL, '', '', '', '{}', '')",
            (uid.bytes, str(uid)),
        )
        conn.execute("PRAGMA user_version = 1")
        conn.commit()
    store = SQLiteStore(db_path)
    await store.open()
    try:
        state = await store.get(uid.bytes)
        assert state is not None
        assert (state.sequence_num, state.node, state.offered_config_hash, state.offered_at) == (
            3,
            "n",
            None,
            0.0,
        )
        assert state.duplicate_of is None
        assert state.offered_settings_hash is None
        assert state.connection_settings_status is None
        assert (state.package_statuses, state.offered_packages_hash, state.offered_packages_at) == (
            None,
            None,
            0.0,
        )
        assert await store.get_credentials([uid.bytes]) == {}
        assert await store.list_configs() == []
        assert await store.list_connection_settings() == []
        # Version 11: the package tables, and the agents' package terms (none reported yet).
        assert await store.list_packages() == [] and await store.list_package_rollouts() == []
        unfiltered = await store.list_agents(AgentQuery(without_package_states=("a/installed/00",)), 9.0, 1e9)
        assert [a.instance_uid for a in unfiltered.agents] == [uid.bytes]
    finally:
        await store.close()
    with closing(sqlite3.connect(db_path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 12
        assert _pending_command_plan(conn) == "SCAN agents USING COVERING INDEX agents_pending_command"


def _pending_command_plan(conn: sqlite3.Connection) -> str:
    plan = conn.execute(f"EXPLAIN QUERY PLAN {SELECT_PENDING_COMMANDS}", (10,)).fetchall()
    return " / ".join(row[-1] for row in plan)


@pytest.mark.anyio
async def test_pending_commands_read_only_the_partial_index(store: SQLiteStore, db_path: str) -> None:
    waiting, idle = agent(last_seen=5.0, pending_command=0), agent(last_seen=6.0)
    await store.write([full(waiting), full(idle)])
    await store.write([AgentWrite(state=waiting, changed=frozenset({"pending_command"}))])
    assert await store.pending_commands(10) == {waiting.instance_uid: 0}
    with closing(sqlite3.connect(db_path)) as conn:
        assert _pending_command_plan(conn) == "SCAN agents USING COVERING INDEX agents_pending_command"
        # Only rows with a command are in it.
        assert (
            conn.execute(
                "SELECT count(*) FROM agents INDEXED BY agents_pending_command "
                "WHERE pending_command IS NOT NULL"
            ).fetchone()[0]
            == 1
        )


@pytest.mark.anyio
async def test_a_version_2_file_is_upgraded_in_place(tmp_path: Path) -> None:
    db_path = str(tmp_path / "v2.db")
    waiting, idle = uuid.uuid4(), uuid.uuid4()
    with closing(sqlite3.connect(db_path)) as conn:
        conn.execute(_V1_AGENTS)
        for statement in _V2_COLUMNS:
            conn.execute(statement)
        for uid, command in ((waiting, 0), (idle, None)):
            conn.execute(
                "INSERT INTO agents VALUES (?, ?, 1.0, 2.0, 3, 4, NULL, NULL, NULL, NULL, 0, x'', ?, 'n', "
                "'websocket', NULL, '', '', '', '{}', '', NULL, 0, NULL)",
                (uid.bytes, str(uid), command),
            )
        conn.execute("PRAGMA user_version = 2")
        conn.commit()
    store = SQLiteStore(db_path)
    await store.open()
    try:
        assert await store.pending_commands(10) == {waiting.bytes: 0}
        state = await store.get(waiting.bytes)
        assert state is not None and (state.pending_command, state.transport) == (0, "websocket")
    finally:
        await store.close()
    with closing(sqlite3.connect(db_path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert _pending_command_plan(conn) == "SCAN agents USING COVERING INDEX agents_pending_command"


@pytest.mark.anyio
async def test_a_version_3_file_gets_row_revisions(tmp_path: Path) -> None:
    db_path = str(tmp_path / "v3.db")
    uid = uuid.uuid4()
    with closing(sqlite3.connect(db_path)) as conn:
        conn.execute(_V1_AGENTS)
        for statement in _V2_COLUMNS:
            conn.execute(statement)
        conn.execute(
            "INSERT INTO agents VALUES (?, ?, 1.0, 2.0, 3, 4, NULL, NULL, NULL, NULL, 0, x'', NULL, 'n', "
            "'http', NULL, '', '', '', '{}', '', NULL, 0, NULL)",
            (uid.bytes, str(uid)),
        )
        conn.execute("PRAGMA user_version = 3")
        conn.commit()
    store = SQLiteStore(db_path)
    await store.open()
    try:
        state = await store.get(uid.bytes)
        assert state is not None and state.sequence_num == 3
        await store.write([touch(AgentState(uid.bytes, 1.0, 5.0, 4, 4, node="n", transport="http"))])
        again = await store.get(uid.bytes)
        assert again is not None and (again.last_seen, again.sequence_num) == (5.0, 4)
    finally:
        await store.close()
    with closing(sqlite3.connect(db_path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 12
        assert conn.execute("SELECT rev FROM agents").fetchone()[0] != 0


@pytest.mark.anyio
async def test_a_failed_forget_rolls_back(tmp_path: Path) -> None:
    """A delete that fails half-way (here a trigger refuses it) leaves the file as it was."""
    store = SQLiteStore(str(tmp_path / "agents.db"))
    await store.open()
    try:
        state = agent(last_seen=10.0)
        await store.write([full(state)])
        conn = sqlite3.connect(tmp_path / "agents.db")
        conn.execute(
            "CREATE TRIGGER no_delete BEFORE DELETE ON agents BEGIN SELECT RAISE(ABORT, 'kept'); END"
        )
        conn.commit()
        conn.close()
        with pytest.raises(StoreError, match="kept"):
            await store.forget(state.instance_uid)
        with pytest.raises(StoreError, match="kept"):
            await store.forget_unseen(50.0, 10)
        assert await store.get(state.instance_uid) == state
        assert await store.forget_unseen(5.0, 10) == 0
    finally:
        await store.close()


@pytest.mark.anyio
async def test_a_version_5_file_gets_key_ids_bound_to_no_key(tmp_path: Path) -> None:
    db_path = str(tmp_path / "v5.db")
    uid = uuid.uuid4()
    with closing(sqlite3.connect(db_path)) as conn:
        conn.execute(_V1_AGENTS)
        for statement in _V2_COLUMNS:
            conn.execute(statement)
        conn.execute("ALTER TABLE agents ADD COLUMN rev INTEGER NOT NULL DEFAULT 0")
        conn.execute("ALTER TABLE agents ADD COLUMN command_id TEXT NOT NULL DEFAULT ''")
        conn.execute(
            "INSERT INTO agents VALUES (?, ?, 1.0, 2.0, 3, 4, NULL, NULL, NULL, NULL, 0, x'', NULL, 'n', "
            "'http', NULL, '', '', '', '{}', '', NULL, 0, NULL, 7, '')",
            (uid.bytes, str(uid)),
        )
        conn.execute("PRAGMA user_version = 5")
        conn.commit()
    store = SQLiteStore(db_path)
    await store.open()
    try:
        state = await store.get(uid.bytes)
        # Enrolled before keys were bound: bound to none, so the next key that speaks adopts it.
        assert state is not None and (state.sequence_num, state.key_id) == (3, "")
        await store.write([AgentWrite(state=replace(state, key_id="edge"), changed=frozenset({"key_id"}))])
        again = await store.get(uid.bytes)
        assert again is not None and again.key_id == "edge"
    finally:
        await store.close()
    with closing(sqlite3.connect(db_path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 12
