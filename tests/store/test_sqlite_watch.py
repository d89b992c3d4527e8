"""CommitWatch: a node's own commits to the SQLite file told from everyone else's, on a real file
with a second connection standing for another node, and with scripted data_versions for the orders
of events a file does not produce on demand."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import pytest

from gateway.store.sqlite_watch import CommitWatch


@pytest.fixture
def path(tmp_path: Path) -> str:
    db = str(tmp_path / "watched.db")
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("CREATE TABLE t (x INTEGER)")
    conn.close()
    return db


@pytest.fixture
def watch(path: str) -> Iterator[CommitWatch]:
    w = CommitWatch(path)
    w.open()
    # The first look has nothing to compare with: anyone may have written.
    assert w.others_wrote() is True
    yield w
    w.close()


@pytest.fixture
def own(path: str) -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(path, isolation_level=None)
    yield conn
    conn.close()


@contextmanager
def _committing(conn: sqlite3.Connection, watch: CommitWatch, value: int = 1) -> Iterator[None]:
    """A commit as the store's write thread makes it; the body runs just before COMMIT, while the
    write thread holds the watch."""
    conn.execute("BEGIN IMMEDIATE")
    before = watch.began()
    conn.execute("INSERT INTO t VALUES (?)", (value,))
    with watch.committing(before):
        yield
        conn.execute("COMMIT")


def _own_commit(conn: sqlite3.Connection, watch: CommitWatch, value: int = 1) -> None:
    with _committing(conn, watch, value):
        pass


def test_nothing_written_is_nobody_else_writing(watch: CommitWatch) -> None:
    assert watch.others_wrote() is False


def test_the_nodes_own_commits_are_not_taken_for_others(watch: CommitWatch, own: sqlite3.Connection) -> None:
    _own_commit(own, watch)
    assert watch.others_wrote() is False
    for n in range(3):  # several between two looks
        _own_commit(own, watch, n)
    assert watch.others_wrote() is False


def test_another_connections_commit_is_seen_once(watch: CommitWatch, path: str) -> None:
    with closing(sqlite3.connect(path, isolation_level=None)) as elsewhere:
        elsewhere.execute("INSERT INTO t VALUES (2)")
    assert watch.others_wrote() is True
    assert watch.others_wrote() is False


@pytest.mark.parametrize("where", ["before", "between", "after"])
def test_another_commit_among_the_nodes_own_is_seen(
    watch: CommitWatch, own: sqlite3.Connection, path: str, where: str
) -> None:
    elsewhere = sqlite3.connect(path, isolation_level=None)
    try:
        for step in ("before", "own", "between", "own", "after"):
            if step == "own":
                _own_commit(own, watch)
            elif step == where:
                elsewhere.execute("INSERT INTO t VALUES (3)")
    finally:
        elsewhere.close()
    assert watch.others_wrote() is True
    assert watch.others_wrote() is False


@pytest.mark.parametrize(
    ("another_commit_first", "during", "after"),
    [(False, False, False), (True, None, True)],
    ids=["only-the-node", "another-commit-first"],
)
def test_while_the_node_commits_the_loop_is_told_without_waiting(
    watch: CommitWatch,
    own: sqlite3.Connection,
    path: str,
    another_commit_first: bool,
    during: bool | None,
    after: bool,
) -> None:
    if another_commit_first:
        with closing(sqlite3.connect(path, isolation_level=None)) as elsewhere:
            elsewhere.execute("INSERT INTO t VALUES (5)")
    with _committing(own, watch):
        # The write thread holds the watch: the loop does not wait. If the transaction began where
        # the loop last looked, nobody else can have committed (it holds SQLite's write lock); if
        # not, the loop cannot tell and reads the row.
        assert watch.others_wrote() is during
    assert watch.others_wrote() is after


def test_a_rolled_back_transaction_logs_nothing(
    watch: CommitWatch, own: sqlite3.Connection, path: str
) -> None:
    own.execute("BEGIN IMMEDIATE")
    watch.began()
    own.execute("INSERT INTO t VALUES (7)")
    own.execute("ROLLBACK")
    watch.rolled_back()
    assert watch.others_wrote() is False
    with closing(sqlite3.connect(path, isolation_level=None)) as elsewhere:
        elsewhere.execute("INSERT INTO t VALUES (8)")
    assert watch.others_wrote() is True


def test_a_watch_that_is_not_open_cannot_tell(path: str) -> None:
    watch = CommitWatch(path)
    assert watch.others_wrote() is None
    watch.open()
    assert watch.others_wrote() is True
    watch.close()
    assert watch.others_wrote() is None


class _Scripted(CommitWatch):
    """data_version as the test sets it."""

    version: int | None = 1

    def _version(self) -> int | None:
        return self.version


def test_a_change_seen_during_the_nodes_transaction_is_left_to_its_log_entry() -> None:
    watch = _Scripted("unused")
    assert watch.others_wrote() is True  # known: 1
    watch.began()
    # The transaction's first write restarted the WAL: other connections see the file change.
    watch.version = 2
    assert watch.others_wrote() is False
    with watch.committing(1):
        watch.version = 3
    assert watch.others_wrote() is False


def test_a_change_during_a_transaction_that_rolled_back_is_others() -> None:
    watch = _Scripted("unused")
    assert watch.others_wrote() is True
    watch.began()
    watch.version = 2
    assert watch.others_wrote() is False
    watch.rolled_back()
    # Nothing of this node's accounts for it now: it may have been anyone's.
    assert watch.others_wrote() is True


def test_a_version_that_cannot_be_read_forgets_what_was_known() -> None:
    watch = _Scripted("unused")
    assert watch.others_wrote() is True
    watch.version = None
    assert watch.others_wrote() is None
    watch.version = 1
    assert watch.others_wrote() is True
