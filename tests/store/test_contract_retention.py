"""The store contract for forgetting agents (`--forget-after`, `DELETE /api/v1/agents/{uid}`):
every adapter, unchanged (the adapters: tests/store/conftest.py)."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from gateway.store.base import MAX_PAGE_SIZE, AgentQuery, Store
from tests.store.store_helpers import StoreFactory, agent, full, moved, new_uid

pytestmark = pytest.mark.anyio

NOW = 100_000.0


async def _listed(store: Store) -> set[bytes]:
    page = await store.list_agents(AgentQuery(limit=MAX_PAGE_SIZE), NOW, 300.0)
    return {state.instance_uid for state in page.agents}


async def test_forget_deletes_one_record(store: Store) -> None:
    kept, gone = agent(last_seen=10.0), agent(last_seen=10.0)
    await store.write([full(kept), full(gone)])
    assert await store.forget(gone.instance_uid) == gone.instance_uid
    assert await store.get(gone.instance_uid) is None
    assert await store.get(kept.instance_uid) == kept
    assert await _listed(store) == {kept.instance_uid}
    assert await store.forget(gone.instance_uid) is None
    assert await store.forget(new_uid()) is None


async def test_forget_through_a_moved_uid_deletes_the_live_record(store: Store) -> None:
    old = agent(last_seen=10.0)
    await store.write([full(old)])
    move = moved(old, new_uid(), 11.0)
    await store.write([move])
    assert await store.forget(old.instance_uid) == move.state.instance_uid
    assert await store.get(move.state.instance_uid) is None
    assert await store.get(old.instance_uid) is None
    assert await _listed(store) == set()


async def test_a_forgotten_agent_that_comes_back_is_enrolled_again(store_factory: StoreFactory) -> None:
    node_a, node_b = await store_factory(), await store_factory()
    state = agent(last_seen=10.0)
    await node_b.write([full(state)])
    assert await node_b.get(state.instance_uid) == state  # node B remembers the version it wrote
    assert await node_a.forget(state.instance_uid) == state.instance_uid
    back = replace(state, last_seen=20.0, sequence_num=state.sequence_num + 1)
    await node_b.write([full(back)])
    assert await node_a.get(state.instance_uid) == back


async def test_forget_unseen_deletes_only_records_seen_before_the_cutoff(store: Store) -> None:
    old = [agent(last_seen=10.0 + n) for n in range(3)]
    at_cutoff, recent = agent(last_seen=50.0), agent(last_seen=90.0)
    await store.write([full(s) for s in (*old, at_cutoff, recent)])
    assert await store.forget_unseen(50.0, 100) == 3
    assert await _listed(store) == {at_cutoff.instance_uid, recent.instance_uid}
    for state in old:
        assert await store.get(state.instance_uid) is None
    assert await store.forget_unseen(50.0, 100) == 0  # idempotent


async def test_forget_unseen_deletes_at_most_limit(store: Store) -> None:
    states = [agent(last_seen=10.0 + n) for n in range(3)]
    await store.write([full(s) for s in states])
    assert await store.forget_unseen(50.0, 2) == 2
    assert len(await _listed(store)) == 1
    assert await store.forget_unseen(50.0, 0) == 0
    assert await store.forget_unseen(50.0, 2) == 1


async def test_forget_unseen_drops_a_moved_records_old_uid(store: Store) -> None:
    old = agent(last_seen=10.0)
    await store.write([full(old)])
    move = moved(old, new_uid(), 11.0)
    await store.write([move])
    assert await store.forget_unseen(50.0, 10) == 1
    assert await store.get(old.instance_uid) is None
    assert await store.get(move.state.instance_uid) is None


async def test_nodes_sweeping_at_once_delete_each_record_once(store_factory: StoreFactory) -> None:
    nodes = [await store_factory() for _ in range(3)]
    states = [agent(last_seen=10.0 + n) for n in range(20)]
    await nodes[0].write([full(s) for s in states])
    counts = await asyncio.gather(*(node.forget_unseen(50.0, 100) for node in nodes))
    assert sum(counts) == 20
    assert await _listed(nodes[1]) == set()
