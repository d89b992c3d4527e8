"""The SQLite store checkpoints its write-ahead log itself, after its turn at the writer lock every
node takes, never inside a commit (SQLite's own automatic checkpoint would run there):
gateway/store/sqlite_turns.py."""

from __future__ import annotations

import asyncio
import fcntl
import os
import sqlite3
import time
from pathlib import Path

import pytest

from gateway.store import sqlite_turns
from gateway.store.sqlite import SQLiteStore
from gateway.store.sqlite_lock import SUFFIX
from gateway.store.sqlite_turns import CHECKPOINT_ROWS, Turns
from tests.store.store_helpers import agent, full, new_uid

pytestmark = pytest.mark.anyio


def _pages_in_database(path: str) -> int:
    """Pages in the database file itself: what checkpoints have copied out of the log."""
    return os.path.getsize(path) // 4096


def _lock_is_free(path: str) -> bool:
    fd = os.open(path + SUFFIX, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True


async def test_the_log_is_checkpointed_after_enough_rows_outside_the_writer_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = str(tmp_path / "gateway.db")
    store = SQLiteStore(path)
    await store.open()
    checkpoints: list[bool] = []
    checkpoint = Turns.checkpoint

    def watched(self: Turns, conn: sqlite3.Connection) -> None:
        checkpoints.append(_lock_is_free(path))
        checkpoint(self, conn)

    monkeypatch.setattr(Turns, "checkpoint", watched)
    try:
        opened = _pages_in_database(path)
        below = CHECKPOINT_ROWS // 2
        await store.write([full(agent(new_uid())) for _ in range(below)])
        # Not yet: the commit left its pages in the log (no checkpoint inside it either).
        assert checkpoints == [] and _pages_in_database(path) == opened
        await store.write([full(agent(new_uid())) for _ in range(CHECKPOINT_ROWS - below)])
        # Once CHECKPOINT_ROWS rows are in: copied into the database, with the lock let go.
        assert checkpoints == [True]
        assert _pages_in_database(path) > opened + 10
    finally:
        await store.close()


async def test_a_reader_holding_the_log_back_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(sqlite_turns, "CHECKPOINT_ROWS", 2)
    path = str(tmp_path / "gateway.db")
    store = SQLiteStore(path)
    await store.open()
    states = [agent(new_uid()) for _ in range(4)]
    try:
        # A reader in the middle of a transaction keeps the log (and the checkpoint) from moving
        # past its snapshot: the checkpoint copies what it can, and nothing is lost.
        with sqlite3.connect(path, isolation_level=None) as reader:
            reader.execute("BEGIN")
            assert reader.execute("SELECT count(*) FROM agents").fetchone()[0] == 0
            await store.write([full(s) for s in states[:2]])
            await store.write([full(s) for s in states[2:]])
            reader.execute("COMMIT")
        for state in states:
            assert await store.get(state.instance_uid) is not None
        assert "checkpoint" not in caplog.text
    finally:
        await store.close()


class _Failing:
    def execute(self, _sql: str) -> None:
        raise sqlite3.OperationalError("disk I/O error")


def test_a_failed_checkpoint_is_logged_and_tried_after_the_next_commit(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    turns = Turns(str(tmp_path / "gateway.db"))
    turns.unchecked = CHECKPOINT_ROWS
    turns.checkpoint(_Failing())  # type: ignore[arg-type]
    assert "checkpoint of" in caplog.text and "disk I/O error" in caplog.text
    assert turns.unchecked == CHECKPOINT_ROWS


async def test_the_log_starts_over_while_two_nodes_commit_side_by_side(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Checkpoints beside other nodes' commits never reach the log's end, and SQLite starts the log
    # over only after one has: past LOG_RESTART_FRAMES, one runs under the writer lock.
    monkeypatch.setattr(sqlite_turns, "CHECKPOINT_ROWS", 100)
    monkeypatch.setattr(sqlite_turns, "LOG_RESTART_FRAMES", 300)
    path = str(tmp_path / "gateway.db")
    nodes = [SQLiteStore(path), SQLiteStore(path)]
    for node in nodes:
        await node.open()

    async def busy(node: SQLiteStore) -> None:
        for _ in range(60):
            await node.write([full(agent(new_uid())) for _ in range(200)])

    try:
        await asyncio.gather(*(busy(node) for node in nodes))
        # 24,000 rows are about 17 MB of database; without the restarts the log outgrows it.
        log, database = os.path.getsize(path + "-wal"), os.path.getsize(path)
        assert database > 15e6 and log < database / 2, (log, database)
        assert (await nodes[0].summary(time.time(), 300.0)).total == 24_000
    finally:
        for node in nodes:
            await node.close()
