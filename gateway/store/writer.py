"""The per-node writer: coalesces agent writes and commits them to the store in batches.

Heartbeats from one agent collapse into one row write per flush. Writes that matter (enrollment,
uid moves, status changes) are awaited by the caller: they trigger an immediate flush and the reply
waits for the commit. Reads go through `get()`, which sees writes not yet flushed, so the node that
just handled an agent's message never mistakes its own pending write for a sequence gap.

On a node that is the whole fleet, an HTTP agent's plain heartbeats are *held* instead
(gateway/node/liveness.py): kept here, seen by `get()`, and queued with the agent's next write that
matters, by the liveness sweep, or when the writer stops.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable

from gateway.fleet.agent import AgentState, AgentWrite
from gateway.store.base import AgentStore, StoreError

logger = logging.getLogger("gateway.store.writer")

_RETRY_DELAYS = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0)


class WriterFull(Exception):
    """Too many agents have unflushed writes; the caller should shed load."""

    def __init__(self, depth: int) -> None:
        super().__init__(f"writer queue full ({depth} agents pending)")
        self.depth = depth


class WriterStopped(Exception):
    """The writer was stopped; nothing new is accepted."""


class Writer:
    def __init__(
        self,
        store: AgentStore,
        *,
        flush_interval: float = 0.5,
        batch_size: int = 1000,
        max_pending: int = 200_000,
        on_flush: Callable[[int, float], None] | None = None,
        on_error: Callable[[BaseException], None] | None = None,
    ) -> None:
        self._store = store
        self._flush_interval = flush_interval
        self._batch_size = batch_size
        self._max_pending = max_pending
        self._on_flush = on_flush
        self._on_error = on_error
        self._pending: dict[bytes, AgentWrite] = {}
        # old uid -> new uid, for moves not yet committed
        self._moved: dict[bytes, bytes] = {}
        self._waiters: dict[bytes, list[asyncio.Future[None]]] = {}
        # The batch being committed: still visible to get() until the store has it.
        self._inflight: dict[bytes, AgentWrite] = {}
        # Held heartbeats: uid -> (the latest, the last_seen of the first one held). Never an agent
        # that also has a write pending or in flight, so get() sees the newest first.
        self._held: dict[bytes, tuple[AgentWrite, float]] = {}
        self._wake = asyncio.Event()
        self._urgent = False
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.last_error: BaseException | None = None

    @property
    def depth(self) -> int:
        # The batch being committed (or retried) is still unflushed: it counts against the bound,
        # or a store that keeps failing would let the queue refill behind it.
        return len(self._pending) + len(self._inflight)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="gateway-writer")

    @property
    def held(self) -> int:
        return len(self._held)

    async def stop(self) -> None:
        """Flush everything still pending or held (retrying a while), then stop."""
        self.release_held(math.inf)
        while self._held and self._task is not None:
            # More held than the queue takes: each flush makes room for the next share.
            await self.flush()
            if not self.release_held(math.inf):
                logger.error(
                    "%d held heartbeats not written at shutdown: the store is failing", len(self._held)
                )
                break
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            await self._task
            self._task = None

    async def flush(self, timeout: float = 10.0) -> None:
        """Wait until everything submitted so far is committed (or `timeout` passes)."""
        deadline = time.monotonic() + timeout
        while (self._pending or self._inflight) and time.monotonic() < deadline:
            self._urgent = True
            self._wake.set()
            await asyncio.sleep(0.005)

    async def get(self, uid: bytes) -> AgentState | None:
        state = self.peek(uid)
        return state if state is not None else await self._store.get(uid)

    def peek(self, uid: bytes) -> AgentState | None:
        """The agent's record if it is here (a write queued or being committed, a held heartbeat),
        without waiting; None: only the store knows (get)."""
        target = self._moved.get(uid)
        if target is None:
            # Not moved (nearly always): one look in each place.
            write = self._pending.get(uid) or self._inflight.get(uid)
            target = uid
        else:
            write = (
                self._pending.get(target)
                or self._pending.get(uid)
                or self._inflight.get(target)
                or self._inflight.get(uid)
            )
        if write is not None:
            return write.state
        kept = self._held.get(target)
        return None if kept is None else kept[0].state

    def submit(self, write: AgentWrite) -> None:
        """Queue a write to be flushed within the flush interval."""
        self._enqueue(write)

    def hold(self, write: AgentWrite) -> bool:
        """Hold a plain heartbeat (`changed` is TOUCHED) back from the store; False (nothing done)
        when it must be queued instead: the agent has a write pending or in flight, which get() would
        otherwise see before this newer one, or the writer is stopping."""
        uid = write.state.instance_uid
        if self._stopping or write.previous_uid is not None or uid in self._pending or uid in self._inflight:
            return False
        kept = self._held.get(uid)
        self._held[uid] = (write, write.state.last_seen if kept is None else kept[1])
        return True

    def held_state(self, uid: bytes) -> AgentState | None:
        """The record of the agent's held heartbeat, if it has one."""
        kept = self._held.get(uid)
        return None if kept is None else kept[0].state

    def drop_held(self, uid: bytes) -> None:
        """Forget the agent's held heartbeat (its record is being deleted: a later touch of no row
        would write the whole record again)."""
        self._held.pop(uid, None)

    def release_held(self, seen_by: float) -> int:
        """Queue the held heartbeats of every agent whose first held one was seen by `seen_by` (its
        last_seen); how many (those a full queue refuses stay held for the next call)."""
        due = [uid for uid, (_, since) in self._held.items() if since <= seen_by]
        for n, uid in enumerate(due):
            write, since = self._held.pop(uid)
            try:
                self._enqueue(write)
            except (WriterFull, WriterStopped):
                self._held[uid] = (write, since)
                return n
        return len(due)

    async def submit_durable(self, write: AgentWrite) -> None:
        """Queue a write and return once it is committed; raise StoreError if it cannot be."""
        self._enqueue(write)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(write.state.instance_uid, []).append(future)
        self._urgent = True
        self._wake.set()
        await future

    def _enqueue(self, write: AgentWrite) -> None:
        if self._stopping:
            raise WriterStopped("writer stopped")
        uid = write.state.instance_uid
        earlier = self._pending.get(uid)
        if earlier is None and (kept := self._held.pop(uid, None)) is not None:
            # The held heartbeat's state is what this write was decided from: it rides along.
            earlier = kept[0]
        if write.previous_uid is not None:
            self._held.pop(write.previous_uid, None)
        if earlier is None and write.previous_uid is not None:
            earlier = self._pending.pop(write.previous_uid, None)
            self._move_waiters(write.previous_uid, uid)
        if earlier is None and self.depth >= self._max_pending:
            raise WriterFull(self.depth)
        self._pending[uid] = write if earlier is None else earlier.merged(write)
        if write.previous_uid is not None:
            self._moved[write.previous_uid] = uid
        if len(self._pending) >= self._batch_size:
            self._wake.set()

    def _move_waiters(self, old: bytes, new: bytes) -> None:
        moved = self._waiters.pop(old, None)
        if moved:
            self._waiters.setdefault(new, []).extend(moved)

    async def _run(self) -> None:
        while True:
            if not self._pending and self._stopping:
                return
            if not self._urgent and not self._stopping and len(self._pending) < self._batch_size:
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout=self._flush_interval)
                except TimeoutError:
                    pass
            self._wake.clear()
            self._urgent = False
            if self._pending:
                await self._flush_once()
            # Durable writes beyond this batch must not wait for the next interval.
            self._urgent = bool(self._waiters)

    async def _commit(self, batch: list[AgentWrite], *, durable_waiting: bool) -> StoreError | None:
        """Write a batch, retrying transient failures; return the last error if all tries failed."""
        error: StoreError | None = None
        for attempt, delay in enumerate((*_RETRY_DELAYS, None)):
            try:
                await self._store.write(batch)
                return None
            except StoreError as exc:
                error = exc
                if self._on_error is not None:
                    self._on_error(exc)
                # Callers waiting for durability should not wait through every retry.
                if delay is None or (durable_waiting and attempt >= 2):
                    break
                await asyncio.sleep(delay)
        return error

    async def _flush_once(self) -> None:
        uids = list(self._pending)[: self._batch_size]
        batch = [self._pending.pop(uid) for uid in uids]
        waiters = [w for uid in uids for w in self._waiters.pop(uid, ())]
        moved = {write.previous_uid for write in batch if write.previous_uid is not None}
        started = time.perf_counter()
        self._inflight = {write.state.instance_uid: write for write in batch}
        try:
            error = await self._commit(batch, durable_waiting=bool(waiters))
        except Exception as exc:
            # A bug (not a store failure): retrying cannot help, but the writer must live on.
            logger.exception("dropping %d agent writes after an unexpected error", len(batch))
            for future in waiters:
                if not future.done():
                    future.set_exception(StoreError(f"write failed: {exc!r}"))
            return
        finally:
            self._inflight = {}
        for old in moved:
            self._moved.pop(old, None)
        if error is None:
            self.last_error = None
            if self._on_flush is not None:
                self._on_flush(len(batch), time.perf_counter() - started)
            for future in waiters:
                if not future.done():
                    future.set_result(None)
            return
        self.last_error = error
        logger.warning("store write of %d agents failed: %s", len(batch), error)
        for future in waiters:
            if not future.done():
                future.set_exception(error)
        if self._stopping:
            logger.error("dropping %d agent writes at shutdown: the store is failing", len(batch))
            return
        # Keep them for the next flush; a newer write for the same agent merges over them.
        for write in batch:
            uid = write.state.instance_uid
            later = self._pending.get(uid)
            self._pending[uid] = write if later is None else write.merged(later)
            if write.previous_uid is not None:
                self._moved[write.previous_uid] = uid
        await asyncio.sleep(self._flush_interval)
