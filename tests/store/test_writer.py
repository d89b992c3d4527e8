"""The Writer against a real SQLiteStore (and a store that fails on purpose)."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from gateway.fleet.agent import AgentState, AgentWrite
from gateway.store import writer as writer_module
from gateway.store.base import AgentPage, AgentQuery, FleetSummary, StoreError, StoreUnavailable
from gateway.store.sqlite import SQLiteStore
from gateway.store.writer import Writer, WriterFull, WriterStopped
from tests.store.store_helpers import (
    agent,
    description,
    full,
    heartbeat,
    moved,
    new_uid,
    remote_config_status,
    touch,
)
from tests.support.waiting import eventually

pytestmark = pytest.mark.anyio

NOW = 1000.0


class ScriptedStore:
    """A Store that records batches and, on request, holds or fails writes before passing them on."""

    def __init__(self, inner: SQLiteStore, *, failures: int = 0) -> None:
        self.inner = inner
        self.failures = failures
        self.batches: list[list[AgentWrite]] = []
        self.attempts = 0
        # While set to an unset Event, write() waits for it before doing anything.
        self.gate: asyncio.Event | None = None
        self.entered = asyncio.Event()

    async def open(self) -> None:
        await self.inner.open()

    async def close(self) -> None:
        await self.inner.close()

    async def ping(self) -> None:
        await self.inner.ping()

    async def get(self, uid: bytes) -> AgentState | None:
        return await self.inner.get(uid)

    async def write(self, writes: Sequence[AgentWrite]) -> None:
        self.attempts += 1
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.failures > 0:
            self.failures -= 1
            raise StoreUnavailable("injected failure")
        await self.inner.write(writes)
        self.batches.append(list(writes))

    async def list_agents(self, query: AgentQuery, now: float, offline_after: float) -> AgentPage:
        return await self.inner.list_agents(query, now, offline_after)

    async def summary(self, now: float, offline_after: float) -> FleetSummary:
        return await self.inner.summary(now, offline_after)

    @property
    def written(self) -> int:
        return sum(len(b) for b in self.batches)


@pytest.fixture
def db_path(tmp_path: Path) -> str:
    return str(tmp_path / "writer.db")


@pytest.fixture
async def store(db_path: str) -> AsyncIterator[ScriptedStore]:
    store = ScriptedStore(SQLiteStore(db_path))
    await store.open()
    yield store
    await store.close()


@pytest.fixture
async def observer(db_path: str, store: ScriptedStore) -> AsyncIterator[SQLiteStore]:
    """Another node's view of the same file: sees only what was committed."""
    other = SQLiteStore(db_path)
    await other.open()
    yield other
    await other.close()


@pytest.fixture
async def make_writer(store: ScriptedStore) -> AsyncIterator[Callable[..., Writer]]:
    writers: list[Writer] = []

    def make(**options: Any) -> Writer:
        """A writer that flushes only when told to, or when a test picks a shorter interval."""
        options.setdefault("flush_interval", 60.0)
        writer = Writer(store, **options)
        writers.append(writer)
        return writer

    yield make
    for writer in writers:
        await writer.stop()


async def count_rows(store: SQLiteStore) -> int:
    return (await store.summary(NOW, 300.0)).total


async def test_heartbeats_of_one_agent_coalesce_into_one_row_write(
    store: ScriptedStore, observer: SQLiteStore, make_writer: Callable[..., Writer]
) -> None:
    writer = make_writer()
    await writer.start()
    state = agent(last_seen=NOW)
    writer.submit(full(state))
    for i in range(1, 100):
        state = heartbeat(state, NOW + i)
        writer.submit(touch(state))
    assert writer.depth == 1
    await writer.flush()
    assert store.written == 1
    assert await observer.get(state.instance_uid) == state
    assert await count_rows(observer) == 1


