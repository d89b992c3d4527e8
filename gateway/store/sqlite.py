"""The embedded store: agent records in one SQLite file.

Built for a laptop or a single host: several gateway processes may share the file (WAL journal,
a busy timeout and a few retries when another process holds the write lock).

The event loop never waits on SQLite. Writes run on one dedicated thread with one connection (SQLite
has a single writer anyway, and `BEGIN IMMEDIATE` makes the lock wait happen up front, where the busy
timeout applies). Reads run on a small pool of threads, each with its own read-only connection; in WAL
mode they never wait for the writer.

The schema and the row mapping are in sqlite_schema.py; configs and packages (their versions and
rollout records) in sqlite_versioned.py.
"""

from __future__ import annotations

import asyncio
import logging
import math
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any, TypeVar

from gateway.fleet.agent import AgentState, AgentWrite
from gateway.fleet.configs import Config, ConfigRequest
from gateway.fleet.connection_settings import ConnectionSettings, SettingsSpec
from gateway.fleet.credentials import AgentCredential, BadCredentialRecord, kind_of
from gateway.fleet.packages import Package, PackageRequest, PackageVersion
from gateway.fleet.rollout_record import Rollout
from gateway.fleet.status import STATUSES
from gateway.fleet.versions import ConfigVersion
from gateway.store import sqlite_retention, sqlite_settings, sqlite_versioned as versioned
from gateway.store.base import (
    MAX_FORGET_BATCH,
    MAX_PAGE_SIZE,
    MAX_PENDING_COMMANDS,
    AgentPage,
    AgentQuery,
    FleetSummary,
    StoredRollout,
    StoreError,
    StoreUnavailable,
    decode_cursor,
    encode_cursor,
)
from gateway.store.sqlite_cache import Cached, RowCache
from gateway.store.sqlite_configs import CONFIGS
from gateway.store.sqlite_lock import NodeMark
from gateway.store.sqlite_packages import PACKAGES
from gateway.store.sqlite_schema import (
    MIGRATIONS,
    SCHEMA,
    SCHEMA_VERSION,
    SELECT_PENDING_COMMANDS,
    SELECT_STATE,
    SELECT_STATE_REV,
    STATE_COLUMNS,
    STATUS_CASE,
    STATUS_SQL,
    new_rev,
    selector_sql,
    state_of,
)
from gateway.store.sqlite_turns import Turns, no_automatic_checkpoints
from gateway.store.sqlite_watch import CommitWatch
from gateway.store.sqlite_writes import Encoded, apply_batch, encode

__all__ = ["SCHEMA_VERSION", "SQLiteStore"]

logger = logging.getLogger("gateway.store.sqlite")

T = TypeVar("T")

