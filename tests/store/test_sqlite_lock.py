"""The writer lock the SQLite store takes around every write (gateway/store/sqlite_lock.py)."""

from __future__ import annotations

import asyncio
import errno
import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from gateway.store.base import StoreError
from gateway.store.sqlite import SQLiteStore
from gateway.store.sqlite_lock import NODES_SUFFIX, SUFFIX, NodeMark, WriterLock
from tests.store.store_helpers import agent, full, new_uid


@contextmanager
def held(path: str) -> Iterator[None]:
    """The writer lock of the database at `path`, held as another node would hold it (a lock on
    its own open file: flock excludes other open files even in the same process)."""
    fd = os.open(path + SUFFIX, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


@pytest.mark.anyio
async def test_a_write_waits_while_another_node_holds_the_lock_and_goes_on_when_it_lets_go(
    tmp_path: Path,
) -> None:
    path = str(tmp_path / "gateway.db")
    store = SQLiteStore(path)
    await store.open()
    try:
        state = agent(new_uid())
        with held(path):
            write = asyncio.ensure_future(store.write([full(state)]))
            await asyncio.sleep(0.3)
            assert not write.done()
            # Readers never take it.
            assert await asyncio.wait_for(store.get(state.instance_uid), 5) is None
        await asyncio.wait_for(write, 10)
        stored = await store.get(state.instance_uid)
        assert stored is not None and stored.instance_uid == state.instance_uid
    finally:
        await store.close()


def test_the_lock_file_is_created_beside_the_database_and_reused(tmp_path: Path) -> None:
    path = str(tmp_path / "gateway.db")
    lock = WriterLock(path)
    assert lock.run(lambda a, b: a + b, 1, 2) == 3
    assert Path(path + SUFFIX).exists()
    # Released after each run: another open file can take it at once.
    fd = os.open(path + SUFFIX, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(fd)
    with pytest.raises(ValueError, match="boom"):
        lock.run(_fail)
    assert lock.run(lambda: "again") == "again"
    lock.close()
    lock.close()


def _fail() -> None:
    raise ValueError("boom")


def test_a_lock_file_that_cannot_be_made_is_a_store_error_naming_it(tmp_path: Path) -> None:
    lock = WriterLock(str(tmp_path / "missing" / "gateway.db"))
    with pytest.raises(StoreError, match="missing/gateway.db-writer.lock"):
        lock.run(lambda: None)


@pytest.mark.anyio
async def test_a_store_knows_whether_another_store_has_its_file_open(tmp_path: Path) -> None:
    path = str(tmp_path / "gateway.db")
    first, second = SQLiteStore(path), SQLiteStore(path)
    await first.open()
    try:
        assert first.alone()
        await second.open()
        # The answer is kept for ALONE_RECHECK seconds; a fresh mark asks the kernel at once.
        mark = NodeMark(path)
        assert not mark.alone()  # not open yet: never taken for alone
        mark.open()
        assert not mark.alone()
        await second.close()
        mark.close()
        await asyncio.sleep(0.3)
        assert first.alone()
        assert Path(path + NODES_SUFFIX).exists()
    finally:
        await first.close()
        await second.close()


def test_a_nodes_lock_that_cannot_be_made_is_a_store_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="missing/gateway.db-nodes.lock"):
        NodeMark(str(tmp_path / "missing" / "gateway.db")).open()


def test_a_file_system_without_such_locks_leaves_the_node_never_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def refuse(fd: int, cmd: int, arg: bytes) -> bytes:
        raise OSError(errno.ENOLCK, "No locks available")

    mark = NodeMark(str(tmp_path / "gateway.db"))
    monkeypatch.setattr(fcntl, "fcntl", refuse)
    mark.open()
    assert not mark.alone()
    assert "HTTP heartbeats will be written on every poll" in caplog.text
    mark.close()