async def test_coalesced_touch_keeps_the_earlier_full_change(
    store: ScriptedStore, observer: SQLiteStore, make_writer: Callable[..., Writer]
) -> None:
    first = agent(last_seen=NOW)
    await observer.write([full(first)])
    writer = make_writer()
    await writer.start()
    changed = replace(heartbeat(first, NOW + 1), description=description({"service.name": "renamed"}))
    writer.submit(AgentWrite(changed, frozenset({"last_seen", "sequence_num", "description"})))
    latest = heartbeat(changed, NOW + 2)
    writer.submit(touch(latest))
    await writer.flush()
    assert store.batches[0][0].is_touch is False
    assert await observer.get(first.instance_uid) == latest


async def test_get_sees_pending_writes(
    store: ScriptedStore, observer: SQLiteStore, make_writer: Callable[..., Writer]
) -> None:
    writer = make_writer()
    await writer.start()
    state = agent()
    writer.submit(full(state))
    assert await writer.get(state.instance_uid) == state
    assert await observer.get(state.instance_uid) is None
    assert await writer.get(new_uid()) is None
    await writer.flush()
    assert await observer.get(state.instance_uid) == state


async def test_get_sees_writes_while_they_are_being_committed(
    store: ScriptedStore, observer: SQLiteStore, make_writer: Callable[..., Writer]
) -> None:
    before = agent(last_seen=NOW)
    await observer.write([full(before)])
    writer = make_writer()
    await writer.start()
    store.gate = asyncio.Event()
    after = heartbeat(before, NOW + 1)
    writer.submit(touch(after))
    flushing = asyncio.create_task(writer.flush())
    await asyncio.wait_for(store.entered.wait(), 5)
    # Out of the queue, but not yet flushed: it still counts.
    assert writer.depth == 1
    assert await writer.get(before.instance_uid) == after
    store.gate.set()
    await flushing
    assert await writer.get(before.instance_uid) == after


async def test_submit_durable_returns_after_commit(
    store: ScriptedStore, observer: SQLiteStore, make_writer: Callable[..., Writer]
) -> None:
    writer = make_writer(flush_interval=60.0)
    await writer.start()
    state = agent()
    started = time.monotonic()
    await writer.submit_durable(full(state))
    assert time.monotonic() - started < 5, "a durable write waited for the flush interval"
    assert await observer.get(state.instance_uid) == state


async def test_durable_write_is_not_visible_elsewhere_before_it_returns(
    store: ScriptedStore, observer: SQLiteStore, make_writer: Callable[..., Writer]
) -> None:
    writer = make_writer()
    await writer.start()
    store.gate = asyncio.Event()
    state = agent()
    durable = asyncio.create_task(writer.submit_durable(full(state)))
    await asyncio.wait_for(store.entered.wait(), 5)
    assert not durable.done()
    assert await observer.get(state.instance_uid) is None
    store.gate.set()
    await durable
    assert await observer.get(state.instance_uid) == state


async def test_batch_size_triggers_an_early_flush(
    store: ScriptedStore, observer: SQLiteStore, make_writer: Callable[..., Writer]
) -> None:
    writer = make_writer(flush_interval=60.0, batch_size=10)
    await writer.start()
    fleet = [agent() for _ in range(25)]
    for state in fleet[:9]:
        writer.submit(full(state))
    await asyncio.sleep(0.1)
    assert store.attempts == 0
    for state in fleet[9:]:
        writer.submit(full(state))
    await eventually(lambda: store.written >= 20)
    assert [len(b) for b in store.batches[:2]] == [10, 10]
    assert await count_rows(observer) >= 20


async def test_writer_full_at_max_pending(
    store: ScriptedStore, observer: SQLiteStore, make_writer: Callable[..., Writer]
) -> None:
    writer = make_writer(max_pending=3)
    await writer.start()
    fleet = [agent() for _ in range(3)]
    for state in fleet:
        writer.submit(full(state))
    with pytest.raises(WriterFull) as raised:
        writer.submit(full(agent()))
    assert raised.value.depth == 3
    with pytest.raises(WriterFull):
        await writer.submit_durable(full(agent()))
    # An agent that already has a pending write still coalesces.
    writer.submit(touch(heartbeat(fleet[0], NOW + 1)))
    assert writer.depth == 3
    await writer.flush()
    writer.submit(full(agent()))
    assert writer.depth == 1