# Moves are re-pointed on write, so an alias is normally one hop; a few more cover writes that
# raced between processes.
MAX_ALIAS_HOPS = 4
# Uids per `IN (...)` query of a batched get(); far below SQLite's bound-parameter limit.
_GET_CHUNK = 500
READ_THREADS = 2
# How often `alone` asks the kernel again (a node that starts on the file is seen within this).
ALONE_RECHECK = 0.25
# Waits between attempts once SQLite's own busy timeout has run out.
_BUSY_RETRY_DELAYS = (0.05, 0.25)
_SQLITE_BUSY = 5
_SQLITE_LOCKED = 6
# The event loop has not asked CommitWatch in this turn yet.
_UNASKED = object()


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
        # Whether anyone but this node committed since the event loop last asked, and the answer
        # in this turn of the loop.
        self._watch = CommitWatch(path)
        self._others_wrote: bool | None | object = _UNASKED
        # One read connection per read thread; listed here so close() can close them.
        self._local = threading.local()
        self._read_conns: list[sqlite3.Connection] = []
        self._read_conns_lock = threading.Lock()
        self._open = False
        # get() calls waiting for the next batched read, and the batches in flight.
        self._pending_gets: dict[bytes, list[asyncio.Future[AgentState | None]]] = {}
        self._get_batches: set[asyncio.Task[None]] = set()
        # This node's copies of HTTP agents' rows (sqlite_cache.py explains why that is safe); for
        # each batched read under way, the uids of this node's batches that ended meanwhile.
        self._cache = RowCache()
        self._reads_open: dict[int, set[bytes]] = {}
        # Taken by the write thread around every write: several nodes may share the file.
        self._turns = Turns(path)
        # Held while open: whether other gateways share the file (`alone`).
        self._mark = NodeMark(path)
        self._alone = False
        self._alone_asked = -math.inf

    # -- lifecycle ---------------------------------------------------------------------------------

    async def open(self) -> None:
        if self._open:
            return
        self._write_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-write")
        self._read_pool = ThreadPoolExecutor(max_workers=READ_THREADS, thread_name_prefix="sqlite-read")
        self._open = True
        try:
            self._mark.open()
            await self._on_writer(self._open_sync)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        if self._write_pool is None and self._read_pool is None:
            return
        self._open = False
        self._mark.close()
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
        # Answered without waiting when the node's copy is surely the row (sqlite_cache.py): the
        # usual HTTP heartbeat on a file no other node writes.
        if (state := self._vouched(uid)) is not None:
            return state
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
        cache = self._cache
        # What the cache held when the batch started: a rev the file still has vouches for these.
        cached = {uid: entry for uid in batch if (entry := cache.get(uid)) is not None}
        revs = {uid: entry.rev for uid, entry in cached.items()}
        # Every other connection's commit up to now was seen (get() asked), so what the read finds
        # is vouched for in this generation.
        generation = cache.generation
        ended: set[bytes] = set()
        self._reads_open[id(ended)] = ended
        try:
            current, found = await self._on_reader(self._read_sync, list(batch), revs)
        except BaseException as exc:
            for futures in batch.values():
                for future in futures:
                    if not future.done():
                        future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
        else:
            results = self._keep(cached, current, found, generation, ended)
            for uid, futures in batch.items():
                for future in futures:
                    if not future.done():
                        future.set_result(results.get(uid))
        finally:
            del self._reads_open[id(ended)]
            task = asyncio.current_task()
            if task is not None:
                self._get_batches.discard(task)

    def _keep(
        self,
        cached: dict[bytes, Cached],
        current: set[bytes],
        found: dict[bytes, tuple[AgentState, int | None]],
        generation: int,
        ended: set[bytes],
    ) -> dict[bytes, AgentState | None]:
        """A batched read's records by uid, kept in the node's copies, vouched for in `generation`
        unless one of this node's batches wrote the row and ended during the read (`ended`): the
        read may have found the row from before the batch, after the batch's own bookkeeping."""
        cache = self._cache
        results: dict[bytes, AgentState | None] = {}
        for uid in current:
            entry = cached[uid]
            results[uid] = entry.state
            cache.put(entry.state, entry.rev, None if uid in ended else generation)
        for uid, (state, rev) in found.items():
            results[uid] = state
            if rev is not None:
                cache.put(state, rev, None if uid in ended else generation)
        return results

    async def write(self, writes: Sequence[AgentWrite]) -> None:
        if not writes:
            return
        batch = list(writes)
        cache = self._cache
        # The cached rows these touches apply to, as they are now (the cache may change meanwhile).
        before = {
            uid: entry
            for write in batch
            if write.is_touch and (entry := cache.get(uid := write.state.instance_uid)) is not None
        }
        # Not _on_writer: the rows are encoded before the writer lock is taken (_write_sync).
        revs = {uid: e.rev for uid, e in before.items()}
        try:
            touched = await self._run(lambda: self._write_pool, self._write_sync, batch, revs)
        finally:
            if self._reads_open:
                written = {w.state.instance_uid for w in batch}
                for ended in self._reads_open.values():
                    ended.update(written)
        for write in batch:
            uid = write.state.instance_uid
            if write.previous_uid is not None:
                cache.drop(write.previous_uid)
            rev = touched.get(uid)
            if rev is not None:
                # The touch applied to the very row cached: the row now is known without a read,
                # and vouched for as long as the entry it was applied to was.
                entry = before[uid]
                cache.put(_touched_row(entry, write.state), rev, entry.generation)
            else:
                # Written some other way: its rev no longer matches, so it gets read again.
                cache.drop(uid)

    async def list_agents(self, query: AgentQuery, now: float, offline_after: float) -> AgentPage:
        after = decode_cursor(query.cursor) if query.cursor is not None else None
        limit = max(1, min(int(query.limit), MAX_PAGE_SIZE))
        params: dict[str, Any] = {"now": float(now), "offline_after": float(offline_after)}
        where: list[str] = []
        if after is not None:
            where.append("uid_text > :after")
            params["after"] = after
        if query.status is not None:
            if query.status not in STATUS_SQL:
                raise ValueError(f"unknown status: {query.status!r}")
            where.append(f"({STATUS_SQL[query.status]})")
        if query.key_id is not None:
            where.append("key_id = :key_id")
            params["key_id"] = query.key_id
        if query.credential is not None:
            where.append("credential_kind = :credential_kind")
            params["credential_kind"] = query.credential
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
        if query.selector is not None:
            where.append(selector_sql(query.selector, params))
        for negate, terms in ((False, query.with_package_states), (True, query.without_package_states)):
            if terms:
                marks = ", ".join(f":pt{negate:d}_{i}" for i in range(len(terms)))
                params.update({f"pt{negate:d}_{i}": t for i, t in enumerate(terms)})
                found = (
                    f"EXISTS (SELECT 1 FROM json_each(agents.package_terms) AS p WHERE p.value IN ({marks}))"
                )
                where.append(f"NOT {found}" if negate else found)
        sql = f"SELECT {STATE_COLUMNS}, credential, uid_text FROM agents"
        if where:
            sql += " WHERE " + " AND ".join(where)
        # One row more than the page: it tells whether there is a next page.
        sql += " ORDER BY uid_text LIMIT :fetch"
        params["fetch"] = limit + 1
        rows = await self._on_reader(lambda conn: conn.execute(sql, params).fetchall())
        next_cursor = encode_cursor(rows[limit - 1][-1]) if len(rows) > limit else None
        page = rows[:limit]
        credentials = {
            bytes(row[0]): record for row in page if (record := _credential(row[-2], row[0])) is not None
        }
        return AgentPage(
            agents=[state_of(row) for row in page], next_cursor=next_cursor, credentials=credentials
        )

    async def get_credentials(self, uids: Sequence[bytes]) -> dict[bytes, AgentCredential]:
        wanted = list(dict.fromkeys(uids))
        if not wanted:
            return {}
        rows = await self._on_reader(self._credentials_sync, wanted)
        return {bytes(uid): record for uid, text in rows if (record := _credential(text, uid)) is not None}

    async def put_credential(
        self, uid: bytes, expected: AgentCredential | None, new: AgentCredential | None
    ) -> bool:
        written: bool = await self._on_writer(self._with_writer, _put_credential, uid, expected, new)
        return written

    @staticmethod
    def _credentials_sync(conn: sqlite3.Connection, uids: list[bytes]) -> list[tuple[bytes, str]]:
        rows: list[tuple[bytes, str]] = []
        for start in range(0, len(uids), _GET_CHUNK):
            chunk = uids[start : start + _GET_CHUNK]
            marks = ", ".join("?" for _ in chunk)
            rows += conn.execute(
                f"SELECT uid, credential FROM agents WHERE credential IS NOT NULL AND uid IN ({marks})", chunk
            ).fetchall()
        return rows

    async def pending_commands(self, limit: int) -> dict[bytes, int]:
        bound = max(0, min(int(limit), MAX_PENDING_COMMANDS))
        rows = await self._on_reader(lambda conn: conn.execute(SELECT_PENDING_COMMANDS, (bound,)).fetchall())
        return {bytes(uid): int(command) for uid, command in rows}

    async def summary(self, now: float, offline_after: float) -> FleetSummary:
        params = {"now": float(now), "offline_after": float(offline_after)}
        return await self._on_reader(self._summary_sync, params)

    async def list_configs(self) -> list[Config]:
        return await self._on_reader(versioned.list_items, CONFIGS)

    async def get_config(self, name: str) -> Config | None:
        return await self._on_reader(versioned.get_item, CONFIGS, name)

    async def put_config(self, name: str, request: ConfigRequest, now: float) -> tuple[Config, bool]:
        return await self._on_writer(self._with_writer, versioned.put_item, CONFIGS, name, request, now)

    async def delete_config(self, name: str, expected_version: int | None = None) -> bool:
        return await self._on_writer(
            self._with_writer, versioned.delete_item, CONFIGS, name, expected_version
        )

    async def list_packages(self) -> list[Package]:
        return await self._on_reader(versioned.list_items, PACKAGES)

    async def get_package(self, name: str) -> Package | None:
        return await self._on_reader(versioned.get_item, PACKAGES, name)

    async def put_package(self, name: str, request: PackageRequest, now: float) -> tuple[Package, bool]:
        return await self._on_writer(self._with_writer, versioned.put_item, PACKAGES, name, request, now)

    async def delete_package(self, name: str, expected_version: int | None = None) -> bool:
        return await self._on_writer(
            self._with_writer, versioned.delete_item, PACKAGES, name, expected_version
        )

    async def package_versions(self, name: str) -> list[PackageVersion]:
        return await self._on_reader(versioned.versions, PACKAGES, name)

    async def get_package_rollout(self, name: str) -> StoredRollout | None:
        return await self._on_reader(versioned.get_rollout, PACKAGES, name)

    async def list_package_rollouts(self) -> list[Rollout]:
        return await self._on_reader(versioned.list_rollouts, PACKAGES)

    async def put_package_rollout(self, rollout: Rollout, expected_rev: str | None) -> str | None:
        return await self._on_writer(
            self._with_writer, versioned.put_rollout, PACKAGES, rollout, expected_rev
        )

    async def list_connection_settings(self) -> list[ConnectionSettings]:
        return await self._on_reader(sqlite_settings.list_settings)

    async def get_connection_settings(self, name: str) -> ConnectionSettings | None:
        return await self._on_reader(sqlite_settings.get_settings, name)

    async def put_connection_settings(
        self, name: str, spec: SettingsSpec, now: float
    ) -> tuple[ConnectionSettings, bool]:
        return await self._on_writer(self._with_writer, sqlite_settings.put_settings, name, spec, now)

    async def delete_connection_settings(self, name: str) -> bool:
        return await self._on_writer(self._with_writer, sqlite_settings.delete_settings, name)

    async def forget(self, uid: bytes) -> bytes | None:
        target: bytes | None = await self._on_writer(self._with_writer, sqlite_retention.forget, uid)
        if target is not None:
            self._cache.drop(target)
        return target

    async def forget_unseen(self, before: float, limit: int) -> int:
        bound = max(0, min(int(limit), MAX_FORGET_BATCH))
        uids = await self._on_writer(self._with_writer, sqlite_retention.forget_unseen, before, bound)
        for uid in uids:
            self._cache.drop(uid)
        return len(uids)

    async def config_versions(self, name: str) -> list[ConfigVersion]:
        return await self._on_reader(versioned.versions, CONFIGS, name)

    async def get_rollout(self, name: str) -> StoredRollout | None:
        return await self._on_reader(versioned.get_rollout, CONFIGS, name)

    async def list_rollouts(self) -> list[Rollout]:
        return await self._on_reader(versioned.list_rollouts, CONFIGS)

    async def put_rollout(self, rollout: Rollout, expected_rev: str | None) -> str | None:
        return await self._on_writer(self._with_writer, versioned.put_rollout, CONFIGS, rollout, expected_rev)

    def alone(self) -> bool:
        """Whether no other gateway process has this file open (asked at most every ALONE_RECHECK
        seconds): a node without a bus is then the whole fleet (gateway/node/liveness.py)."""
        now = time.monotonic()
        if now - self._alone_asked >= ALONE_RECHECK:
            self._alone_asked = now
            self._alone = self._mark.alone()
        return self._alone

    # -- running on the threads --------------------------------------------------------------------

    async def _on_writer(self, fn: Callable[..., T], *args: Any) -> T:
        # What these commit is not an agent batch the cache follows: CommitWatch tells it from the
        # node's batches, and the next get() stops vouching for the node's copies.
        return await self._run(lambda: self._write_pool, self._locked, fn, *args)

    def _vouched(self, uid: bytes) -> AgentState | None:
        """The node's copy of `uid`'s row if it is surely current (sqlite_cache.py), else None."""
        others = self._others_wrote
        if others is _UNASKED:
            # Once per turn of the event loop: every request handled in this turn had arrived
            # before it began, so a commit that ended before the request came is seen all the same.
            others = self._others_wrote = self._watch.others_wrote()
            asyncio.get_running_loop().call_soon(self._next_turn)
            if others:
                self._cache.unvouch_all()
        if others is None:
            return None
        return self._cache.vouched(uid)

    def _next_turn(self) -> None:
        self._others_wrote = _UNASKED

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
            no_automatic_checkpoints(conn)
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
            if version > 0:
                for step in range(version + 1, SCHEMA_VERSION + 1):
                    for statement in MIGRATIONS.get(step, ()):
                        conn.execute(statement)
            for statement in SCHEMA:
                conn.execute(statement)
            if version < SCHEMA_VERSION:
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        self._watch.open()

    def _close_writer_sync(self) -> None:
        self._watch.close()
        if self._write_conn is not None:
            conn, self._write_conn = self._write_conn, None
            conn.close()
        self._turns.close()

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

    def _with_writer(self, fn: Callable[..., T], *args: Any) -> T:
        if self._write_conn is None:
            raise StoreError(f"SQLite store {self.path} is not open")
        return fn(self._write_conn, *args)

    def _with_reader(self, fn: Callable[..., T], *args: Any) -> T:
        return fn(self._reader(), *args)

    # -- reads -------------------------------------------------------------------------------------

    def _read_sync(
        self, conn: sqlite3.Connection, uids: list[bytes], revs: dict[bytes, int]
    ) -> tuple[set[bytes], dict[bytes, tuple[AgentState, int | None]]]:
        """(the uids whose cached rev is still the stored one, {uid: (record, its row's rev, or None
        for a record found through an alias)} for the others that exist), in one read transaction."""
        current: set[bytes] = set()
        found: dict[bytes, tuple[AgentState, int | None]] = {}
        conn.execute("BEGIN")
        try:
            checked = list(revs)
            for start in range(0, len(checked), _GET_CHUNK):
                chunk = checked[start : start + _GET_CHUNK]
                marks = ", ".join("?" for _ in chunk)
                for uid, rev in conn.execute(f"SELECT uid, rev FROM agents WHERE uid IN ({marks})", chunk):
                    if revs.get(bytes(uid)) == rev:
                        current.add(bytes(uid))
            rest = [uid for uid in uids if uid not in current]
            for start in range(0, len(rest), _GET_CHUNK):
                chunk = rest[start : start + _GET_CHUNK]
                marks = ", ".join("?" for _ in chunk)
                for row in conn.execute(f"{SELECT_STATE_REV} WHERE uid IN ({marks})", chunk):
                    found[bytes(row[0])] = (state_of(row), row[-1])
            for uid in rest:
                if uid not in found:
                    moved = self._follow_aliases(conn, uid)
                    if moved is not None:
                        found[uid] = (moved, None)
            return current, found
        finally:
            if conn.in_transaction:
                conn.execute("COMMIT")

    def _follow_aliases(self, conn: sqlite3.Connection, uid: bytes) -> AgentState | None:
        for _ in range(MAX_ALIAS_HOPS + 1):
            alias = conn.execute("SELECT new_uid FROM uid_aliases WHERE old_uid = ?", (uid,)).fetchone()
            if alias is None:
                return None
            uid = alias[0]
            row = conn.execute(SELECT_STATE + " WHERE uid = ?", (uid,)).fetchone()
            if row is not None:
                return state_of(row)
        return None

    def _summary_sync(self, conn: sqlite3.Connection, params: dict[str, float]) -> FleetSummary:
        by_status: dict[str, int] = dict.fromkeys(STATUSES, 0)
        by_type_version: dict[str, dict[str, int]] = {}
        by_os: dict[str, int] = {}
        conn.execute("BEGIN")
        try:
            for status, count in conn.execute(
                f"SELECT {STATUS_CASE} AS status, count(*) FROM agents GROUP BY status", params
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

    def _write_sync(self, writes: list[AgentWrite], expected: dict[bytes, int]) -> dict[bytes, int]:
        """Apply the batch in one transaction; {uid: new rev} for the touches applied to the row at
        the rev in `expected` (the node's cached copy)."""
        conn = self._write_conn
        if conn is None:
            raise StoreError(f"SQLite store {self.path} is not open")
        # Encoded before the write lock is taken: other nodes wait for it.
        encoded = [encode(w) for w in writes]
        return self._locked(self._transaction, conn, writes, encoded, expected)

    def _locked(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` in a turn at the writer lock every node takes (sqlite_turns.py)."""
        return self._turns.take(self._write_conn, fn, *args)

    def _transaction(
        self,
        conn: sqlite3.Connection,
        writes: list[AgentWrite],
        encoded: list[Encoded],
        expected: dict[bytes, int],
    ) -> dict[bytes, int]:
        conn.execute("BEGIN IMMEDIATE")
        # Holding SQLite's write lock: from here to COMMIT every change to the file is this one's
        # (its first write may also restart the WAL, which other connections see as a change).
        began = self._watch.began()
        try:
            touched = apply_batch(conn, writes, encoded, expected)
            # Still holding the writer lock every gateway takes (sqlite_lock.py) when it logs.
            with self._watch.committing(began):
                conn.execute("COMMIT")
        except BaseException:
            self._watch.rolled_back()
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return touched


def _credential(text: str | None, uid: bytes) -> AgentCredential | None:
    try:
        return AgentCredential.decode(text)
    except BadCredentialRecord as exc:
        raise StoreError(f"credential record of agent {bytes(uid).hex()}: {exc}") from exc


def _put_credential(
    conn: sqlite3.Connection, uid: bytes, expected: AgentCredential | None, new: AgentCredential | None
) -> bool:
    """Compare-and-set one agent's credential record, in one write transaction."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        row = conn.execute("SELECT credential FROM agents WHERE uid = ?", (uid,)).fetchone()
        written = row is not None and _credential(row[0], uid) == expected
        if written:
            conn.execute(
                "UPDATE agents SET credential = ?, credential_kind = ?, rev = ? WHERE uid = ?",
                (None if new is None else new.encode(), kind_of(new), new_rev(), uid),
            )
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return written


def _touched_row(entry: Cached, write: AgentState) -> AgentState:
    """The cached row after TOUCH applied `write`'s heartbeat fields to it (sqlite_schema.touch_rows)."""
    state = entry.state.touched(float(write.last_seen), write.sequence_num)
    if (state.node, state.transport) == (write.node, write.transport):
        return state
    return replace(state, node=write.node, transport=write.transport)
