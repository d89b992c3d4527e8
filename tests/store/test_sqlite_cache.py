"""The SQLite store's cache of HTTP agents' rows: two stores on one file stand for two nodes, and
whatever one writes, the other's next get() returns, whatever it had cached."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator
from contextlib import closing
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from gateway.fleet.agent import AgentState, AgentWrite
from gateway.store.sqlite import SQLiteStore
from gateway.store.sqlite_cache import RowCache
from tests.store.store_helpers import agent, full, health, moved, new_uid, touch

pytestmark = pytest.mark.anyio


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[tuple[SQLiteStore, SQLiteStore]]:
    path = str(tmp_path / "shared.db")
    a, b = SQLiteStore(path), SQLiteStore(path)
    await a.open()
    await b.open()
    yield a, b
    await a.close()
    await b.close()


def http_agent(**fields: object) -> AgentState:
    return agent(**{"node": "a", "transport": "http", **fields})  # type: ignore[arg-type]


async def fresh(path: str, uid: bytes) -> AgentState | None:
    """The row as a store with nothing cached reads it."""
    store = SQLiteStore(path)
    await store.open()
    try:
        return await store.get(uid)
    finally:
        await store.close()


async def cached_on(store: SQLiteStore) -> AgentState:
    """An HTTP agent `store` wrote and read back: its row is in the store's cache."""
    state = http_agent(last_seen=10.0)
    await store.write([full(state)])
    assert await store.get(state.instance_uid) == state
    return state


def polled(state: AgentState, last_seen: float, node: str = "a") -> AgentWrite:
    """A heartbeat's write as the pipeline makes it: the heartbeat fields and the node that took it."""
    new = replace(state, last_seen=last_seen, sequence_num=state.sequence_num + 1, node=node)
    return AgentWrite(new, frozenset({"last_seen", "sequence_num", "node"}))


async def test_a_touch_of_the_cached_row_is_the_row_on_disk(pair: tuple[SQLiteStore, SQLiteStore]) -> None:
    a, b = pair
    state = http_agent(last_seen=10.0)
    await a.write([full(state)])
    cached = await a.get(state.instance_uid)
    assert cached == state
    beat = polled(state, 11.0, node="a2")
    await a.write([beat])
    assert await a.get(state.instance_uid) == beat.state == await fresh(a.path, state.instance_uid)


async def test_a_write_by_another_node_is_read_not_the_cached_copy(
    pair: tuple[SQLiteStore, SQLiteStore],
) -> None:
    a, b = pair
    state = await cached_on(a)
    await a.write([polled(state, 11.0)])  # A's copy is now its own touch, without a read
    on_b = await b.get(state.instance_uid)
    assert on_b is not None
    sick = replace(on_b, last_seen=12.0, health=health(False), node="b")
    await b.write([AgentWrite(sick, frozenset({"last_seen", "health", "node"}))])
    assert await a.get(state.instance_uid) == sick


async def test_a_command_set_elsewhere_reaches_the_node_that_cached_the_agent(
    pair: tuple[SQLiteStore, SQLiteStore],
) -> None:
    a, b = pair
    state = await cached_on(a)
    await a.write([polled(state, 11.0)])
    # Another node's admin API asks for a restart from the record it read before that heartbeat:
    # only pending_command lands (the rest of its record is older than the stored one).
    await b.write([AgentWrite(replace(state, pending_command=1), frozenset({"pending_command"}))])
    got = await a.get(state.instance_uid)
    assert got is not None and (got.pending_command, got.last_seen) == (1, 11.0)


async def test_a_touch_after_another_nodes_write_keeps_that_write(
    pair: tuple[SQLiteStore, SQLiteStore],
) -> None:
    a, b = pair
    state = await cached_on(a)
    changed = replace(state, last_seen=11.0, health=health(False), node="b")
    await b.write([AgentWrite(changed, frozenset({"last_seen", "health", "node"}))])
    # A heartbeat A decided from its stale copy: the touch must not bring back the old health.
    await a.write([polled(state, 12.0)])
    expected = replace(changed, last_seen=12.0, sequence_num=state.sequence_num + 1, node="a")
    assert await a.get(state.instance_uid) == expected == await fresh(a.path, state.instance_uid)


async def test_a_row_deleted_and_created_again_is_read_again(pair: tuple[SQLiteStore, SQLiteStore]) -> None:
    a, b = pair
    state = await cached_on(a)
    # B moves the agent away (its row goes), then a new record is made under the old uid.
    await b.write([moved(state, new_uid(), 11.0)])
    again = http_agent(uid=state.instance_uid, last_seen=12.0, host_name="host-2", node="b")
    await b.write([full(again, previous_uid=new_uid())])
    assert await a.get(state.instance_uid) == again


async def test_rows_of_older_files_have_a_rev_and_are_cached_safely(tmp_path: Path) -> None:
    path = str(tmp_path / "gateway.db")
    a = SQLiteStore(path)
    await a.open()
    try:
        state = http_agent(last_seen=10.0)
        await a.write([full(state)])
        with closing(sqlite3.connect(path)) as conn:
            # As a version 3 file's rows are after the upgrade: all at rev 0.
            conn.execute("UPDATE agents SET rev = 0")
            conn.commit()
        assert await a.get(state.instance_uid) == state
        await a.write([touch(replace(state, last_seen=11.0, sequence_num=1))])
        got = await a.get(state.instance_uid)
        assert got is not None and (got.last_seen, got.sequence_num) == (11.0, 1)
    finally:
        await a.close()


