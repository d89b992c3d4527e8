"""The SQLite store's cache of HTTP agents' rows: two stores on one file stand for two nodes, and
whatever one writes, the other's next get() returns, whatever it had cached."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from contextlib import closing
from dataclasses import replace
from pathlib import Path

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