async def test_the_batch_being_committed_counts_against_max_pending(
    store: ScriptedStore, observer: SQLiteStore, make_writer: Callable[..., Writer]
) -> None:
    """A store that keeps failing must not let the queue refill behind the batch being retried."""
    writer = make_writer(max_pending=3)
    await writer.start()
    store.gate = asyncio.Event()
    fleet = [agent() for _ in range(3)]
    for state in fleet:
        writer.submit(full(state))
    await writer.flush(timeout=0.05)
    await asyncio.wait_for(store.entered.wait(), 5)
    # All three are out of the queue and in the store's hands, and still unflushed.
    assert writer.depth == 3
    with pytest.raises(WriterFull):
        writer.submit(full(agent()))
    store.gate.set()
    await writer.flush()
    assert writer.depth == 0
    writer.submit(full(agent()))
    assert await count_rows(observer) == 3


async def test_pending_move_resolves_through_the_old_uid(
    store: ScriptedStore, observer: SQLiteStore, make_writer: Callable[..., Writer]
) -> None:
    writer = make_writer()
    await writer.start()
    old = agent(last_seen=NOW)
    writer.submit(full(old))
    move = moved(old, new_uid(), NOW + 1)
    writer.submit(move)
    assert writer.depth == 1
    assert await writer.get(old.instance_uid) == move.state
    assert await writer.get(move.state.instance_uid) == move.state
    await writer.flush()
    assert await writer.get(old.instance_uid) == move.state
    assert await observer.get(old.instance_uid) == move.state
    assert await count_rows(observer) == 1


async def test_durable_waiter_follows_a_move(
    store: ScriptedStore, observer: SQLiteStore, make_writer: Callable[..., Writer]
) -> None:
    writer = make_writer()
    await writer.start()
    store.gate = asyncio.Event()
    # Hold the first flush so the next two writes queue up behind it.
    writer.submit(full(agent()))
    await writer.flush(timeout=0.05)
    await asyncio.wait_for(store.entered.wait(), 5)
    old = agent(last_seen=NOW)
    enrolled = asyncio.create_task(writer.submit_durable(full(old)))
    await asyncio.sleep(0)
    move = moved(old, new_uid(), NOW + 1)
    moving = asyncio.create_task(writer.submit_durable(move))
    await asyncio.sleep(0)
    store.gate.set()
    await asyncio.wait_for(asyncio.gather(enrolled, moving), 5)
    assert await observer.get(old.instance_uid) == move.state


async def test_stop_flushes_everything(
    store: ScriptedStore, observer: SQLiteStore, make_writer: Callable[..., Writer]
) -> None:
    writer = make_writer(flush_interval=60.0, batch_size=20)
    await writer.start()
    fleet = [agent() for _ in range(50)]
    for state in fleet[:15]:
        writer.submit(full(state))
    await asyncio.sleep(0.05)
    assert store.attempts == 0
    for state in fleet[15:]:
        writer.submit(full(state))
    await writer.stop()
    assert writer.depth == 0
    assert await count_rows(observer) == 50
    with pytest.raises(WriterStopped):
        writer.submit(full(agent()))


async def test_failing_store_is_retried_until_the_write_commits(
    store: ScriptedStore, observer: SQLiteStore, make_writer: Callable[..., Writer]
) -> None:
    errors: list[BaseException] = []
    flushed: list[int] = []
    writer = make_writer(
        flush_interval=0.01,
        on_error=errors.append,
        on_flush=lambda n, _seconds: flushed.append(n),
    )
    await writer.start()
    store.failures = 3
    state = agent()
    writer.submit(full(state))
    await eventually(lambda: store.written == 1)
    assert store.attempts == 4
    assert len(errors) == 3
    assert all(isinstance(e, StoreUnavailable) for e in errors)
    assert flushed == [1]
    assert writer.last_error is None
    assert await observer.get(state.instance_uid) == state