def test_the_cache_keeps_http_records_only_and_evicts_the_oldest() -> None:
    cache = RowCache(limit=2)
    first, second, third = (http_agent(uid=new_uid()) for _ in range(3))
    cache.put(first, 1)
    cache.put(replace(second, transport="websocket"), 2)
    assert cache.get(second.instance_uid) is None
    cache.put(second, 3)
    cache.put(first, 4)  # stored again: now the most recent
    cache.put(third, 5)
    assert cache.get(second.instance_uid) is None
    assert [cache.get(s.instance_uid) is not None for s in (first, third)] == [True, True]
    # A record that leaves HTTP leaves the cache.
    cache.put(replace(first, transport="websocket"), 6)
    assert cache.get(first.instance_uid) is None and len(cache) == 1


# -- answering from the cache without a read (the copy is vouched for) ---------------------------


class _Reads:
    """Counts the batched reads a store makes."""

    def __init__(self, store: SQLiteStore, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        read = store._read_sync

        def counted(*args: Any) -> Any:
            self.count += 1
            return read(*args)

        monkeypatch.setattr(store, "_read_sync", counted)


async def _next_turn() -> None:
    # The store asks the file once per turn of the event loop: let a new turn begin.
    await asyncio.sleep(0)
    await asyncio.sleep(0)


async def test_on_a_file_only_this_node_writes_a_poll_needs_no_read(
    pair: tuple[SQLiteStore, SQLiteStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, _b = pair
    state = await cached_on(a)
    reads = _Reads(a, monkeypatch)
    for n in range(5):
        await _next_turn()
        got = await a.get(state.instance_uid)
        assert got is not None and got.last_seen == 10.0 + n
        state = polled(got, 11.0 + n).state
        await a.write([polled(got, 11.0 + n)])
    assert reads.count == 0
    assert await fresh(a.path, state.instance_uid) == state == await a.get(state.instance_uid)


async def test_after_another_nodes_write_the_next_poll_reads_then_needs_no_read_again(
    pair: tuple[SQLiteStore, SQLiteStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = pair
    state = await cached_on(a)
    others = [await cached_on(a) for _ in range(2)]
    reads = _Reads(a, monkeypatch)
    sick = replace(state, last_seen=12.0, health=health(False), node="b")
    await b.write([AgentWrite(sick, frozenset({"last_seen", "health", "node"}))])
    await _next_turn()
    assert await a.get(state.instance_uid) == sick
    # Every copy is read again once (another node's write could have been to any row)...
    for agent_state in others:
        assert await a.get(agent_state.instance_uid) == agent_state
    assert reads.count == 3
    # ...and then vouched for again.
    await _next_turn()
    assert [await a.get(s.instance_uid) for s in (state, *others)] == [sick, *others]
    assert reads.count == 3


async def test_a_write_outside_the_agent_batches_is_seen_by_the_next_poll(
    pair: tuple[SQLiteStore, SQLiteStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, _b = pair
    state = await cached_on(a)
    await _next_turn()
    assert await a.get(state.instance_uid) == state

    def rename(conn: sqlite3.Connection) -> None:
        # As any statement the node runs on its write thread that is not an agent batch (a sweep, a
        # credential) may change rows its copies hold.
        conn.execute(
            "UPDATE agents SET pending_command = 2, rev = rev + 1 WHERE uid = ?", (state.instance_uid,)
        )

    await a._on_writer(a._with_writer, rename)
    got = await a.get(state.instance_uid)
    assert got is not None and got.pending_command == 2


@pytest.mark.parametrize("b_wrote", ["the-row", "another-row"])
async def test_a_row_read_while_the_nodes_batch_changes_it_is_not_vouched_for(
    pair: tuple[SQLiteStore, SQLiteStore], monkeypatch: pytest.MonkeyPatch, b_wrote: str
) -> None:
    a, _b = pair
    state = await cached_on(a)
    other = await cached_on(a)
    # Another node's write makes A read its rows again (the whole row if B wrote it, else just its
    # rev); A's read finds them, then stalls until A's own batch has changed the row and finished.
    if b_wrote == "the-row":
        state = await _b_write(pair, state)
    else:
        await _b_write(pair, other)
    read = a._read_sync
    found_rows = threading.Event()
    go_on = threading.Event()

    def stalled(*args: Any) -> Any:
        result = read(*args)
        found_rows.set()
        go_on.wait(10)
        return result

    monkeypatch.setattr(a, "_read_sync", stalled)
    await _next_turn()
    reading = asyncio.ensure_future(a.get(state.instance_uid))
    await asyncio.to_thread(found_rows.wait, 10)
    command = AgentWrite(replace(state, pending_command=1), frozenset({"pending_command"}))
    writing = asyncio.ensure_future(a.write([command]))
    # The batch waits for nothing the read holds (WAL): it ends while the read is still out.
    await asyncio.wait_for(asyncio.shield(writing), 10)
    go_on.set()
    assert await reading == state  # what the read found, from before the batch
    monkeypatch.setattr(a, "_read_sync", read)
    await _next_turn()
    got = await a.get(state.instance_uid)
    assert got is not None and got.pending_command == 1


async def _b_write(pair: tuple[SQLiteStore, SQLiteStore], state: AgentState) -> AgentState:
    """The row as B writes it (a heartbeat B took)."""
    _a, b = pair
    new = replace(state, last_seen=state.last_seen + 1, node="b")
    await b.write([AgentWrite(new, frozenset({"last_seen", "node"}))])
    return new


async def test_the_nodes_own_write_of_more_than_a_touch_is_seen_by_the_next_poll(
    pair: tuple[SQLiteStore, SQLiteStore],
) -> None:
    a, _b = pair
    state = await cached_on(a)
    await _next_turn()
    await a.write([AgentWrite(replace(state, pending_command=1), frozenset({"pending_command"}))])
    got = await a.get(state.instance_uid)
    assert got is not None and got.pending_command == 1
