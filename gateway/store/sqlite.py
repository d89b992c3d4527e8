"""The embedded store: agent records in one SQLite file.

Built for a laptop or a single host: several gateway processes may share the file (WAL journal,
a busy timeout and a few retries when another process holds the write lock).

The event loop never waits on SQLite. Writes run on one dedicated thread with one connection (SQLite
has a single writer anyway, and `BEGIN IMMEDIATE` makes the lock wait happen up front, where the busy
timeout applies). Reads run on a small pool of threads, each with its own read-only connection; in WAL
mode they never wait for the writer.

Rows keep every `AgentState` field losslessly (sub-messages as their protobuf bytes) plus columns
derived with `facts()` for filtering, search and summaries. `uint64` fields (`sequence_num`,
`capabilities`) are stored as the signed 64-bit integer with the same bits, since SQLite integers are
signed.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import sqlite3
import threading
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from gateway.fleet.agent import AgentState, AgentWrite, facts, uid_str
from gateway.fleet.status import STATUSES, Status
from gateway.store.base import (
    MAX_PAGE_SIZE,
    AgentPage,
    AgentQuery,
    FleetSummary,
    InvalidCursor,
    StoreError,
    StoreUnavailable,
)

logger = logging.getLogger("gateway.store.sqlite")

T = TypeVar("T")

SCHEMA_VERSION = 1
UID_LENGTH = 16
# Moves are re-pointed on write, so an alias is normally one hop; a few more cover writes that
# raced between processes.
MAX_ALIAS_HOPS = 4
# Uids per `IN (...)` query of a batched get(); far below SQLite's bound-parameter limit.
_GET_CHUNK = 500
READ_THREADS = 2
# Waits between attempts once SQLite's own busy timeout has run out.
_BUSY_RETRY_DELAYS = (0.05, 0.25)
_UINT64 = 1 << 64
_INT64_MAX = (1 << 63) - 1
_SQLITE_BUSY = 5
_SQLITE_LOCKED = 6

_SCHEMA = (
    """
    CREATE TABLE IF NOT EXISTS agents (
        uid BLOB PRIMARY KEY,
        uid_text TEXT NOT NULL UNIQUE,
        enrolled_at REAL NOT NULL,
        last_seen REAL NOT NULL,
        sequence_num INTEGER NOT NULL,
        capabilities INTEGER NOT NULL,
        description BLOB,
        health BLOB,
        effective_config BLOB,
        remote_config_status BLOB,
        disconnected INTEGER NOT NULL,
        previous_instance_uids BLOB NOT NULL,
        pending_command INTEGER,
        node TEXT NOT NULL,
        transport TEXT NOT NULL,
        healthy INTEGER,
        agent_type TEXT NOT NULL,
        agent_version TEXT NOT NULL,
        os_type TEXT NOT NULL,
        attrs TEXT NOT NULL,
        search TEXT NOT NULL
    )
    """,
    "CREATE INDEX IF NOT EXISTS agents_last_seen ON agents (last_seen)",
    "CREATE INDEX IF NOT EXISTS agents_type_version ON agents (agent_type, agent_version)",
    "CREATE INDEX IF NOT EXISTS agents_os_type ON agents (os_type)",
    """
    CREATE TABLE IF NOT EXISTS uid_aliases (
        old_uid BLOB PRIMARY KEY,
        new_uid BLOB NOT NULL
    )
    """,
    "CREATE INDEX IF NOT EXISTS uid_aliases_new_uid ON uid_aliases (new_uid)",
)

# Every column of `agents`, in the order `_row()` produces them.
_COLUMNS = (
    "uid",
    "uid_text",
    "enrolled_at",
    "last_seen",
    "sequence_num",
    "capabilities",
    "description",
    "health",
    "effective_config",
    "remote_config_status",
    "disconnected",
    "previous_instance_uids",
    "pending_command",
    "node",
    "transport",
    "healthy",
    "agent_type",
    "agent_version",
    "os_type",
    "attrs",
    "search",
)
_UPSERT = (
    f"INSERT INTO agents ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' for _ in _COLUMNS)}) "
    "ON CONFLICT (uid) DO UPDATE SET "
    # pending_command is left out: only a write that names it may change it (see _apply).
    + ", ".join(f"{c} = excluded.{c}" for c in _COLUMNS if c not in ("uid", "pending_command"))
    + " WHERE excluded.last_seen >= agents.last_seen"
)
_TOUCH = (
    "UPDATE agents SET last_seen = ?, sequence_num = ?, node = ?, transport = ? "
    "WHERE uid = ? AND last_seen <= ?"
)
# The columns an AgentState is read back from, in `_state()` order.
_STATE_COLUMNS = (
    "uid, enrolled_at, last_seen, sequence_num, capabilities, description, health, effective_config, "
    "remote_config_status, disconnected, previous_instance_uids, pending_command, node, transport"
)
_SELECT_STATE = f"SELECT {_STATE_COLUMNS} FROM agents"

# derive_status() in SQL. `? - last_seen > ?` is the same IEEE double arithmetic as Python's
# `now - state.last_seen > offline_after`, so the boundary agrees to the last bit.
_STATUS_SQL: dict[Status, str] = {
    "disconnected": "disconnected = 1",
    "offline": "disconnected = 0 AND (:now - last_seen) > :offline_after",
    "unhealthy": "disconnected = 0 AND NOT ((:now - last_seen) > :offline_after) AND healthy = 0",
    "online": (
        "disconnected = 0 AND NOT ((:now - last_seen) > :offline_after) AND (healthy IS NULL OR healthy = 1)"
    ),
}
_STATUS_CASE = (
    "CASE WHEN disconnected = 1 THEN 'disconnected' "
    "WHEN (:now - last_seen) > :offline_after THEN 'offline' "
    "WHEN healthy = 0 THEN 'unhealthy' ELSE 'online' END"
)


def _to_int64(value: int) -> int:
    return value - _UINT64 if value > _INT64_MAX else value


def _from_int64(value: int) -> int:
    return value + _UINT64 if value < 0 else value


def encode_cursor(uid_text: str) -> str:
    """The opaque cursor after `uid_text`: its 16 uid bytes in unpadded url-safe base64."""
    return base64.urlsafe_b64encode(uuid.UUID(uid_text).bytes).rstrip(b"=").decode("ascii")


def decode_cursor(cursor: str) -> str:
    """The uid_text a cursor from `encode_cursor` stands for; InvalidCursor for anything else."""
    try:
        raw = base64.b64decode(cursor + "==", altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        raise InvalidCursor(f"invalid cursor: {cursor!r}") from None
    if len(raw) != UID_LENGTH:
        raise InvalidCursor(f"invalid cursor: {cursor!r}")
    text = uid_str(raw)
    if encode_cursor(text) != cursor:
        raise InvalidCursor(f"invalid cursor: {cursor!r}")
    return text


def _join_uids(uids: Sequence[bytes]) -> bytes:
    return b"".join(uids)


def _split_uids(data: bytes) -> tuple[bytes, ...]:
    return tuple(data[i : i + UID_LENGTH] for i in range(0, len(data), UID_LENGTH))


def _row(state: AgentState) -> tuple[Any, ...]:
    """The `agents` row for a record, in `_COLUMNS` order."""
    derived = facts(state)
    uid_text = state.uid
    return (
        state.instance_uid,
        uid_text,
        float(state.enrolled_at),
        float(state.last_seen),
        _to_int64(state.sequence_num),
        _to_int64(state.capabilities),
        state.description,
        state.health,
        state.effective_config,
        state.remote_config_status,
        int(state.disconnected),
        _join_uids(state.previous_instance_uids),
        state.pending_command,
        state.node,
        state.transport,
        None if derived.healthy is None else int(derived.healthy),
        derived.agent_type,
        derived.agent_version,
        derived.os_type,
        json.dumps(derived.attributes, ensure_ascii=False, separators=(",", ":"), sort_keys=True),
        derived.search_text(uid_text),
    )


def _state(row: Sequence[Any]) -> AgentState:
    return AgentState(
        instance_uid=bytes(row[0]),
        enrolled_at=row[1],
        last_seen=row[2],
        sequence_num=_from_int64(row[3]),
        capabilities=_from_int64(row[4]),
        description=row[5],
        health=row[6],
        effective_config=row[7],
        remote_config_status=row[8],
        disconnected=bool(row[9]),
        previous_instance_uids=_split_uids(row[10]),
        pending_command=row[11],
        node=row[12],
        transport=row[13],
    )


def _is_busy(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int) and code & 0xFF in (_SQLITE_BUSY, _SQLITE_LOCKED):
        return True
    message = str(exc).lower()
    return "database is locked" in message or "database table is locked" in message


class SQLiteStore:
    """`Store` on one SQLite file. Construct, `await open()`, use, `await close()`."""

    def __init__(self, path: str, *, busy_timeout: float = 10.0) -> None:
        self.path = path
        self._busy_timeout = busy_timeout
        self._write_pool: ThreadPoolExecutor | None = None
        self._read_pool: ThreadPoolExecutor | None = None
        # Used only on the write thread (check_same_thread enforces it).
        self._write_conn: sqlite3.Connection | None = None
        # One read connection per read thread; listed here so close() can close them.
        self._local = threading.local()
        self._read_conns: list[sqlite3.Connection] = []
        self._read_conns_lock = threading.Lock()
        self._open = False
        # get() calls waiting for the next batched read, and the batches in flight.
        self._pending_gets: dict[bytes, list[asyncio.Future[AgentState | None]]] = {}
        self._get_batches: set[asyncio.Task[None]] = set()

    # -- lifecycle ---------------------------------------------------------------------------------

    async def open(self) -> None:
        if self._open:
            return
        self._write_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-write")
        self._read_pool = ThreadPoolExecutor(max_workers=READ_THREADS, thread_name_prefix="sqlite-read")
        self._open = True
        try:
            await self._on_writer(self._open_sync)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        if self._write_pool is None and self._read_pool is None:
            return
        self._open = False
        write_pool, read_pool = self._write_pool, self._read_pool
        self._write_pool = self._read_pool = None
        loop = asyncio.get_running_loop()
        if write_pool is not None:
            # Queued behind any write still running, on the thread that owns the connection.
            try:
                await loop.run_in_executor(write_pool, self._close_writer_sync)
            except sqlite3.Error as exc:
                logger.warning("closing %s: %s", self.path, exc)
            await asyncio.to_thread(write_pool.shutdown, True)
        if read_pool is not None:
            await asyncio.to_thread(read_pool.shutdown, True)
        # The read threads are gone, so nothing else can be using these connections now.
        with self._read_conns_lock:
            conns, self._read_conns = self._read_conns, []
        for conn in conns:
            conn.close()

    async def ping(self) -> None:
        await self._on_reader(lambda conn: conn.execute("SELECT 1").fetchone())

    # -- Store -------------------------------------------------------------------------------------

    async def get(self, uid: bytes) -> AgentState | None:
        # Every get() started in the same event-loop turn shares one thread hop and one query: under
        # load, HTTP polls arrive in bursts and the per-call executor overhead would dominate.
        loop = asyncio.get_running_loop()
        future: asyncio.Future[AgentState | None] = loop.create_future()
        if not self._pending_gets:
            self._get_batches.add(loop.create_task(self._get_batch()))
        self._pending_gets.setdefault(uid, []).append(future)
        return await future

    async def _get_batch(self) -> None:
        await asyncio.sleep(0)  # let the rest of this turn's callers join the batch
        batch, self._pending_gets = self._pending_gets, {}
        try:
            found = await self._on_reader(self._get_many_sync, list(batch))
        except BaseException as exc:
            for futures in batch.values():
                for future in futures:
                    if not future.done():
                        future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
        else:
            for uid, futures in batch.items():
                for future in futures:
                    if not future.done():
                        future.set_result(found.get(uid))
        finally:
            task = asyncio.current_task()
            if task is not None:
                self._get_batches.discard(task)

    async def write(self, writes: Sequence[AgentWrite]) -> None:
        if not writes:
            return
        await self._on_writer(self._write_sync, list(writes))

    async def list_agents(self, query: AgentQuery, now: float, offline_after: float) -> AgentPage:
        after = decode_cursor(query.cursor) if query.cursor is not None else None
        limit = max(1, min(int(query.limit), MAX_PAGE_SIZE))
        params: dict[str, Any] = {"now": float(now), "offline_after": float(offline_after)}
        where: list[str] = []
        if after is not None:
            where.append("uid_text > :after")
            params["after"] = after
        if query.status is not None:
            if query.status not in _STATUS_SQL:
                raise ValueError(f"unknown status: {query.status!r}")
            where.append(f"({_STATUS_SQL[query.status]})")
        if query.q:
            # instr() on the lower-cased column: a plain substring, so % and _ are literal.
            where.append("instr(search, :q) > 0")
            params["q"] = query.q.lower()
        for i, (key, value) in enumerate(sorted(query.attributes.items())):
            where.append(
                f"EXISTS (SELECT 1 FROM json_each(agents.attrs) AS a WHERE a.key = :k{i} AND a.value = :v{i})"
            )
            params[f"k{i}"] = key
            params[f"v{i}"] = value
        sql = f"SELECT {_STATE_COLUMNS}, uid_text FROM agents"
        if where:
            sql += " WHERE " + " AND ".join(where)
        # One row more than the page: it tells whether there is a next page.
        sql += " ORDER BY uid_text LIMIT :fetch"
        params["fetch"] = limit + 1
        rows = await self._on_reader(lambda conn: conn.execute(sql, params).fetchall())
        next_cursor = encode_cursor(rows[limit - 1][-1]) if len(rows) > limit else None
        return AgentPage(agents=[_state(row) for row in rows[:limit]], next_cursor=next_cursor)

    async def summary(self, now: float, offline_after: float) -> FleetSummary:
        params = {"now": float(now), "offline_after": float(offline_after)}
        return await self._on_reader(self._summary_sync, params)

    # -- running on the threads --------------------------------------------------------------------

    async def _on_writer(self, fn: Callable[..., T], *args: Any) -> T:
        return await self._run(lambda: self._write_pool, fn, *args)

    async def _on_reader(self, fn: Callable[..., T], *args: Any) -> T:
        return await self._run(lambda: self._read_pool, self._with_reader, fn, *args)

    async def _run(
        self, pool: Callable[[], ThreadPoolExecutor | None], fn: Callable[..., T], *args: Any
    ) -> T:
        loop = asyncio.get_running_loop()
        for delay in (*_BUSY_RETRY_DELAYS, None):
            executor = pool()
            if executor is None or not self._open:
                raise StoreError(f"SQLite store {self.path} is not open")
            try:
                return await loop.run_in_executor(executor, fn, *args)
            except sqlite3.Error as exc:
                if not _is_busy(exc):
                    raise StoreError(f"SQLite store {self.path}: {exc}") from exc
                if delay is None:
                    raise StoreUnavailable(
                        f"SQLite store {self.path} stayed locked by another connection: {exc}"
                    ) from exc
                logger.debug("%s is locked, retrying in %.2fs", self.path, delay)
                await asyncio.sleep(delay)
            except RuntimeError as exc:
                # The executor was shut down under us by close().
                raise StoreError(f"SQLite store {self.path} is closed") from exc
        raise AssertionError("unreachable")

    def _connect(self, *, check_same_thread: bool) -> sqlite3.Connection:
        # isolation_level=None: no implicit transactions; every transaction below is explicit.
        conn = sqlite3.connect(
            self.path,
            timeout=self._busy_timeout,
            isolation_level=None,
            check_same_thread=check_same_thread,
        )
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout * 1000)}")
            conn.execute("PRAGMA synchronous = NORMAL")
        except BaseException:
            conn.close()
            raise
        return conn

    def _open_sync(self) -> None:
        if self._write_conn is None:
            self._write_conn = self._connect(check_same_thread=True)
        conn = self._write_conn
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise StoreError(
                f"{self.path}: SQLite could not switch to WAL journal mode (got {mode!r}); "
                "use a file on a local disk"
            )
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"{self.path} has schema version {version}, but this gateway knows only up to "
                    f"version {SCHEMA_VERSION}: run a newer opamp-gateway, or point --sqlite-path "
                    "at another file"
                )
            for statement in _SCHEMA:
                conn.execute(statement)
            if version < SCHEMA_VERSION:
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def _close_writer_sync(self) -> None:
        if self._write_conn is not None:
            conn, self._write_conn = self._write_conn, None
            conn.close()

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            # Used only by this thread; check_same_thread is off so close() can close it after the
            # pool has shut down.
            conn = self._connect(check_same_thread=False)
            conn.execute("PRAGMA query_only = ON")
            self._local.conn = conn
            with self._read_conns_lock:
                self._read_conns.append(conn)
        return conn

    def _with_reader(self, fn: Callable[..., T], *args: Any) -> T:
        return fn(self._reader(), *args)

    # -- reads -------------------------------------------------------------------------------------

    def _get_many_sync(self, conn: sqlite3.Connection, uids: list[bytes]) -> dict[bytes, AgentState]:
        found: dict[bytes, AgentState] = {}
        conn.execute("BEGIN")
        try:
            for start in range(0, len(uids), _GET_CHUNK):
                chunk = uids[start : start + _GET_CHUNK]
                marks = ", ".join("?" for _ in chunk)
                for row in conn.execute(f"{_SELECT_STATE} WHERE uid IN ({marks})", chunk):
                    found[bytes(row[0])] = _state(row)
            for uid in uids:
                if uid not in found:
                    moved = self._follow_aliases(conn, uid)
                    if moved is not None:
                        found[uid] = moved
            return found
        finally:
            if conn.in_transaction:
                conn.execute("COMMIT")

    def _follow_aliases(self, conn: sqlite3.Connection, uid: bytes) -> AgentState | None:
        for _ in range(MAX_ALIAS_HOPS + 1):
            alias = conn.execute("SELECT new_uid FROM uid_aliases WHERE old_uid = ?", (uid,)).fetchone()
            if alias is None:
                return None
            uid = alias[0]
            row = conn.execute(_SELECT_STATE + " WHERE uid = ?", (uid,)).fetchone()
            if row is not None:
                return _state(row)
        return None

    def _summary_sync(self, conn: sqlite3.Connection, params: dict[str, float]) -> FleetSummary:
        by_status: dict[str, int] = dict.fromkeys(STATUSES, 0)
        by_type_version: dict[str, dict[str, int]] = {}
        by_os: dict[str, int] = {}
        conn.execute("BEGIN")
        try:
            for status, count in conn.execute(
                f"SELECT {_STATUS_CASE} AS status, count(*) FROM agents GROUP BY status", params
            ):
                by_status[status] += count
            for agent_type, version, count in conn.execute(
                "SELECT agent_type, agent_version, count(*) FROM agents GROUP BY agent_type, agent_version"
            ):
                versions = by_type_version.setdefault(agent_type or "unknown", {})
                key = version or "unknown"
                versions[key] = versions.get(key, 0) + count
            for os_type, count in conn.execute("SELECT os_type, count(*) FROM agents GROUP BY os_type"):
                key = os_type or "unknown"
                by_os[key] = by_os.get(key, 0) + count
        finally:
            if conn.in_transaction:
                conn.execute("COMMIT")
        return FleetSummary(
            total=sum(by_status.values()), by_status=by_status, by_type_version=by_type_version, by_os=by_os
        )

    # -- writes ------------------------------------------------------------------------------------

    def _write_sync(self, writes: list[AgentWrite]) -> None:
        conn = self._write_conn
        if conn is None:
            raise StoreError(f"SQLite store {self.path} is not open")
        # Decode descriptions before taking the write lock; touches rarely need a full row.
        rows = [None if w.is_touch else _row(w.state) for w in writes]
        conn.execute("BEGIN IMMEDIATE")
        try:
            for write, row in zip(writes, rows, strict=True):
                self._apply(conn, write, row)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    @staticmethod
    def _apply(conn: sqlite3.Connection, write: AgentWrite, row: tuple[Any, ...] | None) -> None:
        state = write.state
        uid = state.instance_uid
        old = write.previous_uid if write.previous_uid != uid else None
        if row is None:
            last_seen = float(state.last_seen)
            touched = conn.execute(
                _TOUCH,
                (last_seen, _to_int64(state.sequence_num), state.node, state.transport, uid, last_seen),
            )
            if touched.rowcount:
                return
        if old is not None:
            # The uid is (again) the live one: it must not stay an alias of anything.
            conn.execute("DELETE FROM uid_aliases WHERE old_uid = ?", (uid,))
        elif conn.execute("SELECT 1 FROM uid_aliases WHERE old_uid = ?", (uid,)).fetchone() is not None:
            # A write for a uid that has since moved (raced with the move on another node): the
            # record lives on under the new uid; recreating the old row would resurrect a ghost.
            return
        conn.execute(_UPSERT, row if row is not None else _row(state))
        if "pending_command" in write.changed:
            # Whatever its last_seen: a restart requested on one node must not be undone by a status
            # write flushed later by the node holding the agent, nor survive its own delivery.
            conn.execute("UPDATE agents SET pending_command = ? WHERE uid = ?", (state.pending_command, uid))
        if old is not None:
            conn.execute("DELETE FROM agents WHERE uid = ?", (old,))
            conn.execute("UPDATE uid_aliases SET new_uid = ? WHERE new_uid = ?", (uid, old))
            conn.execute("INSERT OR REPLACE INTO uid_aliases (old_uid, new_uid) VALUES (?, ?)", (old, uid))