async def test_durable_waiters_get_the_error_and_the_write_still_lands(
    store: ScriptedStore, observer: SQLiteStore, make_writer: Callable[..., Writer]
) -> None:
    writer = make_writer(flush_interval=0.01)
    await writer.start()
    store.failures = 4
    state = agent()
    with pytest.raises(StoreUnavailable):
        await writer.submit_durable(full(state))
    assert isinstance(writer.last_error, StoreUnavailable)
    # Kept for the next flush, merged with anything newer.
    later = heartbeat(state, state.last_seen + 1)
    writer.submit(touch(later))
    await eventually(lambda: store.written >= 1)
    assert await observer.get(state.instance_uid) == later
    assert writer.last_error is None


async def test_failed_write_for_a_moved_agent_does_not_come_back(
    store: ScriptedStore, observer: SQLiteStore, make_writer: Callable[..., Writer]
) -> None:
    """A batch that failed is retried after a move queued meanwhile; the old uid must stay gone."""
    writer = make_writer(flush_interval=0.01)
    await writer.start()
    old = agent(last_seen=NOW)
    store.gate = asyncio.Event()
    store.failures = 3
    enrolling = asyncio.create_task(writer.submit_durable(full(old)))
    await asyncio.wait_for(store.entered.wait(), 5)
    # While the enrollment is in flight, the agent asks for a new uid.
    state = await writer.get(old.instance_uid)
    assert state == old
    move = moved(state, new_uid(), NOW + 1)
    writer.submit(move)
    store.gate.set()
    with pytest.raises(StoreUnavailable):
        await enrolling
    await writer.flush()
    await eventually(lambda: writer.depth == 0)
    assert await observer.get(old.instance_uid) == move.state
    assert await count_rows(observer) == 1


async def test_stop_gives_up_on_a_store_that_keeps_failing(
    store: ScriptedStore, make_writer: Callable[..., Writer], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(writer_module, "_RETRY_DELAYS", (0.01, 0.01))
    writer = make_writer(flush_interval=0.01)
    await writer.start()
    store.failures = 10**6
    writer.submit(full(agent()))
    await asyncio.wait_for(writer.stop(), 5)
    assert isinstance(writer.last_error, StoreUnavailable)
    assert writer.depth == 0


async def test_an_unexpected_error_fails_the_waiters_and_the_writer_lives_on(
    store: ScriptedStore,
    observer: SQLiteStore,
    make_writer: Callable[..., Writer],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    writer = make_writer(flush_interval=0.01)
    await writer.start()
    real_write = store.write
    calls = 0

    async def broken_once(writes: Sequence[AgentWrite]) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("a bug, not a store failure")
        await real_write(writes)

    monkeypatch.setattr(store, "write", broken_once)
    first = agent()
    with pytest.raises(StoreError, match="a bug"):
        await writer.submit_durable(full(first))
    second = agent()
    await writer.submit_durable(full(second))
    assert await observer.get(second.instance_uid) == second


async def _stored_agent(make_writer: Callable[..., Writer]) -> tuple[Writer, AgentState]:
    """A started writer, and an agent whose record it has committed."""
    writer = make_writer()
    await writer.start()
    state = agent(last_seen=NOW)
    await writer.submit_durable(full(state))
    return writer, state


async def _stored_seq(store: SQLiteStore, uid: bytes) -> int:
    stored = await store.get(uid)
    assert stored is not None
    return stored.sequence_num


async def test_a_held_heartbeat_is_read_back_but_reaches_the_store_only_when_released(
    store: ScriptedStore, observer: SQLiteStore, make_writer: Callable[..., Writer]
) -> None:
    writer, state = await _stored_agent(make_writer)
    uid, seq = state.instance_uid, state.sequence_num
    later = heartbeat(state, NOW + 30)
    assert writer.hold(touch(later))
    # Later heartbeats keep the age of the first one held.
    assert writer.hold(touch(heartbeat(later, NOW + 60)))
    assert writer.held == 1 and writer.depth == 0
    # The node's next read of the agent is the newest record (no false sequence gap)...
    got = await writer.get(uid)
    assert got is not None and got.sequence_num == seq + 2
    # ... while the store, flushed, still has the stored one.
    await writer.flush()
    assert await _stored_seq(observer, uid) == seq
    # Released once the first one held (seen at NOW + 30) is old enough.
    assert writer.release_held(seen_by=NOW + 29) == 0
    assert writer.release_held(seen_by=NOW + 30) == 1
    await writer.flush()
    assert await _stored_seq(observer, uid) == seq + 2
    assert writer.held == 0


async def test_a_write_that_matters_takes_the_held_heartbeat_with_it(
    store: ScriptedStore, observer: SQLiteStore, make_writer: Callable[..., Writer]
) -> None:
    writer, state = await _stored_agent(make_writer)
    held = heartbeat(state, NOW + 30)
    assert writer.hold(touch(held))
    changed = replace(heartbeat(held, NOW + 60), remote_config_status=remote_config_status())
    await writer.submit_durable(AgentWrite(changed, frozenset({"remote_config_status"})))
    assert writer.held == 0
    # Its batch carried the heartbeat's fields as well as the change.
    assert store.batches[-1][0].changed >= {"remote_config_status", "last_seen", "sequence_num"}
    assert await _stored_seq(observer, state.instance_uid) == changed.sequence_num


async def test_a_heartbeat_is_not_held_behind_a_write_of_its_agent_not_yet_committed(
    store: ScriptedStore, make_writer: Callable[..., Writer]
) -> None:
    writer = make_writer()
    await writer.start()
    state = agent(last_seen=NOW)
    writer.submit(full(state))
    # get() sees pending writes first: a held newer heartbeat would be hidden behind it.
    assert not writer.hold(touch(heartbeat(state, NOW + 30)))
    writer.submit(touch(heartbeat(state, NOW + 30)))
    store.gate = asyncio.Event()
    flushing = asyncio.ensure_future(writer.flush())
    await store.entered.wait()
    assert not writer.hold(touch(heartbeat(state, NOW + 60)))
    store.gate.set()
    await flushing
    # A move is a write of its own, never held.
    assert not writer.hold(moved(state, new_uid(), NOW + 90))


@pytest.mark.parametrize(
    ("agents", "options"),
    # Within the queue's bound; beyond it, written a share at a time.
    [(3, {}), (5, {"max_pending": 2})],
)
async def test_held_heartbeats_are_written_when_the_writer_stops(
    observer: SQLiteStore, make_writer: Callable[..., Writer], agents: int, options: dict[str, int]
) -> None:
    writer = make_writer(**options)
    await writer.start()
    states = [agent(last_seen=NOW) for _ in range(agents)]
    for state in states:
        await writer.submit_durable(full(state))
        assert writer.hold(touch(heartbeat(state, NOW + 30)))
    await writer.stop()
    for state in states:
        assert await _stored_seq(observer, state.instance_uid) == state.sequence_num + 1
    # A stopped writer holds nothing more.
    assert not writer.hold(touch(heartbeat(states[0], NOW + 60)))


async def test_held_heartbeats_a_full_queue_refuses_stay_held(
    store: ScriptedStore, make_writer: Callable[..., Writer]
) -> None:
    writer = make_writer(max_pending=2, batch_size=100)
    await writer.start()
    states = [agent(last_seen=NOW) for _ in range(3)]
    for state in states:
        assert writer.hold(touch(state))
    assert writer.release_held(math.inf) == 2
    assert writer.held == 1 and writer.depth == 2
    await writer.flush()
    assert writer.release_held(math.inf) == 1
